#!/usr/bin/env python
"""Benchmark: scoring every position against a seeded subset, side by side in one run.

:func:`tl_lape.judging.nll.window_nll` scores every position of a window from the model's full
logits (``positions_per_window=None``), or, with ``positions_per_window=k``, runs the model to
the final norm's output only and unembeds ``k`` positions per window. On a large vocabulary
the unembedding is most of the forward pass (Gemma 3 270M: 168M of 270M multiply-adds per
token), so the subset is cheaper per window, but it measures fewer tokens per window. This
script puts a number on both sides, per model:

- wall time per window and tokens scored per second, full against subsampled, for a clean row
  and for a row under one deactivation (one language's LAPE neurons);
- the NLL rise of that deactivation (deactivated minus clean mean NLL per scored token) with
  its paired 95% bootstrap interval over windows (:func:`tl_lape.intervals.bootstrap_weights`,
  :func:`tl_lape.intervals.percentile_interval`; clean and deactivated rows share the weights
  and, subsampled, the positions), and the half-width reached per minute of compute:
  ``half_width * sqrt(seconds for both rows / 60)`` (a half-width shrinks as one over the root
  of the windows scored, so this is the half-width one minute of scoring would give);
  ``efficiency`` is ``(h_full^2 t_full) / (h_sub^2 t_sub)``: how many times less compute the
  subset needs for the same interval width.

Every round runs the four rows (full/subsampled x clean/deactivated) once, the order rotated
from round to round; times are medians over rounds, and full/subsampled ratios are paired per
round, which keeps a shared machine's load drifts out of the comparison.

Models: the shipped demo model (neurons selected here from statistics collected on the
handbook's train split, a few seconds), and Gemma 3 270M when ``tl_lape.load_model("gemma-3-270m")``
works offline (neurons: the 5% set of ``benchmarks/results/2026-12-02-gemma-3-270m``).
Windows: the handbook's held-out split, ``<bos>`` first.

Run from the repository root::

    .venv/bin/python benchmarks/bench_nll.py            # ~10 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_nll.py --quick    # demo model only, seconds

The full run writes ``results.json`` and ``README.md`` to
``benchmarks/results/2026-12-04-nll-subsampling/`` (``--output-dir`` to change it).
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tl_lape  # noqa: E402
from tl_lape.collection.windows import token_windows  # noqa: E402
from tl_lape.intervals import bootstrap_weights, percentile_interval  # noqa: E402
from tl_lape.interventions.hooks import deactivation_hooks  # noqa: E402
from tl_lape.judging.nll import window_nll  # noqa: E402
from tl_lape.sources.corpora import load_debian_handbook  # noqa: E402
from tl_lape.sources.models import cpu_info  # noqa: E402

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "2026-12-04-nll-subsampling"
GEMMA_NEURONS = REPO / "benchmarks" / "results" / "2026-12-02-gemma-3-270m" / "neurons_5pct.json"
ROWS = ("full_clean", "full_deact", "sub_clean", "sub_deact")


def demo_neurons(model: Any, lang: str, quick: bool) -> tl_lape.LanguageNeurons:
    train = load_debian_handbook(split="train")
    stats = tl_lape.collect_activation_stats(
        model,
        train,
        seq_len=256,
        max_tokens_per_language=2_048 if quick else 16_384,
        progress=False,
    )
    neurons = tl_lape.identify_language_neurons(stats)
    if not neurons.counts().get(lang):
        raise SystemExit(f"no {lang} neurons selected on the demo model")
    return neurons


def bench_model(
    label: str,
    model: Any,
    neurons: tl_lape.LanguageNeurons,
    lang: str,
    *,
    n_windows: int,
    seq_len: int,
    k: int,
    batch_size: int,
    rounds: int,
    n_boot: int,
    log: Any,
) -> dict[str, Any]:
    heldout = load_debian_handbook([lang], split="heldout")[lang]
    windows = token_windows(model, heldout, seq_len=seq_len, max_tokens=n_windows * seq_len)
    n = int(windows.shape[0])
    hooks = deactivation_hooks(neurons, [lang], model=model)
    # Warm-up (lazy initialisation, the readout check of the subsampled path), not timed.
    window_nll(model, windows[:1], batch_size=1)
    window_nll(model, windows[:1], batch_size=1, positions_per_window=k)

    def run(row: str) -> tuple[torch.Tensor, torch.Tensor]:
        kwargs: dict[str, Any] = {"batch_size": batch_size, "per_window": True}
        if row.startswith("sub"):
            kwargs.update(positions_per_window=k, seed=0)
        if row.endswith("deact"):
            kwargs["fwd_hooks"] = hooks
        return window_nll(model, windows, **kwargs)

    times: dict[str, list[float]] = {row: [] for row in ROWS}
    results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for r in range(rounds):
        order = ROWS[r % len(ROWS) :] + ROWS[: r % len(ROWS)]
        for row in order:
            start = time.perf_counter()
            results[row] = run(row)
            times[row].append(time.perf_counter() - start)
            log(f"{label} round {r} {row}: {times[row][-1]:.1f} s")

    def median(row: str) -> float:
        return statistics.median(times[row])

    scored = {"full": n * (seq_len - 1), "sub": n * min(k, seq_len - 1)}
    rows_out = {
        row: {
            "median_s": median(row),
            "s_per_window": median(row) / n,
            "tokens_scored": scored[row.split("_")[0]],
            "tokens_scored_per_s": scored[row.split("_")[0]] / median(row),
            "windows_per_s": n / median(row),
            "seconds": times[row],
        }
        for row in ROWS
    }
    ratios = {
        f"time full/sub ({kind})": statistics.median(
            f / s for f, s in zip(times[f"full_{kind}"], times[f"sub_{kind}"], strict=True)
        )
        for kind in ("clean", "deact")
    }

    weights = bootstrap_weights(n, n_boot=n_boot, seed=0)  # boot window
    rise: dict[str, Any] = {}
    for mode in ("full", "sub"):
        clean_sums, counts = results[f"{mode}_clean"]
        deact_sums, deact_counts = results[f"{mode}_deact"]
        assert torch.equal(counts, deact_counts)
        c = counts.to(torch.float64)
        point = float((deact_sums.sum() - clean_sums.sum()) / c.sum())
        reps = (weights @ deact_sums - weights @ clean_sums) / (weights @ c)  # boot
        est = percentile_interval(reps, point=point, n_units=n)
        seconds = median(f"{mode}_clean") + median(f"{mode}_deact")
        half = est.half_width
        rise[mode] = {
            "estimate": est.to_dict(),
            "half_width": half,
            "seconds_both_rows": seconds,
            "half_width_per_minute": None if half is None else half * math.sqrt(seconds / 60),
            "clean_nll_per_token": float(clean_sums.sum() / c.sum()),
            "deact_nll_per_token": float(deact_sums.sum() / c.sum()),
        }
    hf, hs = rise["full"]["half_width"], rise["sub"]["half_width"]
    efficiency = None
    if hf and hs:
        efficiency = (hf**2 * rise["full"]["seconds_both_rows"]) / (
            hs**2 * rise["sub"]["seconds_both_rows"]
        )
    return {
        "model": label,
        "d_vocab": int(model.cfg.d_vocab),
        "d_model": int(model.cfg.d_model),
        "n_layers": int(model.cfg.n_layers),
        "language": lang,
        "deactivated_neurons": int(neurons.counts()[lang]),
        "n_windows": n,
        "seq_len": seq_len,
        "positions_per_window": k,
        "batch_size": batch_size,
        "rounds": rounds,
        "rows": rows_out,
        "ratios": ratios,
        "rise": rise,
        "efficiency_full_over_sub": efficiency,
    }


def render(result: dict[str, Any]) -> str:
    cpu = result["cpu"]
    lines = [
        f"# NLL scoring: every position against a seeded subset ({result['date']})",
        "",
        f"CPU: {cpu['model_name']}; avx512_bf16 {cpu['avx512_bf16']}, amx_tile {cpu['amx_tile']}, "
        f"amx_bf16 {cpu['amx_bf16']}; {cpu['logical_cpus']} logical CPUs shared with other "
        f"jobs (load average {result['load_average_start']} at the start, "
        f"{result['load_average_end']} at the end), {cpu['torch_threads']} torch threads, "
        f"torch {cpu['torch']} ({cpu['torch_cpu_capability']}), float32. Absolute times move "
        "with the other jobs on the machine; the full/subsampled ratios are paired per round.",
        "",
    ]
    for m in result["models"]:
        if "skipped" in m:
            lines += [f"## {m['model']}: skipped", "", m["skipped"], ""]
            continue
        lines += [
            f"## {m['model']}",
            "",
            f"d_vocab {m['d_vocab']:,}, d_model {m['d_model']}, {m['n_layers']} layers. "
            f"{m['n_windows']} held-out {m['language']} windows of {m['seq_len']} tokens, batch "
            f"{m['batch_size']}, {m['rounds']} rounds; subsampled: {m['positions_per_window']} "
            f"of {m['seq_len'] - 1} positions per window (seed 0). Deactivation: the "
            f"{m['deactivated_neurons']} {m['language']} neurons.",
            "",
            "| row | s per window | tokens scored / s | windows / s |",
            "| --- | ---: | ---: | ---: |",
        ]
        for row, r in m["rows"].items():
            lines.append(
                f"| {row} | {r['s_per_window']:.3f} | {r['tokens_scored_per_s']:.0f} "
                f"| {r['windows_per_s']:.2f} |"
            )
        lines += ["", "| paired ratio (median over rounds) | value |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.2f} |" for k, v in m["ratios"].items()]
        lines += [
            "",
            "| NLL rise (nats/token) | estimate [95% CI] | half-width | s for both rows "
            "| half-width per minute |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for mode, r in m["rise"].items():
            est = tl_lape.intervals.Estimate.from_dict(r["estimate"])
            hw = "n/a" if r["half_width"] is None else f"{r['half_width']:.4f}"
            hpm = (
                "n/a" if r["half_width_per_minute"] is None else f"{r['half_width_per_minute']:.4f}"
            )
            lines.append(
                f"| {mode} | {est.format(4)} | {hw} | {r['seconds_both_rows']:.1f} | {hpm} |"
            )
        eff = m["efficiency_full_over_sub"]
        lines += [
            "",
            "Efficiency (compute the full path needs for the interval width the subset reaches, "
            "over the subset's): " + ("n/a" if eff is None else f"**{eff:.2f}x**") + ".",
            "",
        ]
    lines.append(f"Total benchmark time: {result['wall_seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="demo model, few windows")
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-gemma", action="store_true", help="skip Gemma 3 270M")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    output_dir = args.output_dir or (None if args.quick else DEFAULT_OUTPUT)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_info(),
        "platform": platform.platform(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "quick": args.quick,
        "models": [],
    }
    lang = "fr"
    n_boot = 500 if args.quick else 2000

    demo = tl_lape.load_demo_model()
    log("demo: collecting statistics for its neurons")
    result["models"].append(
        bench_model(
            "demo model (Llama-style, 4 layers)",
            demo,
            demo_neurons(demo, lang, args.quick),
            lang,
            n_windows=8 if args.quick else 24,
            seq_len=64 if args.quick else 256,
            k=8 if args.quick else 32,
            batch_size=8,
            rounds=args.rounds or (1 if args.quick else 2),
            n_boot=n_boot,
            log=log,
        )
    )
    del demo

    if not (args.quick or args.no_gemma):
        try:
            t0 = time.perf_counter()
            gemma = tl_lape.load_model("gemma-3-270m", device="cpu", dtype=torch.float32)
            load_s = time.perf_counter() - t0
        except Exception as err:
            result["models"].append({"model": "Gemma 3 270M", "skipped": f"not loadable: {err}"})
        else:
            hf_config = gemma.original_model.config
            entry = bench_model(
                "Gemma 3 270M",
                gemma,
                tl_lape.LanguageNeurons.load(GEMMA_NEURONS),
                lang,
                n_windows=12,
                seq_len=256,
                k=32,
                batch_size=8,
                rounds=args.rounds or 2,
                n_boot=n_boot,
                log=log,
            )
            entry["load_s"] = load_s
            entry["final_logit_softcapping"] = getattr(
                getattr(hf_config, "text_config", hf_config), "final_logit_softcapping", None
            )
            entry["output_logits_soft_cap"] = getattr(gemma.cfg, "output_logits_soft_cap", None)
            result["models"].append(entry)

    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_seconds"] = time.perf_counter() - start
    report = render(result)
    sys.stdout.write(report)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
        (output_dir / "README.md").write_text(report)
        log(f"wrote {output_dir}/results.json and README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
