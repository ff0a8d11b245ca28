"""Regenerate the README's "Results" block and the plots from ``benchmarks/results/*.json``.

    python benchmarks/report.py            # rewrite README.md between the results markers + PNGs
    python benchmarks/report.py --print    # print the Markdown only (no files written)

Nothing is measured here: every figure comes from a saved result, stamped with its machine and
date. A benchmark whose JSON is missing is reported as not run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # run as ``python benchmarks/report.py`` from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks import report_convergence  # noqa: E402
from benchmarks.report_convergence import human_bytes  # noqa: E402
BEGIN, END = "<!-- results:begin (python benchmarks/report.py) -->", "<!-- results:end -->"
def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def stamp(r: dict) -> str:
    return f"{r.get('machine', 'unknown machine')}, {r.get('threads', '?')} threads, {r.get('date', 'undated')}"


# ------------------------------------------------------------------------------- other benchmarks

def codec_section() -> list[str]:
    rows = [(b, load("codec" if b == 2 else f"codec_{b}bit")) for b in (2, 4, 8)]
    rows = [(b, r) for b, r in rows if r]
    if not rows:
        return ["Codec: not run (`python benchmarks/codec.py`).", ""]
    r0 = rows[0][1]
    lines = [f"Codec (`python benchmarks/codec.py [--bits 4|8]`): {r0['params'] / 1e6:.1f}M-parameter Llama-style "
             f"workload, {r0['peers']} peers; encode = EF + top-k + quantise + signed message, decode = validate "
             f"{r0['peers']} messages from bytes + aggregate. {stamp(r0)}.", "",
             "| bits | device | encode Mparam/s | decode Mparam·peer/s | bytes/param | vs fp32 |",
             "|---|---|---|---|---|---|"]
    for b, r in rows:
        for dev, x in [(r["device"], r)] + ([("cuda", r["cuda"])] if "cuda" in r else []):
            lines.append(f"| {b} | {dev} | {x['encode_mparam_s']:,.0f} | {x['decode_mparam_peer_s']:,.0f} | "
                         f"{x['bytes_per_param']:.5f} | {x['fp32_ratio']}× |")
    lines.append("| 2 | reference implementation | ~56 | ~1,200 | 0.039 | ~103× |")
    if not any("cuda" in r for _, r in rows):
        lines += ["", "No CUDA figures: these results were measured without a GPU (the script adds them on one)."]
    return lines + [""]


def validator_section() -> list[str]:
    rs = [r for r in (load(f"validator_{m}") for m in ("small", "150M", "1B")) if r and "gather_s" in r]
    if not rs:
        return ["Validator: not run (`python benchmarks/validator.py --model small|150M|1B`).", ""]
    counts = list(rs[-1]["copy_detection_s"])
    big = counts[-1]
    lines = [f"Validator (`python benchmarks/validator.py --model small|150M|1B`): real signed messages of P peers "
             f"in a file:// store (two planted copiers, always named). Copy detection reads each stored message's "
             f"header and the bytes of a secret sample of {rs[-1]['sample_chunks']} chunks, compares every pair "
             f"and names the offenders; a fresh process per P, so its peak memory is the timed part's alone "
             f"(of which {rs[-1]['baseline_rss_mb']:,} MB is the process before it reads a message). Page cache "
             f"warm; the cold column evicts the files first. {stamp(rs[-1])}.", "",
             f"| shape | message | copy detection, {' / '.join(counts)} peers | cold, {big} | peak memory, "
             f"{' / '.join(counts)} peers |", "|---|---|---|---|---|"]
    for r in rs:
        lines.append(f"| {r['model']} ({r['parameters'] / 1e6:,.0f}M) | {human_bytes(r['message_bytes'])} | "
                     + " / ".join(f"{r['copy_detection_s'].get(c, float('nan')):.2f}" for c in counts) + " s | "
                     f"{r['copy_detection_cold_s'].get(big, float('nan')):.2f} s | "
                     + " / ".join(f"{r['peak_rss_mb_by_peers'].get(c, 0):,}" for c in counts) + " MB |")
    gathers = list(rs[-1]["gather_s"])
    lines += ["", "A window's gather as the validator runs it (read, validate completely — signature, payload hash, "
              "indices — at most two decodes at a time, spool to disk, keep the header): "
              "memory stays flat in P.", "",
              f"| shape | gather, {' / '.join(gathers)} peers | peak memory |", "|---|---|---|"]
    for r in rs:
        lines.append(f"| {r['model']} | " + " / ".join(f"{r['gather_s'].get(c, float('nan')):.1f}" for c in gathers)
                     + " s | " + " / ".join(f"{r['gather_peak_rss_mb_by_peers'].get(c, 0):,}" for c in gathers)
                     + " MB |")
    if small := next((r for r in rs if "eval_cost_forward_passes" in r), None):
        lines += ["", f"One peer's loss test ({small['model']}, {small['eval_sequences']} × {small['seq_len']} "
                  f"tokens): {small['loss_test_s']:.3f} s = {small['eval_cost_forward_passes']} forward passes "
                  f"({small['forward_s']:.3f} s each)."]
    return lines + [""]


def storage_section() -> list[str]:
    r = load("storage")
    if not r:
        return ["Storage: not run (`python benchmarks/storage.py`).", ""]
    lines = [f"Storage (`python benchmarks/storage.py`): {next(iter(r['shapes'].values()))['peers']} peers upload "
             f"signed messages to their own buckets on {r['server']}; one node gathers and fully validates them, one "
             f"after another, then with {r['workers']} threads. {stamp(r)}.", "",
             "| shape | message | upload | gather, sequential | gather, concurrent | speed-up |",
             "|---|---|---|---|---|---|"]
    for name, x in r["shapes"].items():
        lines.append(f"| {name} ({x['parameters'] / 1e6:.1f}M) | {human_bytes(x['message_bytes'])} | "
                     f"{x['upload_s_per_message'] * 1000:.0f} ms/message ({x['upload_mb_s']} MB/s) | "
                     f"{x['gather_sequential_s']:.2f} s ({x['gather_sequential_mb_s']} MB/s) | "
                     f"{x['gather_concurrent_s']:.2f} s ({x['gather_concurrent_mb_s']} MB/s) | "
                     f"{x['gather_speedup']}× |")
    if any(x["gather_speedup"] < 1 for x in r["shapes"].values()):
        lines += ["", "Concurrency does not pay here: on loopback there is no network latency to overlap, and the "
                  "decoding and the pure-Python server compete for the same cores, so the extra threads only add "
                  "contention. The nodes gather concurrently for real links, where each request mostly waits."]
    return lines + [""]


def scaling_section() -> list[str]:
    r = load("scaling")
    if not r:
        return ["Scaling: not run (`python benchmarks/scaling.py`).", ""]
    res = r["results"]
    lines = [f"Scaling (`python benchmarks/scaling.py`): lockstep simulations of P honest peers + 1 validator on "
             f"`{r['model']}` with the simulation's small settings (4 inner steps of 4 × 64 tokens per window), "
             f"{r['windows']} windows each, all nodes in one process. Window budget {r['window_budget_s']:.0f} s "
             f"(the simulation's 10 blocks of 12 s; the reference window is 125 blocks). {stamp(r)}.", "",
             "| peers | whole network, per window | per peer | validator per window | of which loss tests | "
             "share of the window budget | peak memory |", "|---|---|---|---|---|---|---|"]
    for p, x in res.items():
        lines.append(f"| {p} | {x['window_s']:.1f} s | {x['window_s_per_peer']:.2f} s | {x['validator_s']:.1f} s "
                     f"(max {x['validator_max_s']:.1f}) | {x['validator_loss_tests_s']:.1f} s | "
                     f"{100 * x['validator_max_s'] / r['window_budget_s']:.0f} % | {x['peak_rss_mb']:,} MB |")
    lines += ["", "![scaling](benchmarks/results/scaling.png)", ""]
    return lines


def sharded_section() -> list[str]:
    r = load("sharded")
    if not r:
        return ["Sharded peer: not run (`python benchmarks/sharded.py`).", ""]
    runs = r["runs"]
    base = runs[0]
    lines = [f"Sharded peer (`python benchmarks/sharded.py`): one peer window of the `{r['model']}` preset "
             f"({base['parameters'] / 1e6:.0f}M parameters) on N ranks under torchrun ({base['device']}, "
             f"{'gloo' if base['device'] == 'cpu' else 'nccl'}; FSDP2): {r['inner_steps']} AdamW steps on "
             f"{r['batch']} × {r['seq']} tokens split over the ranks, error feedback + compression (rank 0 "
             f"writes the message), then decoding it (parse + checks) and applying it (decode, aggregate this "
             f"rank's rows, outer step). \"Held\" counts the tensors a rank keeps "
             f"between windows (parameters + AdamW state + error feedback); peak RSS is the rank's peak resident "
             f"memory during the window (torch and gloo included; glibc mmap threshold "
             f"{r.get('malloc_mmap_threshold', 'glibc default')}). {stamp(r)}.", "",
             "| N | held per rank | vs N = 1 | peak RSS per rank | vs N = 1 | window | train | encode | decode | "
             "decode + apply | bytes uploaded |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in runs:
        lines.append(f"| {x['nproc']} | {x['held_mb_per_rank']:,.0f} MB | "
                     f"{x['held_mb_per_rank'] / base['held_mb_per_rank']:.2f}× | {x['peak_rss_mb_per_rank']:,.0f} MB | "
                     f"{x['peak_rss_mb_per_rank'] / base['peak_rss_mb_per_rank']:.2f}× | {x['window_s']:.1f} s | "
                     f"{x['train_s']:.1f} s | {x['encode_s']:.2f} s | {x.get('decode_s', float('nan')):.2f} s | "
                     f"{x['decode_apply_s']:.2f} s | "
                     f"{x['bytes_per_window']:,} B |")
    same = "the same at every N" if r.get("same_bytes_for_every_n") else "NOT the same at every N"
    lines += ["", f"Bytes uploaded per window are {same}. The trained Δ differs between N in its last float bits "
              "(FSDP sums gradients in another order than one process), so the message bytes differ too; the codec "
              "itself encodes a given Δ byte-identically at N = 1, 2 and 4 (tests/test_sharded_codec_torchrun.py)."]
    if base["device"] == "cpu" and runs[-1]["window_s"] > base["window_s"]:
        lines += ["", f"On CPU the N ranks share the machine's cores ({r['threads']} torch threads split among them) "
                  "and "
                  "FSDP's all-gathers and reduce-scatters go through gloo on loopback, so a window gets slower "
                  "with N: here sharding buys memory per rank, not speed."]
    if r.get("note"):
        lines += ["", r["note"]]
    return lines + [""]


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def bandwidth_section() -> list[str]:
    r = load("bandwidth")
    if not r:
        return ["Bandwidth: not run (`python benchmarks/bandwidth.py`).", ""]
    lines = [f"Bandwidth and disk (`python benchmarks/bandwidth.py`): bytes per window for each node, from objects "
             f"built and measured at each shape (vocabulary {r['vocab']:,}; a message, a fingerprint with its weight "
             f"sample, a checkpoint, peer and replay lists, a window record scaled from a real one) and the "
             f"protocol's counts (top G = {r['top_g']} and {r['reserves']} reserves). *Before*: a dense fp32 "
             f"aggregate every window, a checkpoint every {r['checkpoint_every_before']} windows, nodes keeping 3 "
             f"(peers) or 13 (validators) windows and 13 checkpoints. *Now*: a replay list, a checkpoint every "
             f"{r['checkpoint_every']} windows, nodes keeping {r['checkpoint_every'] + 3} windows and 2 checkpoints. "
             f"Checkpoints count per window (their size over the interval). {stamp(r)}.", "",
             "| shape | peers | validator upload: now / before | validator download | validator disk: now / before "
             "| peer upload | peer download | late peer, per replayed window: now / before | peer disk: now / before |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shape, x in r["results"].items():
        for peers, y in x["by_peers"].items():
            lines.append(
                f"| {shape} ({x['parameters'] / 1e6:,.0f}M) | {peers} | {_bytes(y['validator_upload_bytes_per_window'])} / "
                f"{_bytes(y['validator_upload_bytes_per_window_before'])} ({y['validator_upload_ratio']:.1%}) | "
                f"{_bytes(y['validator_download_bytes_per_window'])} | {_bytes(y['validator_stored_bytes'])} / "
                f"{_bytes(y['validator_stored_bytes_before'])} | {_bytes(y['peer_upload_bytes_per_window'])} | "
                f"{_bytes(y['peer_download_bytes_per_window'])} | "
                f"{_bytes(y['late_peer_download_bytes_per_replayed_window'])} / "
                f"{_bytes(y['late_peer_download_bytes_per_replayed_window_before'])} | "
                f"{_bytes(y['peer_stored_bytes'])} / {_bytes(y['peer_stored_bytes_before'])} |")
    if "goal_met" in r:
        lines += ["", f"Goal ({r['goal']}): {'met' if r['goal_met'] else 'NOT met'} — "
                      f"{_bytes(r['validator_upload_bytes_per_window'])} against "
                      f"{_bytes(r['validator_upload_bytes_per_window_before'])}. Records and peer lists are kept "
                      "(the audit trail): a validator's bucket grows by the record and the list each window."]
    return lines + [""]


def state_save_section() -> list[str]:
    r = load("state_save")
    if not r:
        return ["Local state: not run (`python benchmarks/state_save.py`).", ""]
    b = r["before"]
    return [f"Local state (`python benchmarks/state_save.py`): a one-process peer's state at the `{r['model']}` shape "
            f"({r['parameters'] / 1e6:.0f}M parameters, byte tokens; weights, AdamW moments and error-feedback "
            f"residuals, {r['held_mb']:,.0f} MB held) saved as a node saves it after every window (one safetensors "
            f"file written from the tensors' memory, fsynced, renamed) and restored as a restarted node does. Peak "
            f"resident memory of the process, torch and the interpreter ({r['runtime_mb']:,.0f} MB) included. "
            f"{stamp(r)}.", "",
            "| step | peak RSS | × held | above the memory just before | seconds |", "|---|---|---|---|---|",
            f"| save | {r['peak_rss_mb']:,.0f} MB | {r['peak_over_held']:.3f} | {r['save_above_before_mb']:,.0f} MB | "
            f"{r['save_s']:.1f} |",
            f"| restore (the optimiser's moments are new tensors) | {r['load_peak_rss_mb']:,.0f} MB | "
            f"{r['load_peak_over_held']:.3f} | {r['load_above_before_mb']:,.0f} MB | {r['load_s']:.1f} |",
            f"| before: the weights alone ({b['held_mb']:,.0f} MB) built as one bytes object | "
            f"{b['bytes_object_peak_rss_mb']:,.0f} MB | | {b['bytes_object_above_before_mb']:,.0f} MB | "
            f"{b['bytes_object_s']:.1f} |",
            f"| the same weights, streamed | {b['streamed_peak_rss_mb']:,.0f} MB | | "
            f"{b['streamed_above_before_mb']:,.0f} MB | {b['streamed_s']:.1f} |"] + ([
            f"| a validator's checkpoint of them, built in memory (before) | | | "
            f"{b['checkpoint_in_memory_above_before_mb']:,.0f} MB | {b['checkpoint_in_memory_s']:.1f} |",
            f"| the same checkpoint written to a file (now) | | | {b['checkpoint_to_file_above_before_mb']:,.0f} MB | "
            f"{b['checkpoint_to_file_s']:.1f} |"] if "checkpoint_to_file_s" in b else []) + ([
            f"| a late peer loading it: the file read as bytes, decoded, copied in (before) | | | "
            f"{c['bytes_above_before_mb']:,.0f} MB | {c['bytes_s']:.1f} |",
            f"| the same, checked in chunks and read tensor by tensor (now) | | | "
            f"{c['streamed_above_before_mb']:,.0f} MB | {c['streamed_s']:.1f} |"] if (c := r.get("checkpoint_load")) else []
        ) + [""]


def plot_scaling(r: dict) -> None:
    res = r["results"]
    p = [int(k) for k in res]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(p, [res[str(k)]["window_s"] for k in p], marker="o", label="whole network (all nodes, one process)")
    a.plot(p, [res[str(k)]["validator_s"] for k in p], marker="s", label="validator")
    a.axhline(r["window_budget_s"], color="grey", ls="--", label="window budget")
    a.set(xscale="log", yscale="log", xlabel="peers", ylabel="seconds per window", title="time per window")
    a.set_xticks(p, [str(k) for k in p], minor=False)
    a.xaxis.set_minor_formatter(NullFormatter())
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    b.plot(p, [res[str(k)]["peak_rss_mb"] for k in p], marker="o")
    b.set(xscale="log", xlabel="peers", ylabel="MB", title="peak memory of the simulation")
    b.set_xticks(p, [str(k) for k in p], minor=False)
    b.xaxis.set_minor_formatter(NullFormatter())
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------- assembly

def glance(conv: dict | None) -> list[str]:
    """The one summary table: the headline figure of every benchmark."""
    lines = ["| benchmark | headline | result |", "|---|---|---|"]
    if conv:
        for h in conv["h"]:
            s, d = conv["results"].get("sparseloco", {}).get(str(h)), conv["results"].get("diloco", {}).get(str(h))
            if s and d:
                lines.append(f"| convergence, H={h} | SparseLoCo vs DiLoCo final loss; bytes | "
                             f"{s['final_loss_mean']:.3f} vs {d['final_loss_mean']:.3f}; "
                             f"{d['bytes_per_outer_step'] / s['bytes_per_outer_step']:.0f}× fewer |")
    if c := load("codec"):
        lines.append(f"| codec | encode / decode throughput; size | {c['encode_mparam_s']:,.0f} Mparam/s / "
                     f"{c['decode_mparam_peer_s']:,.0f} Mparam·peer/s; {c['fp32_ratio']}× smaller than fp32 |")
    if v := load("validator_small"):
        lines.append(f"| validator (small) | loss test of one peer | {v['eval_cost_forward_passes']} forward passes |")
    if v := load("validator_1B"):
        big = list(v["copy_detection_s"])[-1]
        lines.append(f"| validator (1B) | copy detection of {big} peers; peak memory | "
                     f"{v['copy_detection_s'][big]:.2f} s; {v['peak_rss_mb_by_peers'][big]:,} MB |")
    if st := load("storage"):
        for name, x in st["shapes"].items():
            lines.append(f"| storage ({name}) | gather of {x['peers']} messages: one by one / concurrent | "
                         f"{x['gather_sequential_s']:.2f} s / {x['gather_concurrent_s']:.2f} s |")
    if sc := load("scaling"):
        big = list(sc["results"])[-1]
        x = sc["results"][big]
        lines.append(f"| scaling | validator time per window at {big} peers | {x['validator_max_s']:.1f} s "
                     f"(max) of a {sc['window_budget_s']:.0f} s window |")
    if bw := load("bandwidth"):
        if "goal_met" in bw:
            lines.append(f"| bandwidth (1B, 256 peers) | validator upload per window, now / before | "
                         f"{_bytes(bw['validator_upload_bytes_per_window'])} / "
                         f"{_bytes(bw['validator_upload_bytes_per_window_before'])} |")
    if st := load("state_save"):
        lines.append(f"| local state ({st['model']}) | peak memory while saving / the tensors held | "
                     f"{st['peak_rss_mb']:,.0f} MB / {st['held_mb']:,.0f} MB ({st['peak_over_held']:.2f}×) |")
    if a := load("adversaries"):
        with_, without = a["lockstep"], a["lockstep_no_adversaries"]
        lines.append(f"| adversaries (lockstep) | final loss with the 9 default adversaries / without; their messages "
                     f"aggregated after the first list | {with_['final_loss']:.3f} / {without['final_loss']:.3f}; "
                     f"{with_['adversary_messages_aggregated']} |")
    if v := load("validators"):
        d = v["dividends_per_stake"]
        lines.append(f"| validators | free-rider's / honest peers' share of the tokens; copier's dividends per "
                     f"stake, commit-reveal off / on | {v['free_rider_token_share']:.2%} / "
                     f"{v['honest_token_share']:.1%}; {d['copier_cr_off']:.4f} / {d['copier_cr_on']:.4f} |")
    return lines + [""]


def validators_section() -> list[str]:
    v = load("validators")
    if not v:
        return ["Validators: not run (`python benchmarks/validators.py`).", ""]
    d = v["dividends_per_stake"]
    honest = ", ".join(f"{k} {x:.4f}" for k, x in d.items() if k.startswith("honest"))
    lines = [f"Validators (`python benchmarks/validators.py`): the default peers and adversaries (`tiny`, "
             f"{v['windows']} windows, seed {v['seed']}) scored by {', '.join(v['validators'])} (relative stakes), "
             f"commit-reveal off and on. {stamp(v)}.", "",
             "| measure | commit-reveal off | commit-reveal on |", "|---|---|---|"]
    off, on = v["commit_reveal_off"], v["commit_reveal_on"]
    for label, key, fmt in (("free-rider's share of the miners' tokens", "free_rider_token_share", "{:.2%}"),
                            ("honest peers' share", "honest_token_share", "{:.1%}"),
                            ("rank correlation of the honest validators' weights", "honest_validator_rank_correlation",
                             "{:.3f}"), ("final loss", "final_loss", "{:.3f}"), ("wall time (s)", "wall_s", "{:.0f}")):
        lines.append(f"| {label} | {fmt.format(off[key])} | {fmt.format(on[key])} |")
    for name in off["dividends_per_stake"]:
        lines.append(f"| {name}: tokens per unit of stake | {off['dividends_per_stake'][name]:.4f} | "
                     f"{on['dividends_per_stake'][name]:.4f} |")
    return lines + ["", f"Dividends per unit of stake (commit-reveal off): {honest}; colluder {d['colluder']:.4f}; "
                        f"weight copier {d['copier_cr_off']:.4f}, with commit-reveal {d['copier_cr_on']:.4f}.", ""]


def adversaries_section() -> list[str]:
    a = load("adversaries")
    if not a:
        return ["Adversaries: not run (`python benchmarks/adversaries.py`).", ""]
    runs = [("lockstep, 9 default adversaries", a["lockstep"]), ("lockstep, none", a["lockstep_no_adversaries"])]
    runs += [("live, 9 default adversaries", a["live"])] if "live" in a else []
    lines = [f"Adversaries (`python benchmarks/adversaries.py [--live]`): the default simulation (5 honest peers, "
             f"`tiny`, {a['windows']} windows, seed {a['seed']}) with and without its adversaries. {stamp(a)}.", "",
             "| run | loss | honest share | largest adversary weight | first list | adversary messages aggregated "
             "(after it / in all) | windows with a late list | wall |", "|---|---|---|---|---|---|---|---|"]
    for name, r in runs:
        lines.append(f"| {name} | {r['first_loss']:.3f} → {r['final_loss']:.3f} | {r['honest_weight_share']:.1%} | "
                     f"{r['max_adversary_weight']:.4f} | window {r['first_list_window']} | "
                     f"{r['adversary_messages_aggregated']} / {r['adversary_messages_aggregated_total']} | "
                     f"{r['windows_list_late']} | {r['wall_s']:.0f} s |")
    return lines + ["", f"The adversaries cost the shared model {a['lockstep_loss_cost']:+.3f} nats of final loss "
                        "in lockstep.", ""]


def render(plots: bool = True) -> str:
    conv = load("convergence")
    lines = [BEGIN, "", "Every figure below comes from `benchmarks/results/*.json` (each stamped with its machine and "
             "date); `python benchmarks/report.py` rewrites this block and the plots.", ""]
    lines += glance(conv)
    if conv:
        lines += report_convergence.section(conv, stamp(conv))
        if plots:
            report_convergence.plot(conv, RESULTS / "convergence.png")
    else:
        lines += ["Convergence: not run (`python benchmarks/convergence.py`).", ""]
    lines += codec_section() + validator_section() + storage_section()
    if plots and (sc := load("scaling")):
        plot_scaling(sc)
    lines += scaling_section() + sharded_section() + state_save_section() + bandwidth_section() + adversaries_section() + validators_section()
    return "\n".join(lines).rstrip() + "\n\n" + END


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--print", action="store_true",
                    help="print the Markdown block; edit neither README.md nor the plots")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args()
    block = render(plots=not args.print)
    if args.print:
        print(block)
        return
    text = args.readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{args.readme} has no results markers; add the lines\n{BEGIN}\n{END}\nwhere the block belongs")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    args.readme.write_text(pattern.sub(lambda _: block, text, count=1))
    print(f"updated {args.readme} and the plots in {RESULTS}")


if __name__ == "__main__":
    main()
