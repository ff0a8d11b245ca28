"""What every benchmark script shares: the machine description, the results folder and saving."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # the scripts run as ``python benchmarks/NAME.py`` from a checkout
    sys.path.insert(0, str(ROOT))


def machine() -> str:
    """CPU model and core count (and the GPU's name when CUDA is present)."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}"


def parser(doc: str | None, name: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every script has: --json, --threads, --save, --no-save."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON line (default: pretty JSON)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--save", type=Path, default=RESULTS / f"{name}.json",
                    help=f"where to write the result (default benchmarks/results/{name}.json)")
    ap.add_argument("--no-save", action="store_true", help="print only")
    return ap


def finish(result: dict, args: argparse.Namespace) -> None:
    """Stamp the result with the machine, torch and the date; print it; save it unless --no-save."""
    result.update(machine=machine(), threads=torch.get_num_threads(), torch=torch.__version__,
                  date=date.today().isoformat())
    print(json.dumps(result) if args.json else json.dumps(result, indent=2), flush=True)
    if not args.no_save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=2) + "\n")
        print(f"saved {args.save}", file=sys.stderr)


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the JSON)."""
    print(message, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) since start or since :func:`reset_peak_rss`."""
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def reset_peak_rss() -> None:
    """Hand freed heap back to the OS and restart the VmHWM count (Linux: ``echo 5 > clear_refs``)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
