"""Reproduce the paper's selection and deactivation results on Gemma 3 270M (its model card).

Steps, each written to ``--out`` as soon as it is done (so a stopped run keeps what it finished):

1. Statistics on the handbook's train split, ``--tokens`` tokens per language, collected as two
   disjoint halves (``split_corpus``): the two halves give the split-half stability of the 1%
   set, and their sum is the full statistics (the same windows, counted once).
2. Selection at 1%, 2% and 5% with the paper's thresholds: counts per language, the layer
   distribution (bottom, middle and top thirds, and a figure), and the overlaps between languages.
3. Perplexity under deactivation on the held-out split (``--eval-tokens`` tokens per language):
   at every budget, LAPE against ``--n-random`` matched random sets; at 1% also the paper's LAP
   and LAVE selectors. NLL change and perplexity ratio are both written.

Usage::

    python scripts/reproduce_gemma.py --out benchmarks/results/2026-12-02-gemma-3-270m
"""

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

import tl_lape
from tl_lape.experiments.analysis import StabilityReport, split_corpus, split_half_jaccard
from tl_lape.experiments.evaluation import run_evaluation
from tl_lape.experiments.reports import format_summary
from tl_lape.plots import plot_neurons_per_layer, plot_overlap
from tl_lape.sources.corpora import load_debian_handbook

BUDGETS = (0.01, 0.02, 0.05)


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", flush=True)


def _layer_table(neurons: tl_lape.LanguageNeurons) -> str:
    per_layer = neurons.counts_per_layer()  # lang n_layers
    union = neurons.union().sum(dim=-1)  # n_layers
    header = "| layer | " + " | ".join(neurons.languages) + " | union |"
    lines = [header, "| ---: |" + " ---: |" * (len(neurons.languages) + 1)]
    for layer in range(neurons.n_layers):
        cells = " | ".join(str(int(per_layer[k, layer])) for k in range(len(neurons.languages)))
        lines.append(f"| {layer} | {cells} | {int(union[layer])} |")
    return "\n".join(lines)


def _ratio_table(report: Any) -> str:
    """Perplexity ratio (deactivated / clean) of LAPE and the mean of the random draws."""
    lape = report.lape
    ratio = lape.perplexity_ratio  # deact lang
    langs = list(lape.languages)
    lines = ["| deactivated | " + " | ".join(langs) + " |", "| --- |" + " ---: |" * len(langs)]
    for i, row_lang in enumerate(lape.deactivated):
        cells = []
        for j, col in enumerate(langs):
            cell = f"{float(ratio[i, j]):.3f}"
            cells.append(f"**{cell}**" if col == row_lang else cell)
        lines.append(f"| {row_lang} | " + " | ".join(cells) + " |")
    if report.random:
        rand = torch.stack([m.perplexity_ratio for m in report.random]).mean(0)
        lines += ["", "Matched random sets (mean of draws), own language on the diagonal:", ""]
        lines += ["| deactivated | " + " | ".join(langs) + " |"]
        lines += ["| --- |" + " ---: |" * len(langs)]
        for i, row_lang in enumerate(lape.deactivated):
            cells = [f"{float(rand[i, j]):.3f}" for j in range(len(langs))]
            lines.append(f"| {row_lang} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _collect_and_select(
    model: Any, train: Any, args: argparse.Namespace, timings: dict[str, float]
) -> tuple[tl_lape.ActivationStats, dict[str, Any]]:
    """Steps 1 and 2: statistics as two halves, stability, and the selection at each budget."""
    # 1. statistics, as two halves
    t0 = time.perf_counter()
    halves = split_corpus(train, seed=0)
    half_stats = [
        tl_lape.collect_activation_stats(
            model,
            half,
            seq_len=args.seq_len,
            max_tokens_per_language=args.tokens // 2,
            prepend_bos=True,
            progress=False,
        )
        for half in halves
    ]
    stats = half_stats[0] + half_stats[1]
    timings["collect_s"] = time.perf_counter() - t0
    stats.save(args.out / "stats.safetensors")
    half_sets = [tl_lape.identify_language_neurons(s) for s in half_stats]
    a, b = half_sets
    stability = StabilityReport(
        a.languages,
        split_half_jaccard(a, b),
        torch.tensor([a.counts()[lang] for lang in a.languages]),
        torch.tensor([b.counts()[lang] for lang in b.languages]),
        {"top_rate": 0.01, "max_tokens_per_language": args.tokens // 2, "seed": 0},
    )
    _write(args.out / "stability.md", stability.to_markdown())

    # 2. selection at every budget
    summary: dict[str, Any] = {
        "model": args.model,
        "dtype": args.dtype,
        "train_tokens_per_language": dict(
            zip(stats.languages, (int(n) for n in stats.n_tokens), strict=True)
        ),
        "split_half_jaccard": dict(
            zip(stability.languages, (float(j) for j in stability.jaccard), strict=True)
        ),
        "budgets": {},
    }
    for rate in BUDGETS:
        neurons = tl_lape.identify_language_neurons(stats, top_rate=rate)
        tag = f"{round(rate * 100)}pct"
        neurons.save(args.out / f"neurons_{tag}.json")
        plot_neurons_per_layer(neurons).savefig(args.out / f"neurons_per_layer_{tag}.png", dpi=110)
        plot_overlap(neurons).savefig(args.out / f"overlap_{tag}.png", dpi=110)
        text = f"## Selection at top_rate={rate}\n\n{format_summary(neurons, stats=stats)}\n\n"
        text += f"Per layer:\n\n{_layer_table(neurons)}\n"
        _write(args.out / f"selection_{tag}.md", text)
        summary["budgets"][tag] = {"counts": neurons.counts(), "union": int(neurons.union().sum())}
    _write(args.out / "summary.json", json.dumps(summary, indent=1))
    return stats, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder")
    parser.add_argument("--model", default="gemma-3-270m", help="model for tl_lape.load_model")
    parser.add_argument("--tokens", type=int, default=8192, help="train tokens per language")
    parser.add_argument("--eval-tokens", type=int, default=512, help="held-out tokens/language")
    parser.add_argument("--n-random", type=int, default=3, help="matched random draws")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per window")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--evaluate-budgets",
        default="0.01,0.02,0.05",
        help="budgets to evaluate (comma-separated); with --resume, the others are kept",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse --out's stats.safetensors, stability.md and summary.json (steps 1-2) and "
        "evaluate only --evaluate-budgets",
    )
    args = parser.parse_args()
    evaluate_budgets = tuple(float(v) for v in args.evaluate_budgets.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    model = tl_lape.load_model(args.model, device="cpu", dtype=getattr(torch, args.dtype))
    timings["load_model_s"] = time.perf_counter() - t0
    train = load_debian_handbook(split="train")
    heldout = load_debian_handbook(split="heldout")

    if args.resume:
        stats = tl_lape.ActivationStats.load(args.out / "stats.safetensors")
        summary: dict[str, Any] = json.loads((args.out / "summary.json").read_text())
        timings.update(summary.get("timings", {}))
    else:
        stats, summary = _collect_and_select(model, train, args, timings)
    sets = {rate: tl_lape.identify_language_neurons(stats, top_rate=rate) for rate in BUDGETS}

    # 3. deactivation at every budget (LAP and LAVE at 1%)
    for rate in evaluate_budgets:
        tag = f"{round(rate * 100)}pct"
        t0 = time.perf_counter()
        report = run_evaluation(
            model,
            sets[rate],
            heldout,
            stats=stats,
            n_random=args.n_random,
            selectors=("lap", "lave") if rate == BUDGETS[0] else (),
            seq_len=args.seq_len,
            max_tokens_per_language=args.eval_tokens,
            progress=False,
        )
        timings[f"evaluate_{tag}_s"] = time.perf_counter() - t0
        (args.out / f"evaluation_{tag}.json").write_text(json.dumps(report.to_dict(), indent=1))
        for name, fig in report.figures().items():
            fig.savefig(args.out / f"{name}_{tag}.png", dpi=110)
        text = f"## Deactivation at top_rate={rate}\n\n{report.to_markdown()}\n"
        text += f"### Perplexity ratio (deactivated / clean)\n\n{_ratio_table(report)}\n"
        _write(args.out / f"evaluation_{tag}.md", text)
        summary["budgets"][tag]["evaluation"] = report.summary()
        summary["budgets"][tag]["n_random"] = args.n_random
        summary["budgets"][tag]["eval_tokens_per_language"] = args.eval_tokens
        summary["heldout_nll"] = dict(
            zip(report.lape.languages, (float(x) for x in report.lape.baseline), strict=True)
        )
        summary["timings"] = {**timings, "total_s": time.perf_counter() - started}
        summary["machine"] = {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        }
        _write(args.out / "summary.json", json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
