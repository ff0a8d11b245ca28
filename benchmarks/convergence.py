"""Convergence at small scale: SparseLoCo against DiLoCo, DDP and the ablations, on equal tokens.

R replicas (simulated in one process, each with its own model copy, AdamW state and data shard)
train a preset model on the offline corpus for the same number of inner steps on the same batches.
Every H inner steps the replicas communicate:

- ``ddp``: no outer loop; the gradients are averaged every inner step (an all-reduce), one AdamW.
- ``diloco``: dense fp32 Δ, averaged, outer SGD with Nesterov momentum (lr 0.7, momentum 0.9).
- ``sparseloco``: error feedback (β 0.95), top-64 of every 64×64 chunk (1.56 %), 2-bit codes,
  median clipping, mean, outer SGD (lr 1) — real signed-format messages, decoded from bytes.
- ``topk_no_ef``: the same messages with β = 0: what top-k drops is lost.
- ``dense_8bit``: every tensor dense on 8-bit codes, averaged, DiLoCo's Nesterov outer step.

Reported per method and H: the final validation loss (mean and sample std over seeds), the loss
curve after every outer step (and before the first; DDP every min(H) steps), and the bytes each
replica sends per outer step (the encoded message; for DDP, H fp32 gradients). The default budget,
960 inner steps, gives 32 outer steps at H = 30. Runs are appended to a log as they finish, so an
interrupted benchmark resumes; a method with no run at this budget is reported from the longest
budget it has in the log with otherwise equal settings, and its cell says how many inner steps that was.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, finish, log, parser  # noqa: E402
from gauntlet.config import DataConfig, DiLoCoConfig, ModelConfig, SparseLoCoConfig  # noqa: E402
from gauntlet.data import TokenDataset, prepare  # noqa: E402
from gauntlet.models import build_model, mean_loss  # noqa: E402
from gauntlet.sparseloco import ErrorFeedback, aggregate, decode_message, encode_message, outer_step  # noqa: E402
from gauntlet.sparseloco.diloco import DiLoCoOuter, mean_delta  # noqa: E402

METHODS = ("ddp", "diloco", "sparseloco", "topk_no_ef", "dense_8bit")
CODECS = {
    "sparseloco": SparseLoCoConfig(),
    "topk_no_ef": SparseLoCoConfig(ef_decay=0.0),
    "dense_8bit": SparseLoCoConfig(min_sparse_numel=2**62, dense_bits=8, ef_decay=0.0),
}


@dataclass(frozen=True)
class Setup:
    model: str = "tiny"
    replicas: int = 4
    steps: int = 960  # inner steps of every replica (a multiple of every H): 32 outer steps at H = 30
    batch: int = 4  # sequences per replica per inner step
    lr: float = 2e-3
    warmup: int = 24
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_sequences: int = 128


def lr_at(step: int, s: Setup) -> float:
    """Linear warm-up, then cosine decay to 10 % at the last step."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Data:
    """Each replica's batches (disjoint shards of the training split) and a fixed validation set."""

    def __init__(self, s: Setup, seed: int) -> None:
        root = prepare(DataConfig(), Path.home() / ".cache" / "gauntlet" / "data")
        self.train, val = TokenDataset(root, "train"), TokenDataset(root, "val")
        self.vocab, self.seq_len = self.train.vocab_size, self.train.seq_len
        g = torch.Generator().manual_seed(seed)
        per_shard = len(self.train) // s.replicas
        picks = torch.randint(0, per_shard, (s.steps, s.replicas, s.batch), generator=g)
        self.indices = picks * s.replicas + torch.arange(s.replicas)[None, :, None]  # replica r: i ≡ r mod R
        spread = torch.linspace(0, len(val) - 1, s.eval_sequences).long().tolist()  # the whole split, evenly
        self.val = [val.batch(spread[i:i + 32]) for i in range(0, len(spread), 32)]

    def batch(self, step: int, replica: int) -> torch.Tensor:
        return self.train.batch(self.indices[step, replica].tolist())


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor], lr: float,
                clip: float) -> None:
    """One optimiser step on the mean loss of ``batches`` (several batches = an all-reduce of gradients)."""
    for group in opt.param_groups:
        group["lr"] = lr
    for batch in batches:
        (model(input_ids=batch, labels=batch).loss / len(batches)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _adamw(model: torch.nn.Module, s: Setup) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.95), weight_decay=s.weight_decay)


def _fp32_bytes(params: dict[str, torch.Tensor]) -> int:
    """Size of a safetensors file holding every tensor in fp32 (what DiLoCo sends)."""
    return len(safetensors.torch.save({n: torch.zeros(p.shape) for n, p in params.items()}))


def run_ddp(s: Setup, data: Data, seed: int, hs: list[int], progress: Callable[[int], None]) -> dict:
    model = build_model(ModelConfig(preset=s.model, device="cpu"), data.vocab, data.seq_len, seed)
    opt = _adamw(model, s)
    every = min(hs)
    curve, steps = [mean_loss(model, data.val, bf16=False)], [0]
    for step in range(s.steps):
        _train_step(model, opt, [data.batch(step, r) for r in range(s.replicas)], lr_at(step, s), s.grad_clip)
        if (step + 1) % every == 0:
            curve.append(mean_loss(model, data.val, bf16=False))
            steps.append(step + 1)
            progress(step + 1)
    grads = _fp32_bytes(dict(model.named_parameters()))
    return {"curve": curve, "curve_steps": steps, "bytes_per_outer_step": {str(h): h * grads for h in hs}}


def _communicate(method: str, deltas: list[dict[str, torch.Tensor]], state: dict, outer_index: int,
                 spec: dict[str, tuple[int, ...]]) -> tuple[dict[str, torch.Tensor], int]:
    """The averaged update every replica applies, and the bytes one replica sent."""
    if method == "diloco":
        return mean_delta(deltas), state["fp32_bytes"]
    cfg = CODECS[method]
    messages = [encode_message(ef.compress(d), window=outer_index, run="convergence", codec=cfg, hotkey=f"replica-{r}")
                for r, (ef, d) in enumerate(zip(state["feedback"], deltas))]
    decoded = [decode_message(m, spec=spec, expected_window=outer_index, expected_run="convergence",
                              expected_codec=cfg, require_signature=False).tensors for m in messages]
    agg = aggregate(decoded, cfg.combine, clip_to_median=method != "dense_8bit")
    return agg, max(len(m) for m in messages)


def run_outer(method: str, h: int, s: Setup, data: Data, seed: int, progress: Callable[[int], None]) -> dict:
    model = build_model(ModelConfig(preset=s.model, device="cpu"), data.vocab, data.seq_len, seed)
    params = {n: p for n, p in model.named_parameters()}
    spec = {n: tuple(p.shape) for n, p in params.items()}
    replicas = [copy.deepcopy(model) for _ in range(s.replicas)]
    opts = [_adamw(m, s) for m in replicas]
    state: dict = {"fp32_bytes": _fp32_bytes(params)}
    if method in CODECS:
        state["feedback"] = [ErrorFeedback(spec, CODECS[method]) for _ in range(s.replicas)]
    nesterov = DiLoCoOuter(params, DiLoCoConfig()) if method in ("diloco", "dense_8bit") else None
    curve, steps, sent = [mean_loss(model, data.val, bf16=False)], [0], []
    for step in range(s.steps):
        for r, (m, opt) in enumerate(zip(replicas, opts)):
            _train_step(m, opt, [data.batch(step, r)], lr_at(step, s), s.grad_clip)
        if (step + 1) % h == 0:
            with torch.no_grad():
                deltas = [{n: params[n] - p for n, p in m.named_parameters()} for m in replicas]
                update, nbytes = _communicate(method, deltas, state, (step + 1) // h - 1, spec)
                if nesterov is not None:
                    nesterov.step(update)
                else:
                    outer_step(params, update, SparseLoCoConfig().outer_lr)
                for m in replicas:
                    for n, p in m.named_parameters():
                        p.copy_(params[n])
            sent.append(nbytes)
            curve.append(mean_loss(model, data.val, bf16=False))  # after every outer step
            steps.append(step + 1)
            if (step + 1) % (10 * h) == 0 or step + 1 == s.steps:
                progress(step + 1)
    return {"curve": curve, "curve_steps": steps, "bytes_per_outer_step": {str(h): max(sent)}}


BUDGET_KEYS = ("steps", "eval_every")  # what may differ between a run and the budget it stands in for


def _curve_steps(run: dict) -> list[int]:
    """Inner steps of each curve point (older logs evaluated every ``eval_every`` steps, not at 0)."""
    if "curve_steps" in run:
        return run["curve_steps"]
    every = run["setup"]["eval_every"]
    return [every * (i + 1) for i in range(len(run["curve"]))]


def pick_runs(log_runs: list[dict], s: Setup, method: str, h: int) -> list[dict]:
    """The runs of ``method`` (and ``h``) at this setup; when there are none, those of the longest
    budget in the log whose other settings are equal."""
    def same_but_budget(setup: dict) -> bool:
        ours = asdict(s)
        return all(setup.get(k) == v for k, v in ours.items() if k not in BUDGET_KEYS)

    mine = [r for r in log_runs if r["method"] == method and (method == "ddp" or r["h"] == h)
            and same_but_budget(r["setup"]) and r["setup"]["steps"] % max(h, 1) == 0]
    exact = [r for r in mine if r["setup"] == asdict(s)]
    if not exact and mine:
        longest = max(r["setup"]["steps"] for r in mine)
        exact = [r for r in mine if r["setup"]["steps"] == longest]
    chosen = {r["seed"]: r for r in exact}  # one run per seed: the latest logged
    return [chosen[k] for k in sorted(chosen)]


def summarise(log_runs: list[dict], s: Setup, hs: list[int]) -> dict:
    """Per method and H: final loss mean/std over seeds, the mean curve (with the seeds' min and max),
    bytes per outer step, and the inner-step budget the cell was measured at."""
    out: dict[str, dict] = {}
    for method in METHODS:
        for h in hs:
            mine = pick_runs(log_runs, s, method, h)
            if not mine:
                continue
            finals = [r["curve"][-1] for r in mine]
            n = min(len(r["curve"]) for r in mine)
            points = [[r["curve"][i] for r in mine] for i in range(n)]
            out.setdefault(method, {})[str(h)] = {
                "steps": mine[0]["setup"]["steps"],
                "final_loss_mean": round(statistics.fmean(finals), 4),
                "final_loss_std": round(statistics.stdev(finals), 4) if len(finals) > 1 else 0.0,
                "final_losses": [round(f, 4) for f in finals],
                "seeds": [r["seed"] for r in mine],
                "bytes_per_outer_step": mine[0]["bytes_per_outer_step"][str(h)],
                "curve_steps": _curve_steps(mine[0])[:n],
                "curve_mean": [round(statistics.fmean(p), 4) for p in points],
                "curve_min": [round(min(p), 4) for p in points],
                "curve_max": [round(max(p), 4) for p in points],
            }
    return out


def main() -> None:
    ap = parser(__doc__, "convergence")
    ap.add_argument("--model", default=Setup.model)
    ap.add_argument("--h", default="15,30", help="inner steps per outer step, comma-separated")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=Setup.steps, help="inner steps per replica (a multiple of every H)")
    ap.add_argument("--batch", type=int, default=Setup.batch, help="sequences per replica per inner step")
    ap.add_argument("--replicas", type=int, default=Setup.replicas)
    ap.add_argument("--lr", type=float, default=Setup.lr, help="inner AdamW peak learning rate")
    ap.add_argument("--eval-sequences", type=int, default=Setup.eval_sequences,
                    help="held-out sequences of the validation loss")
    ap.add_argument("--log", default=str(RESULTS / "convergence-runs.jsonl"),
                    help="finished runs are appended here; runs already in it (same settings) are skipped")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hs = [int(h) for h in args.h.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    if unknown := set(methods) - set(METHODS):
        ap.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    s = Setup(model=args.model, replicas=args.replicas, steps=args.steps, batch=args.batch, lr=args.lr,
              eval_sequences=args.eval_sequences)
    if any(s.steps % h for h in hs):
        ap.error(f"--steps {s.steps} must be a multiple of every H ({hs})")

    log_path = Path(args.log)
    setup_key = asdict(s)
    logged = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    done = [r for r in logged if r["setup"] == setup_key]
    plan = [(m, h, seed) for seed in seeds for m in methods for h in ([0] if m == "ddp" else hs)]
    t_start = time.perf_counter()
    for i, (method, h, seed) in enumerate(plan):
        if any(r["method"] == method and r["h"] == h and r["seed"] == seed for r in done):
            continue
        label = f"[{i + 1}/{len(plan)}] {method}{'' if method == 'ddp' else f' H={h}'} seed {seed}"
        t0 = time.perf_counter()
        data = Data(s, seed)
        progress = lambda step, label=label: log(f"{label}: step {step}/{s.steps}")  # noqa: E731
        result = (run_ddp(s, data, seed, hs, progress) if method == "ddp"
                  else run_outer(method, h, s, data, seed, progress))
        record = {"setup": setup_key, "method": method, "h": h, "seed": seed, **result,
                  "seconds": round(time.perf_counter() - t0, 1)}
        log(f"{label}: final validation loss {result['curve'][-1]:.4f} ({record['seconds']} s)")
        done.append(record)
        logged.append(record)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    data = Data(s, 0)
    model = build_model(ModelConfig(preset=s.model, device="cpu"), data.vocab, data.seq_len, 0)
    finish({"benchmark": "convergence", "setup": setup_key, "parameters": sum(p.numel() for p in model.parameters()),
            "h": hs, "tokens_per_replica": s.steps * s.batch * data.seq_len, "results": summarise(logged, s, hs),
            "wall_s": round(time.perf_counter() - t_start, 1)}, args)


if __name__ == "__main__":
    main()
