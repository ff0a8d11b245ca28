"""One configuration model for every protocol and run parameter.

Defaults are those of docs/protocol.md (the reference deployment's numbers). A config is loaded from a TOML or
JSON file plus ``section.field=value`` overrides, validated once at the edge, and frozen. Its
canonical JSON is hashed into every message (:meth:`GauntletConfig.run_hash`) so that nodes of
different runs, or of one run with different settings, never mix their updates.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gauntlet.errors import ConfigError


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


class ModelConfig(_Section):
    preset: str = Field("tiny", description="tiny, small, 150M, 1B, or a local path / hub name of a causal LM")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    autocast_bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")


class TrainConfig(_Section):
    """What a peer trains each window: ``inner.steps`` batches of ``batch_size`` assigned sequences."""

    batch_size: int = Field(8, ge=1)
    eval_batches: int = Field(2, ge=1, description="Validation batches for the loss a peer reports.")


class TimingConfig(_Section):
    """Windows and the upload slot (docs/protocol.md §1)."""

    blocks_per_window: int = Field(125, ge=1)
    upload_slot_s: float = Field(70.0, gt=0.0, description="Uploads count when the store's LastModified is "
                                 "within this many seconds after the window boundary.")
    slot_grace_s: float = Field(1.0, ge=0.0, description="Tolerated clock skew at both ends of the slot.")
    gather_timeout_s: float = Field(60.0, gt=0.0)
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
    weights_every: int = Field(2, ge=1, description="Windows between set_weights calls.")
    policy: Literal["power", "tiered"] = "power"
    power_p: float = Field(2.2, gt=0)
    burn_uid: int = Field(0, ge=0)
    burn_share: float = Field(0.5, ge=0, le=1)
    tier_top: int = Field(20, ge=1)
    tier_top_share: float = Field(0.75, ge=0, le=1)
    tier_ramp: float = Field(2.0, ge=1, description="Weight of the first of the top tier over the last.")
    tier_next: int = Field(10, ge=0)
    tier_decay: float = Field(0.5, gt=0, le=1)
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

    def canonical_json(self) -> str:
        """Sorted, compact JSON of every field: the input of :meth:`run_hash`."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def run_hash(self) -> str:
        """32 hex characters identifying this run and its settings; part of every message header."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:32]


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


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> GauntletConfig:
    """Build the frozen config from an optional file and ``section.field=value`` overrides.

    Overrides win over the file; values are parsed as JSON when they can be (``sparseloco.topk=32``,
    ``inner.betas=[0.9,0.99]``) and taken as strings otherwise. Any invalid field raises
    :class:`~gauntlet.errors.ConfigError` naming it.
    """
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    for item in overrides:
        _apply_override(data, *_parse_override(item))
    try:
        return GauntletConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
