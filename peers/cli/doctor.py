"""``gauntlet doctor``: the node's own flags, plus ``--role``; ✔/✖ per check, exit 0 only if all pass."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gauntlet.chain import open_chain
from gauntlet.config import load_config
from gauntlet.storage import open_store
from gauntlet.errors import GauntletError
from peers.cli.flags import add_node_arguments, card_for, identity_from_args, manifest_mode, node_config
from peers.ops.doctor import Check, Setup, guarded, run_checks


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor", help="check a peer's or validator's set-up: keys, bucket, chain, clock, disk, device, data",
        description="Run the checks an operator needs before starting a node, with the same flags as `gauntlet "
                    "peer` / `gauntlet validate`: the write key can put, read and delete; the read key published on "
                    "chain can read but not write or delete; the bucket card on chain matches; the hotkey is "
                    "registered (with a validator permit for --role validator); the clock is within a block of the "
                    "chain's; the disk holds the node's state; the torch device works; the data source opens. "
                    "Exit status 0 only when every check passes.")
    groups = add_node_arguments(p, "node")
    groups["running"].set_defaults(run_dir=None)
    g = p.add_argument_group("doctor")
    g.add_argument("--role", choices=["peer", "validator"], default="peer", help="which node to check for")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    g.add_argument("--free-bytes", type=int, default=None, metavar="N",
                   help="assume N bytes free on the run directory's disk (planning a machine)")
    p.set_defaults(func=run_doctor)


def _fail(name: str, exc: Exception, fix: str):
    return Check(name, False, f"{type(exc).__name__}: {exc}", fix)


def run_doctor(args: argparse.Namespace) -> int:
    from peers.node.data import default_data_dir  # deferred: loads torch (`gauntlet --help` stays instant)

    cfg = load_config(args.config, args.overrides)  # a bad config is an error, not a check
    identity = identity_from_args(args)
    run_dir = args.run_dir = args.run_dir or Path(f"runs/{args.role}")
    early = []
    chain = store = card = None
    try:
        chain = open_chain(args.chain or f"bittensor://{args.network}/{args.netuid}")
    except Exception as exc:  # unreachable endpoint, bad URL: reported, the other checks still run
        early.append(_fail("chain", exc, "check --chain / --subtensor.network and the network path to it"))
    if chain is not None and manifest_mode(args, chain) == "chain":
        try:
            cfg = node_config(args, chain)
            early.append(Check("run manifest", True, f"run {cfg.run_hash()} ({cfg.run_name}, model {cfg.model.preset})"))
        except GauntletError as exc:  # no manifest yet, or one this release cannot run: a check, with the fix
            early.append(_fail("run manifest", exc, "the subnet owner publishes it with `gauntlet run publish`; "
                               "for a network of your own pass --manifest none"))
    try:
        store = open_store(args.storage, access_key=args.access_key or os.environ.get("AWS_ACCESS_KEY_ID"),
                           secret_key=args.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY"), max_attempts=1)
        card = card_for(store, args)
    except Exception as exc:
        early.append(_fail("storage", exc, "check --storage and its keys"))

    def read_store():
        return open_store(f"s3://{card.bucket}?endpoint_url={card.location}&region={card.region or 'us-east-1'}",
                          access_key=card.access_key, secret_key=card.secret_key, max_attempts=1)

    setup = Setup(args.role, cfg, identity.hotkey, chain, store, card, read_store, run_dir,
                  args.data_dir or default_data_dir(), free_bytes=args.free_bytes, retain=args.retain,
                  allow_local_cards=args.allow_local_cards)
    checks = early + [c for c in run_checks(setup, lambda: parameter_count(cfg))
                      if not (chain is None and c.name in ("hotkey", "bucket card", "clock"))
                      and not (store is None and c.name in ("write key", "read key", "bucket card"))]
    if chain is None or store is None:
        checks.append(guarded("skipped", lambda: _skipped(chain, store)))
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "role": args.role, "hotkey": identity.hotkey,
                          "checks": [c.as_dict() for c in checks]}))
    else:
        for c in checks:
            print(f"{'✔' if c.ok else '✖'} {c.name}: {c.reason}")
            if not c.ok and c.fix:
                print(f"    fix: {c.fix}")
        print("all checks passed" if ok else f"{sum(not c.ok for c in checks)} of {len(checks)} checks failed",
              file=sys.stderr)
    return 0 if ok else 1


def _skipped(chain, store):
    missing = [n for n, v in (("chain", chain), ("storage", store)) if v is None]
    return Check("skipped", False, f"checks that need the {' and the '.join(missing)} did not run",
                 "fix the failures above and run the doctor again")


def parameter_count(cfg) -> int:
    """Parameters of the configured model, counted on the meta device (nothing is allocated)."""
    import torch  # deferred: loads torch (`gauntlet --help` stays instant) and the [node] extra
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from gauntlet.models import PRESETS

    vocab = cfg.data.vocab_size or (256 if cfg.data.tokenizer == "bytes" else 32000)
    with torch.device("meta"):
        if cfg.model.preset in PRESETS:
            hidden, inter, layers, heads, kv = PRESETS[cfg.model.preset]
            model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                                 num_hidden_layers=layers, num_attention_heads=heads,
                                                 num_key_value_heads=kv, tie_word_embeddings=False))
        else:
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg.model.preset))
    return sum(p.numel() for p in model.parameters())
