"""``gauntlet run publish|show``: the run manifest that defines a subnet's training run.

- ``gauntlet run publish RUN.toml``: the subnet owner turns its run settings into a manifest (the run
  settings that differ from their defaults, the data's identity, the protocol version), signs it with
  its hotkey, stores it in its bucket and commits its hash on chain. Nodes then join with
  ``--netuid`` alone and fetch, verify and cache it.
- ``gauntlet run show``: the manifest the subnet owner committed (or, with ``--config``, the one a
  settings file defines), and its run hash.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from gauntlet.chain import open_chain
from gauntlet.config import (
    config_from_manifest,
    local_settings,
    manifest_document,
    manifest_hash,
    read_settings,
    validate_config,
)
from gauntlet.errors import ConfigError
from gauntlet.storage import open_store
from peers.cli.flags import add_chain_arguments, add_identity_arguments, add_storage_arguments, card_for
from peers.cli.flags import identity_from_args, setup_logging

log = logging.getLogger("gauntlet.run")


def _flat(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in sorted(data.items()):
        out += _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]
    return out


def _print_manifest(document: dict, run_hash: str, origin: str) -> None:
    print(f"run {run_hash}  (protocol {document['protocol']}, needs gauntlet >= {document['requires']}; {origin})")
    rows = _flat(document["settings"])
    print("run settings that differ from their defaults:" if rows else "every run setting at its default")
    for key, value in rows:
        print(f"  {key} = {json.dumps(value)}")


def _with_data_identity(cfg, data_dir: Path | None):
    """``cfg`` with ``data.sha256`` set from the data it names (checked against it when already set)."""
    from gauntlet.data import open_dataset  # deferred: loads torch (`gauntlet --help` stays instant)
    from gauntlet.data.identity import cached_identity
    from peers.node.data import default_data_dir

    root = data_dir or default_data_dir()
    log.info("preparing %s to pin the run's data identity", cfg.data.location)
    train, val = open_dataset(cfg.data, root)
    identity = cfg.data.sha256 or cached_identity(train, val, root)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"sha256": identity})})


def run_publish(args: argparse.Namespace) -> int:
    setup_logging(args.quiet)
    cfg = validate_config(read_settings(args.settings, args.overrides))
    skipped = [k for k, _ in _flat(local_settings(cfg))]
    if skipped:
        log.warning("not part of the run, each node sets its own: %s", ", ".join(skipped))
    cfg = _with_data_identity(cfg, args.data_dir)
    document = manifest_document(cfg)
    run_hash = manifest_hash(document)
    _print_manifest(document, run_hash, "not published: --dry-run" if args.dry_run else "to publish")
    if args.dry_run:
        return 0
    from peers.network.manifest import publish_manifest  # deferred: the node stack

    identity = identity_from_args(args)
    if args.storage is None:
        raise ConfigError("no bucket: pass --storage (the owner's bucket, where nodes read the manifest)")
    if args.chain is None and args.netuid is None:
        raise ConfigError("no chain: pass --chain URL, or --netuid (with --subtensor.network)")
    chain = open_chain(args.chain or f"bittensor://{args.network}/{args.netuid}")
    if args.register:
        if not hasattr(chain, "set_owner"):
            raise ConfigError("--register works on local:// chains only; on Bittensor the subnet's owner hotkey is set "
                              "when the subnet is created")
        chain.register(identity.hotkey)
        chain.set_owner(identity.hotkey)
    owner = chain.owner_hotkey()
    if owner != identity.hotkey:
        raise ConfigError(f"hotkey {identity.hotkey} is not the subnet owner's ({owner}): nodes trust only a manifest "
                          f"the owner signed; publish with the owner's hotkey")
    store = open_store(args.storage, access_key=args.access_key or os.environ.get("AWS_ACCESS_KEY_ID"),
                       secret_key=args.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY"))
    publish_manifest(document, identity, store, card_for(store, args), chain)
    print(f"published run {run_hash} on {chain.url}: nodes join it with the chain flags alone (e.g. --netuid "
          f"{chain.netuid}), local settings in --config/--set")
    return 0


def run_show(args: argparse.Namespace) -> int:
    setup_logging(True)
    if args.settings is not None or (args.chain is None and args.netuid is None):
        cfg = validate_config(read_settings(args.settings, args.overrides))
        document, origin, extra = manifest_document(cfg), f"defined by {args.settings or 'the defaults'}", {}
    else:
        from peers.network.manifest import fetch_manifest  # deferred: the node stack

        chain = open_chain(args.chain or f"bittensor://{args.network}/{args.netuid}")
        signed = fetch_manifest(chain, None, allow_local_cards=args.allow_local_cards)
        cfg = config_from_manifest(signed.document, read_settings(None, args.overrides), signed.written_by)
        document, origin = signed.document, f"signed by the subnet owner {signed.owner}, written by gauntlet " \
                                             f"{signed.written_by}"
        extra = {"owner": signed.owner, "written_by": signed.written_by}
    if args.json:
        print(json.dumps({"run_hash": manifest_hash(document), "manifest": document, **extra,
                          "config": cfg.model_dump(mode="json")}))
    else:
        _print_manifest(document, manifest_hash(document), origin)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="publish or show the run manifest (the settings every node of a run shares)",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = run.add_subparsers(dest="run_command", required=True, metavar="ACTION")
    pub = cmds.add_parser("publish", help="sign the run's manifest, store it in your bucket, commit its hash",
                          description="Publish the run manifest of a subnet (its owner's hotkey signs it).")
    pub.add_argument("settings", metavar="RUN.toml", help="TOML or JSON file of the run's settings")
    pub.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                     help="override one setting (repeatable)")
    pub.add_argument("--data-dir", type=Path, help="prepared datasets cache (default ~/.cache/gauntlet/data)")
    pub.add_argument("--dry-run", action="store_true", help="print the manifest and its run hash; publish nothing")
    pub.add_argument("--quiet", action="store_true", help="only warnings and errors")
    add_identity_arguments(pub.add_argument_group("identity (the subnet owner's hotkey)"))
    add_chain_arguments(pub.add_argument_group("chain"), "owner")
    add_storage_arguments(pub.add_argument_group("storage (the owner's bucket, readable by every node)"), "owner",
                          required=False)
    pub.set_defaults(func=run_publish)
    show = cmds.add_parser("show", help="print the run manifest the subnet owner committed (or a file's)",
                           description="Print a run manifest and its run hash: the one the subnet owner committed "
                                       "(with --netuid or --chain), or the one a settings file defines (--config).")
    show.add_argument("--config", dest="settings", metavar="FILE", help="show the manifest this settings file defines")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                      help="override one setting (repeatable)")
    add_chain_arguments(show.add_argument_group("chain"), "reader")
    show.add_argument("--allow-local-cards", action="store_true", help="accept a file:// or loopback owner bucket "
                                                                       "(local networks only)")
    show.add_argument("--json", action="store_true", help="one JSON object: run_hash, manifest, the whole config")
    show.set_defaults(func=run_show)
