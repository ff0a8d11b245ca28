"""One configuration model for every protocol and run parameter.

Defaults are those of docs/protocol.md (the reference deployment's numbers). A config is loaded from a TOML or
JSON file plus ``section.field=value`` overrides, validated once at the edge, and frozen.

Settings are of two kinds. *Run settings* must agree across every node of a run (model, data identity,
codec, timing, mechanism); *local settings* are one node's own choice (its device, where its copy of the
data lives, how one validator turns scores into weights) and are marked ``json_schema_extra=LOCAL``.
A run is defined by its *manifest* (:func:`manifest_document`): the protocol version and the run
settings that differ from their defaults. The run hash, carried in every message, is the hash of the
manifest (:meth:`GauntletConfig.run_hash`), so nodes that differ only in local settings share a run, and
a release that adds a setting with a default leaves every existing run's hash as it was. Changing the
default of a run setting changes what old manifests mean: it needs a new :data:`PROTOCOL`.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gauntlet import __version__
from gauntlet.errors import ConfigError

LOCAL = {"local": True}  # marks a setting that is one node's own choice (not part of the run)
PROTOCOL = 1  # what this code speaks: the message formats and the meaning of every run setting's default
FIRST_RELEASE = "0.2.0"  # the first gauntlet release that speaks PROTOCOL


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SparseLoCoConfig(_Section):
    """Compression, error feedback, aggregation and the outer step (docs/protocol.md §2.4–2.7, §3)."""

    chunk_size: int = Field(64, ge=1, le=256, description="Side of the square tiles of 2-D tensors.")
    topk: int = Field(64, ge=1, description="Values kept per full chunk of chunk_size² values.")
    quant_bits: Literal[2, 4, 8] = Field(2, description="Bits per transmitted value.")
    quant_range_sigmas: float = Field(
        6.0, gt=0, description="Width of the uniform code range, in standard deviations of the "
        "kept values, centred on their mean (6 → 1.5σ bins at 2 bits, as the reference computes)."
    )
    ef_decay: float = Field(0.95, ge=0.0, le=1.0, description="β: error-feedback decay.")
    ef_scale: float = Field(1.0, gt=0.0, description="η: weight of the new pseudo-gradient.")
    outer_lr: float = Field(1.0, gt=0.0, description="α: learning rate of the outer SGD step.")
    combine: Literal["mean", "scatter_mean"] = Field(
        "mean", description="mean: divide by the number of peers (the paper); scatter_mean: divide "
        "each coordinate by the number of peers that sent it (the reference)."
    )
    clip_to_median: bool = Field(True, description="Clip each peer to the median L2 norm per tensor.")
    top_g: int = Field(20, ge=1, description="G: peers aggregated per window when a validator lists them.")
    dense_bits: Literal[8, 16] = Field(16, description="Bits per value of tensors sent dense.")
    min_sparse_numel: int = Field(
        4096, ge=1, description="Tensors with fewer values than this travel dense."
    )
    sparse_1d: bool = Field(False, description="Also sparsify 1-D tensors (biases, norms).")

    @model_validator(mode="after")
    def _topk_fits_chunk(self) -> "SparseLoCoConfig":
        if self.topk > self.chunk_size**2:
            raise ValueError(
                f"topk={self.topk} exceeds the {self.chunk_size**2} values of a "
                f"{self.chunk_size}x{self.chunk_size} chunk; lower sparseloco.topk"
            )
        return self


class InnerConfig(_Section):
    """The inner optimiser a peer runs between outer steps (docs/protocol.md §2.2)."""

    steps: int = Field(30, ge=1, description="H: inner steps per outer step (window).")
    lr: float = Field(1.3e-4, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.1, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    warmup_steps: int = Field(250, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    decay_steps: int = Field(100_000, ge=1, description="Inner steps over which the cosine decays.")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Final lr as a share of lr.")


class DiLoCoConfig(_Section):
    """The dense DiLoCo baseline: all-reduced Δ and Nesterov outer SGD."""

    outer_lr: float = Field(0.7, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True


class DataConfig(_Section):
    """The training corpus and tokenizer (docs/protocol.md §5 assigns samples of it to peers)."""

    source: str = Field("stdlib", description="stdlib (offline default: the Python standard library "
                        "sources), a local file or directory (.txt .md .py .jsonl .json .parquet .arrow, a saved "
                        "Hugging Face dataset), pre-tokenised shards (.bin .npy, or a `gauntlet data prepare` "
                        "folder), or hf:NAME[:SPLIT]")
    tokenizer: str = Field("bytes", description="bytes, bpe:VOCAB (trained on the corpus, cached), "
                           "or a Hugging Face tokenizer name/path")
    seq_len: int = Field(128, ge=8, le=65536, description="Tokens per training sequence.")
    val_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="Share of documents held out.")
    max_tokens: int | None = Field(None, ge=1, description="Stop preparing after this many tokens.")
    vocab_size: int | None = Field(None, ge=2, le=1 << 32, description="Vocabulary of pre-tokenised shards "
                                   "(.bin/.npy); other sources take it from their tokenizer.")
    token_dtype: Literal["uint16", "uint32"] = Field("uint16", description="Token width of flat .bin shards "
                                                     "(nanoGPT writes uint16; .npy and llm.c shards say theirs).")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="Identity of the run's data: the "
                               "sha256 of its prepared token sequences (`gauntlet data prepare` prints it). When set, "
                               "a node refuses to start on data that differs in any token.")
    path: str | None = Field(None, description="This node's local copy of the corpus (text files, token shards or a "
                             "prepared folder), read instead of `source`; checked against `sha256`.",
                             json_schema_extra=LOCAL)

    @property
    def location(self) -> str:
        """Where this node reads the corpus from: its local copy, else the run's source."""
        return self.path or self.source


class ModelConfig(_Section):
    preset: str = Field("tiny", description="tiny, small, 150M, 1B, or a local path / hub name of a causal LM")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N", json_schema_extra=LOCAL)
    autocast_bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)", json_schema_extra=LOCAL)


class TrainConfig(_Section):
    """What a peer trains each window: ``inner.steps`` batches of ``batch_size`` assigned sequences."""

    batch_size: int = Field(8, ge=1)
    eval_batches: int = Field(2, ge=1, description="Validation batches for the loss a peer reports.",
                              json_schema_extra=LOCAL)


class TimingConfig(_Section):
    """Windows and the upload slot (docs/protocol.md §1)."""

    blocks_per_window: int = Field(125, ge=1)
    upload_slot_s: float = Field(70.0, gt=0.0, description="Uploads count when the store's LastModified is "
                                 "within this many seconds after the window boundary.")
    slot_grace_s: float = Field(1.0, ge=0.0, description="Tolerated clock skew at both ends of the slot.")
    gather_timeout_s: float = Field(60.0, gt=0.0, json_schema_extra=LOCAL)
    max_message_bytes: int = Field(512 << 20, ge=1024)


class ValidatorConfig(_Section):
    """Gauntlet scoring, ratings, penalties and weights (docs/protocol.md §4)."""

    sync_max_steps: float = Field(5.0, gt=0, description="x at which the sync score reaches 0.")
    sync_power: float = Field(2.5, gt=0)
    sync_penalty_steps: float = Field(3.0, ge=0, description="More outer steps behind than this: penalty.")
    penalty: float = Field(0.75, ge=0, le=1, description="Factor for a missing upload or a peer out of sync.")
    inactive_windows: int = Field(3, ge=1, description="Windows without an upload before a peer is reset.")
    eval_peers: int = Field(15, ge=1, description="Peers loss-tested per window.")
    eval_bins: int = Field(3, ge=1, description="Rating bins the loss-test sample is drawn across.")
    eval_own_sequences: int = Field(8, ge=1)
    eval_random_sequences: int = Field(8, ge=1)
    eval_lr_factor: float = Field(0.2, gt=0, description="The update is applied scaled by this × outer lr.")
    ma_alpha: float = Field(0.05, gt=0, le=1, description="Moving-average rate of the uniqueness indicator.")
    rating_mu: float = 25.0
    rating_sigma: float = 25.0 / 3
    rating_beta: float = 7.0
    rating_tau: float = 0.1
    copy_threshold: float = Field(0.4, gt=0, le=1, description="Index overlap that counts as copying.")
    copy_reset: float = Field(0.5, gt=0, le=1)
    copy_ban: float = Field(0.6, gt=0, le=1)
    copy_ban_windows: int = Field(200, ge=0)
    copy_penalty: float = Field(0.5, ge=0, le=1)
    copy_value_similarity: float = Field(0.95, gt=0, le=1, description="Cosine of values on shared indices "
                                         "above which an overlap of half the threshold also counts as copying.")
    copy_sample_chunks: int = Field(768, ge=0, description="Chunks compared per window for copy detection, "
                                    "drawn from the validator's secret after the upload slot (0: every chunk). "
                                    "768 misclassifies a pair 0.1 away from a threshold with probability < 2e-7.")
    # How one validator turns its scores into weights: its own choice, so not part of the run.
    weights_every: int = Field(2, ge=1, description="Windows between set_weights calls.", json_schema_extra=LOCAL)
    policy: Literal["power", "tiered"] = Field("power", json_schema_extra=LOCAL)
    power_p: float = Field(2.2, gt=0, json_schema_extra=LOCAL)
    burn_uid: int = Field(0, ge=0, json_schema_extra=LOCAL)
    burn_share: float = Field(0.5, ge=0, le=1, json_schema_extra=LOCAL)
    tier_top: int = Field(20, ge=1, json_schema_extra=LOCAL)
    tier_top_share: float = Field(0.75, ge=0, le=1, json_schema_extra=LOCAL)
    tier_ramp: float = Field(2.0, ge=1, description="Weight of the first of the top tier over the last.",
                             json_schema_extra=LOCAL)
    tier_next: int = Field(10, ge=0, json_schema_extra=LOCAL)
    tier_decay: float = Field(0.5, gt=0, le=1, json_schema_extra=LOCAL)
    reserves: int = Field(5, ge=0, description="Reserve peers listed after the top G.")
    list_min_ma: float = Field(0.4, ge=0, le=1, description="Uniqueness moving average a peer needs before it is "
                               "listed (aggregated): 0.4 takes ten loss tests that all show its own-data advantage.")
    list_min_final_ratio: float = Field(0.2, ge=0, le=1, description="A listed peer's final score is at least this "
                                        "fraction of the best final score of the window.")
    checkpoint_every: int = Field(25, ge=1, description="Windows between the validator's checkpoints (whole "
                                  "weights); a late peer replays the windows since the latest from the listed "
                                  "peers' messages, so nodes keep checkpoint_every + 3 windows of them.")
    weight_sample: int = Field(1024, ge=16, description="Weights sampled for the sync check.")


class GauntletConfig(_Section):
    """Every parameter of a run. Sections group the parameters by the part of docs/protocol.md they serve."""

    run_name: str = Field("gauntlet-dev", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    seed: int = 0
    sparseloco: SparseLoCoConfig = SparseLoCoConfig()
    inner: InnerConfig = InnerConfig()
    diloco: DiLoCoConfig = DiLoCoConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    timing: TimingConfig = TimingConfig()
    validator: ValidatorConfig = ValidatorConfig()

    @property
    def samples_per_window(self) -> int:
        """Sequences a peer is assigned (and must train on) each window."""
        return self.inner.steps * self.train.batch_size

    def manifest(self) -> dict[str, Any]:
        """The run's manifest: :func:`manifest_document` of this config."""
        return manifest_document(self)

    def run_hash(self) -> str:
        """32 hex characters identifying the run: the hash of its manifest; part of every message header."""
        return manifest_hash(self.manifest())


def canonical_json(value: Any) -> str:
    """Sorted, compact JSON: what is hashed and signed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def is_local(section: type[BaseModel], name: str) -> bool:
    extra = section.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("local"))


def _section_type(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _settings(model: type[BaseModel], values: dict[str, Any], defaults: dict[str, Any], local: bool) -> dict:
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        section = _section_type(field.annotation)
        if section is not None:
            nested = _settings(section, values[name], defaults[name], local)
            if nested:
                out[name] = nested
        elif is_local(model, name) == local and values[name] != defaults[name]:
            out[name] = values[name]
    return out


def run_settings(cfg: BaseModel) -> dict[str, Any]:
    """The run settings of ``cfg`` that differ from their defaults, nested by section (local settings
    and defaults left out: a setting a release adds with a default is absent from every older manifest)."""
    return _settings(type(cfg), cfg.model_dump(mode="json"), type(cfg)().model_dump(mode="json"), local=False)


def local_settings(cfg: BaseModel) -> dict[str, Any]:
    """The local settings of ``cfg`` that differ from their defaults (what :func:`run_settings` leaves out)."""
    return _settings(type(cfg), cfg.model_dump(mode="json"), type(cfg)().model_dump(mode="json"), local=True)


def manifest_document(cfg: BaseModel) -> dict[str, Any]:
    """``{"protocol", "requires", "settings"}``: what defines a run and is hashed into its run hash."""
    return {"protocol": PROTOCOL, "requires": FIRST_RELEASE, "settings": run_settings(cfg)}


def manifest_hash(document: dict[str, Any]) -> str:
    """The run hash of a manifest document: the first 32 hex digits of the sha256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()[:32]


def check_manifest(document: Any) -> dict[str, Any]:
    """``document`` if this code can run it: a ConfigError saying which release to upgrade to for a
    manifest of a newer protocol, and one for an older protocol or anything that is not a manifest."""
    if not isinstance(document, dict) or set(document) != {"protocol", "requires", "settings"}:
        raise ConfigError("not a run manifest: expected an object with protocol, requires and settings")
    protocol, requires = document["protocol"], document["requires"]
    if not isinstance(protocol, int) or isinstance(protocol, bool) or protocol < 1 or not isinstance(requires, str):
        raise ConfigError("not a run manifest: protocol must be a whole number >= 1 and requires a version")
    if protocol > PROTOCOL:
        raise ConfigError(f"this run's manifest is for protocol {protocol}; gauntlet {__version__} speaks protocol "
                          f"{PROTOCOL}: upgrade gauntlet to >= {requires} (pip install -U 'gauntlet>={requires}')")
    if protocol < PROTOCOL:
        raise ConfigError(f"this run's manifest is for protocol {protocol}, which gauntlet {__version__} no longer "
                          f"speaks (it speaks protocol {PROTOCOL}): run it with a release of protocol {protocol}")
    if not isinstance(document["settings"], dict):
        raise ConfigError("not a run manifest: settings must be an object")
    return document


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like section.field=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # bare strings need no quotes: run_name=my-run
    return key.strip().split("."), value


def _apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON (anything else) config file into a plain dict."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix or 'JSON'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object at the top level")
    return data


def read_settings(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings an optional file and ``section.field=value`` overrides give, as a nested dict
    (overrides win; values parsed as JSON when they can be, strings otherwise). Not validated."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    for item in overrides:
        _apply_override(data, *_parse_override(item))
    return data


def validate_config(data: dict[str, Any], what: str = "configuration") -> GauntletConfig:
    """The frozen config of a settings dict; a ConfigError naming every invalid field."""
    try:
        return GauntletConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid {what}: {problems}") from exc


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> GauntletConfig:
    """Build the frozen config from an optional file and ``section.field=value`` overrides.

    Overrides win over the file; values are parsed as JSON when they can be (``sparseloco.topk=32``,
    ``inner.betas=[0.9,0.99]``) and taken as strings otherwise. Any invalid field raises
    :class:`~gauntlet.errors.ConfigError` naming it.
    """
    return validate_config(read_settings(path, overrides))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config_from_manifest(document: dict[str, Any], local: dict[str, Any] | None = None,
                         written_by: str | None = None) -> GauntletConfig:
    """The config of a node of the run ``document`` defines, with this node's ``local`` settings (a dict
    from :func:`read_settings`). A local input may repeat a run setting but not change it: that is a
    ConfigError naming the setting, since a node that differs in one would be in another run."""
    check_manifest(document)
    newer = f" (written by gauntlet {written_by}: a setting this release lacks needs gauntlet >= {written_by})"
    run = validate_config(document["settings"], "run manifest" + (newer if written_by else ""))
    settings = run_settings(run)
    if canonical_json(settings) != canonical_json(document["settings"]):  # its hash is not the run hash nodes compute
        theirs, ours = _flatten(document["settings"]), _flatten(settings)
        odd = sorted(k for k in theirs if canonical_json(theirs[k]) != canonical_json(ours.get(k)))
        raise ConfigError(f"the run manifest is not in canonical form ({', '.join(odd)}: a setting at its default "
                          f"value, or a value not written as the setting's type): write it with `gauntlet run publish`")
    cfg = validate_config(_merge(document["settings"], local or {}))
    theirs, ours = _flatten(settings), _flatten(run_settings(cfg))
    changed = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    if changed:
        described = ", ".join(f"{k} (the run: {theirs.get(k, 'default')!r}, here: {ours.get(k, 'default')!r})"
                              for k in changed)
        raise ConfigError(f"{described}: run settings come from the run's manifest; remove them from --config/--set "
                          f"(only local settings such as model.device or data.path may differ between nodes)")
    return cfg
