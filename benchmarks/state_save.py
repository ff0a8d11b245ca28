"""Host memory while a node saves and restores its local state (prints JSON).

    python benchmarks/state_save.py [--model 1B] [--dir /tmp]

Builds a one-process peer's state at the given shape on the CPU — the model's weights, the AdamW
moments and the error-feedback residuals, all filled — and saves it the way the node does after
every window (``peers.node.state_files.save_local``: one safetensors file written tensor by tensor
to a temporary file, fsynced with its directory, renamed over the previous one), then restores it
into the same objects the way a restarted node does (the optimiser empty, as after a start).

Reported: ``held_mb`` (the bytes of every tensor the state holds), ``peak_rss_mb`` (the process's
peak resident memory during the save, VmHWM restarted just before it; it includes the interpreter
and torch, ``runtime_mb``), ``peak_over_held``, ``save_above_before_mb`` (the peak less the resident memory just before the
save), the same for the restore, seconds and the file size.
``before``: the weights alone (a validator's state) saved the way nodes did before — the whole file
built as one ``bytes`` object, then written — next to the streamed save of the same tensors; and a
validator's signed checkpoint of them, built in memory as before and written to a file as now.
``checkpoint_load``: a late peer loading that checkpoint into its weights, the file read whole as
``bytes`` and decoded (before) and checked in chunks then read tensor by tensor (now).
"""

from __future__ import annotations

import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import finish, log, parser, peak_rss_mb, reset_peak_rss, rss_mb  # noqa: E402

MB = 1 << 20


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def build_state(preset: str):
    """A peer's model, AdamW (with both moments) and error feedback at ``preset``, values filled."""
    from gauntlet.config import ModelConfig, SparseLoCoConfig
    from gauntlet.data.tokenizer import ByteTokenizer
    from gauntlet.models import build_model
    from gauntlet.sparseloco import ErrorFeedback

    model = build_model(ModelConfig(preset=preset, device="cpu"), ByteTokenizer.vocab_size, 1024, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    for p in params:  # one step creates the moments; then give them real values
        p.grad = torch.zeros_like(p)
    opt.step()
    for p in params:
        p.grad = None
    with torch.no_grad():
        for slots in opt.state.values():
            slots["exp_avg"].normal_()
            slots["exp_avg_sq"].uniform_()
        ef = ErrorFeedback({n: tuple(p.shape) for n, p in model.named_parameters()}, SparseLoCoConfig(), "cpu")
        for buf in ef.buffers.values():
            buf.normal_()
    return model, opt, ef


def measured(fn) -> tuple[float, float, float]:
    """(peak resident MB, MB above the resident memory just before, seconds) of ``fn()``."""
    reset_peak_rss()
    before = rss_mb()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    return peak_rss_mb(), peak_rss_mb() - before, seconds


def save_as_bytes(path: Path, tensors: dict, meta: dict) -> None:
    """The earlier way: the whole safetensors file as one ``bytes`` object, then written."""
    import safetensors.torch

    from peers.node.state_files import write_atomic

    write_atomic(path, safetensors.torch.save(tensors, metadata=meta))


def checkpoint_in_memory(weights: dict) -> None:
    """The earlier checkpoint: the signed artefact built as bytes (then uploaded from memory)."""
    from gauntlet.identity import Identity
    from peers.network.artefacts import encode_artefact

    encode_artefact("checkpoint", weights, run="bench", window=0, signer=Identity.from_seed("bench"))


def checkpoint_to_file(path: Path, weights: dict) -> None:
    """The checkpoint as validators write it now: to a file, tensor by tensor (then uploaded from it)."""
    from gauntlet.identity import Identity
    from peers.network.artefacts import write_artefact

    write_artefact(path, "checkpoint", weights, run="bench", window=0, signer=Identity.from_seed("bench"))


def load_checkpoint_bytes(path: Path, weights: dict) -> None:
    """The earlier way a late peer loaded a checkpoint: the whole file as bytes, decoded, then copied in."""
    from gauntlet.identity import Identity
    from peers.network.artefacts import decode_artefact

    spec = {n: tuple(t.shape) for n, t in weights.items()}
    _, tensors = decode_artefact(path.read_bytes(), kind="checkpoint", run="bench", window=0,
                                 trusted={Identity.from_seed("bench").hotkey}, spec=spec, max_bytes=1 << 40)
    with torch.no_grad():
        for n, t in weights.items():
            t.copy_(tensors[n])


def load_checkpoint_streamed(path: Path, weights: dict) -> None:
    """As a late peer loads one now: checked in chunks, then copied in one tensor at a time from the file."""
    from gauntlet.identity import Identity
    from peers.network.artefacts import open_artefact

    spec = {n: tuple(t.shape) for n, t in weights.items()}
    _, tensors = open_artefact(path, kind="checkpoint", run="bench", window=0,
                               trusted={Identity.from_seed("bench").hotkey}, spec=spec)
    with torch.no_grad():
        for n, t in weights.items():
            t.copy_(tensors[n])


def main() -> None:
    ap = parser(__doc__, "state_save")
    ap.add_argument("--model", default="1B", help="model preset (default 1B)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the state files (default: a temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from peers.node.state_files import load_local, save_atomic, save_local

    runtime = rss_mb()
    log(f"building a {args.model} peer's state on the CPU ...")
    model, opt, ef = build_state(args.model)
    weights = {f"model.{n}": p.detach() for n, p in model.named_parameters()}
    opt_tensors = [t for slots in opt.state.values() for t in slots.values() if t.dim()]
    held = nbytes(weights.values()) + nbytes(ef.buffers.values()) + nbytes(opt_tensors)
    meta = {"window": "0", "inner_step": "0", "run": "bench"}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "state.safetensors"
        log(f"saving {held / MB:.0f} MB of tensors ...")
        save_peak, save_extra, save_s = measured(partial(save_local, path, model, ef, opt, meta))
        size = path.stat().st_size
        del opt_tensors
        opt.state.clear()  # a restarted node's optimiser has no state yet
        log("restoring it ...")
        load_peak, load_extra, load_s = measured(partial(load_local, path, model, ef, opt, "bench"))
        restored_held = nbytes(weights.values()) + nbytes(ef.buffers.values()) + nbytes(
            t for slots in opt.state.values() for t in slots.values() if t.dim())
        log("the weights alone, as one bytes object and streamed ...")
        del ef, opt
        weights_mb = nbytes(weights.values()) / MB
        bytes_peak, bytes_extra, bytes_s = measured(lambda: save_as_bytes(Path(tmp) / "v-bytes.safetensors", weights, meta))
        stream_peak, stream_extra, stream_s = measured(lambda: save_atomic(Path(tmp) / "v.safetensors", weights, meta))
        log("a validator's checkpoint of the same weights: built in memory, and written to a file ...")
        ckpt_mem_peak, ckpt_mem_extra, ckpt_mem_s = measured(partial(checkpoint_in_memory, weights))
        ckpt_peak, ckpt_extra, ckpt_s = measured(partial(checkpoint_to_file, Path(tmp) / "ckpt", weights))
        log("a late peer loading that checkpoint: as bytes, and from the file tensor by tensor ...")
        _, cl_bytes_extra, cl_bytes_s = measured(partial(load_checkpoint_bytes, Path(tmp) / "ckpt", weights))
        _, cl_stream_extra, cl_stream_s = measured(partial(load_checkpoint_streamed, Path(tmp) / "ckpt", weights))
    finish({
        "model": args.model, "parameters": sum(p.numel() for p in model.parameters()),
        "held_mb": round(held / MB, 1), "runtime_mb": round(runtime, 1),
        "peak_rss_mb": round(save_peak, 1), "peak_over_held": round(save_peak / (held / MB), 3),
        "save_above_before_mb": round(save_extra, 1),
        "save_s": round(save_s, 2), "file_mb": round(size / MB, 1),
        "load_peak_rss_mb": round(load_peak, 1), "load_peak_over_held": round(load_peak / (restored_held / MB), 3),
        "load_above_before_mb": round(load_extra, 1), "load_s": round(load_s, 2),
        "before": {"state": "weights only (a validator's)", "held_mb": round(weights_mb, 1),
                   "bytes_object_peak_rss_mb": round(bytes_peak, 1), "bytes_object_above_before_mb": round(bytes_extra, 1),
                   "bytes_object_s": round(bytes_s, 2),
                   "streamed_peak_rss_mb": round(stream_peak, 1), "streamed_above_before_mb": round(stream_extra, 1), "streamed_s": round(stream_s, 2),
                   "checkpoint_in_memory_above_before_mb": round(ckpt_mem_extra, 1),
                   "checkpoint_in_memory_s": round(ckpt_mem_s, 2),
                   "checkpoint_to_file_above_before_mb": round(ckpt_extra, 1), "checkpoint_to_file_s": round(ckpt_s, 2)},
        "checkpoint_load": {"weights_mb": round(weights_mb, 1),
                            "bytes_above_before_mb": round(cl_bytes_extra, 1), "bytes_s": round(cl_bytes_s, 2),
                            "streamed_above_before_mb": round(cl_stream_extra, 1), "streamed_s": round(cl_stream_s, 2)},
        "goal": "peak_rss_mb <= 1.2 x held_mb", "goal_met": save_peak <= 1.2 * held / MB,
    }, args)


if __name__ == "__main__":
    main()
