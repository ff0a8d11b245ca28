"""What a simulation runs: which peers with which behaviours, how many windows, on which model and
settings (the simulation's small defaults, then ``--config`` and ``--set``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from gauntlet.config import GauntletConfig, load_config
from gauntlet.identity import Identity

DEFAULT_ADVERSARIES = ["free-rider", "copier", "noisy-copier", "random-data", "noise", "sign-flip", "stale",
                       "late", "malformed"]
# Small, fast settings for a laptop CPU; --config / --set override them.
SIMULATION_DEFAULTS = ["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "inner.warmup_steps=2",
                       "inner.lr=3e-3", "train.eval_batches=1", "validator.checkpoint_every=5",
                       # loss tests on all 16 assigned sequences and 64 random ones: with 8 random
                       # sequences the random batch's luck decides the uniqueness indicator of the window
                       "validator.eval_own_sequences=16", "validator.eval_random_sequences=64"]
LOCKSTEP_TIMING = ["timing.blocks_per_window=10", "timing.upload_slot_s=20"]  # 12-second blocks, virtual
# 1-second blocks: 24-second windows of wall time. With the 15 processes of the default network on 2
# cores a peer needs about 3 s to train and apply a window, and the validator about 8 s (16 s for the
# first window) to evaluate one, which must end by the next list's deadline, 20 s after the slot closes.
LIVE_TIMING = ["timing.blocks_per_window=24", "timing.upload_slot_s=4", "timing.slot_grace_s=0.5",
               "timing.gather_timeout_s=8"]


def chain_tempo(cfg: GauntletConfig) -> int:
    """The simulation's chain runs an epoch (and pays) every time the validator sets weights."""
    return cfg.timing.blocks_per_window * cfg.validator.weights_every


@dataclass(frozen=True)
class ValidatorSpec:
    """One validator of a simulation: its short name (``honest-0``, ``colluder``), node name (its
    directory and identity: ``validator`` when it is the only one), behaviour spec and stake."""

    name: str
    node: str
    behaviour: str
    stake: float


def parse_validators(specs: list[str]) -> list[ValidatorSpec]:
    """``SPEC[@STAKE]`` each (a built-in validator behaviour or ``module:Class``; STAKE a relative
    amount, 1 when left out) → validators named like peers (``honest-0``, ``honest-1``, ``colluder``,
    ``colluder-2``), each staked ``1000 × its share`` of the total. Raises ValueError for a stake
    that is not a non-negative number, or stakes that add up to nothing."""
    if not specs:
        raise ValueError("a simulation needs at least one validator")
    parsed = []
    for item in specs:
        spec, at, amount = item.rpartition("@") if "@" in item else (item, "", "")
        try:
            stake = float(amount) if at else 1.0
        except ValueError:
            raise ValueError(f"validator {item!r}: the stake after '@' must be a number, e.g. honest@40") from None
        if not spec or not math.isfinite(stake) or stake < 0:
            raise ValueError(f"validator {item!r}: write SPEC or SPEC@STAKE with a stake of 0 or more")
        parsed.append((spec, stake))
    total = sum(stake for _, stake in parsed)
    if total <= 0:
        raise ValueError(f"the validators' stakes add up to {total:g}: at least one must be positive")
    names: list[str] = []
    counts: dict[str, int] = {}
    for spec, _ in parsed:
        base = spec.rsplit(":", 1)[-1].lower() if ":" in spec else spec
        if base == "honest":
            names.append(f"honest-{counts.get(base, 0)}")
        else:
            names.append(base if counts.get(base, 0) == 0 else f"{base}-{counts[base] + 1}")
        counts[base] = counts.get(base, 0) + 1
    single = len(parsed) == 1
    return [ValidatorSpec(name, "validator" if single else f"validator-{name}", spec, 1000.0 * stake / total)
            for name, (spec, stake) in zip(names, parsed)]


@dataclass
class Scenario:
    honest: int = 5
    adversaries: list[str] = field(default_factory=lambda: list(DEFAULT_ADVERSARIES))
    windows: int = 20
    seed: int = 0
    model: str = "tiny"
    mode: str = "lockstep"
    out: Path = Path("runs/simulate")
    storage: str | None = None
    chain: str | None = None
    config: Path | None = None
    overrides: list[str] = field(default_factory=list)
    data_dir: Path | None = None
    validators: list[str] = field(default_factory=lambda: ["honest"])  # SPEC[@STAKE] each
    commit_reveal: bool = False  # the embedded chain hides weights until the epoch after the next

    def colluder_target(self) -> str | None:
        """The hotkey colluding validators pay: the first free-rider, else the first adversary (None in
        an honest network)."""
        nodes = self.nodes()
        chosen = next((n for n, s in nodes.items() if s == "free-rider"), None)
        chosen = chosen or next((n for n, s in nodes.items() if s != "honest"), None)
        return None if chosen is None else self.identity(chosen).hotkey

    def validator_specs(self) -> list[ValidatorSpec]:
        """The validators, highest stake first (ties: in the order given)."""
        return sorted(parse_validators(self.validators), key=lambda v: -v.stake)

    def nodes(self) -> dict[str, str]:
        """Peer name → behaviour spec, in a fixed order."""
        names = {f"honest-{i}": "honest" for i in range(self.honest)}
        for spec in self.adversaries:
            base = spec.rsplit(":", 1)[-1].lower() if ":" in spec else spec
            name, n = base, 2
            while name in names:
                name, n = f"{base}-{n}", n + 1
            names[name] = spec
        return names

    def identity(self, name: str) -> Identity:
        return Identity.from_seed(f"simulate|{self.seed}|{name}")

    def config_for(self) -> GauntletConfig:
        timing = LOCKSTEP_TIMING if self.mode == "lockstep" else LIVE_TIMING
        base = [*SIMULATION_DEFAULTS, *timing, f"seed={self.seed}", f"model.preset={self.model}"]
        return load_config(self.config, [*base, *self.overrides])
