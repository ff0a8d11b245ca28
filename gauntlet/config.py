"""One configuration model for every protocol and run parameter.

Defaults are those of ``PROTOCOL.md`` (the reference deployment). A config is loaded from a TOML or
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
    """Compression, error feedback, aggregation and the outer step (PROTOCOL §2.4–2.7, §3)."""

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
    """The inner optimiser a peer runs between outer steps (PROTOCOL §2.2)."""

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
    """The training corpus and tokenizer (PROTOCOL §5 assigns samples of it to peers)."""

    source: str = Field("stdlib", description="stdlib (offline default: the Python standard library "
                        "sources), a local file or directory (.txt .md .py .jsonl .parquet), or hf:NAME[:SPLIT]")
    tokenizer: str = Field("bytes", description="bytes, bpe:VOCAB (trained on the corpus, cached), "
                           "or a Hugging Face tokenizer name/path")
    seq_len: int = Field(128, ge=8, le=65536, description="Tokens per training sequence.")
    val_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="Share of documents held out.")
    max_tokens: int | None = Field(None, ge=1, description="Stop preparing after this many tokens.")


class ModelConfig(_Section):
    preset: str = Field("tiny", description="tiny, small, 150M, 1B, or a local path / hub name of a causal LM")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    autocast_bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")


class TrainConfig(_Section):
    """What a peer trains each window: ``inner.steps`` batches of ``batch_size`` assigned sequences."""

    batch_size: int = Field(8, ge=1)
    eval_batches: int = Field(2, ge=1, description="Validation batches for the loss a peer reports.")


class TimingConfig(_Section):
    """Windows and the upload slot (PROTOCOL §1)."""

    blocks_per_window: int = Field(125, ge=1)
    upload_slot_s: float = Field(70.0, gt=0.0, description="Uploads count when the store's LastModified is "
                                 "within this many seconds after the window boundary.")
    slot_grace_s: float = Field(1.0, ge=0.0, description="Tolerated clock skew at both ends of the slot.")
    gather_timeout_s: float = Field(60.0, gt=0.0)
    max_message_bytes: int = Field(512 << 20, ge=1024)


class GauntletConfig(_Section):
    """Every parameter of a run. Sections group the parameters by the part of PROTOCOL.md they serve."""

    run_name: str = Field("gauntlet-dev", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    seed: int = 0
    sparseloco: SparseLoCoConfig = SparseLoCoConfig()
    inner: InnerConfig = InnerConfig()
    diloco: DiLoCoConfig = DiLoCoConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    timing: TimingConfig = TimingConfig()

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
