"""Reproduce the paper's selection and deactivation results on Gemma 3 270M, with intervals.

Steps, each written to ``--out`` as soon as it is done (so a stopped run keeps what it finished):

1. Statistics on the corpus' train split, ``--tokens`` tokens per language, collected in
   ``--shards`` disjoint parts (``collect_shards``; kept in ``--cache``, not in ``--out``); their
   sum is the statistics (``stats.safetensors``).
2. Selection stability at 1%, 2% and 5%: ``bootstrap_selection`` over the shards (each
   neuron's selection frequency, each language's expected Jaccard to itself) ->
   ``stability_<b>pct.{json,md}``.
3. Selection at 1%, 2% and 5% with the paper's thresholds: counts per language, the layer
   distribution, the overlaps -> ``selection_<b>pct.md``, ``neurons_<b>pct.json`` and figures.
4. Perplexity under deactivation on the held-out split (``--eval-tokens`` tokens per language)
   at each of ``--evaluate-budgets``: LAPE against ``--n-random`` random sets matched on
   ``--control`` (default: layer, size, firing rate and mean activation), and LAP and LAVE at
   each language's LAPE size, all on the same windows, with paired bootstrap intervals over
   windows (clustered by document) and empirical p-values against the random draws. Every
   window's NLL sums are in ``evaluation_<b>pct.json``.

``summary.json`` holds the settings, per evaluated budget the held-out NLL per language (the
no-intervention row), each step's time, the whole run's time and the machine. A later run into
the same folder (e.g. ``--evaluate-budgets 0.02``) keeps the earlier runs' evaluations of other
budgets, with their settings, machine and times under ``earlier_runs``; it refuses if its
selection differs from theirs.

Usage::

    python scripts/reproduce_gemma.py --corpus handbook \\
        --out benchmarks/results/2026-12-04-gemma-reproduction/handbook
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import tl_lape
from tl_lape.experiments.analysis import bootstrap_selection, collect_shards
from tl_lape.experiments.evaluation import run_evaluation
from tl_lape.experiments.reports import format_summary
from tl_lape.formats import json_text, parse_json
from tl_lape.neurons import DEFAULT_POOL
from tl_lape.plots import plot_neurons_per_layer, plot_overlap
from tl_lape.sources.corpora import load_corpus
from tl_lape.sources.models import cpu_info

BUDGETS = (0.01, 0.02, 0.05)


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", flush=True)


def _tag(rate: float) -> str:
    return f"{round(rate * 100)}pct"


def _layer_table(neurons: tl_lape.LanguageNeurons) -> str:
    per_layer = neurons.counts_per_layer()  # lang n_layers
    union = neurons.union().sum(dim=-1)  # n_layers
    header = "| layer | " + " | ".join(neurons.languages) + " | union |"
    lines = [header, "| ---: |" + " ---: |" * (len(neurons.languages) + 1)]
    for layer in range(neurons.n_layers):
        cells = " | ".join(str(int(per_layer[k, layer])) for k in range(len(neurons.languages)))
        lines.append(f"| {layer} | {cells} | {int(union[layer])} |")
    return "\n".join(lines)


def _statistics(model: Any, args: argparse.Namespace, timings: dict[str, float]) -> Any:
    """Step 1: the shards (reused from --cache when complete) and their sum."""
    cache = args.cache / args.corpus
    paths = [cache / f"shard{i}.safetensors" for i in range(args.shards)]
    if all(p.exists() for p in paths):
        shards = [tl_lape.ActivationStats.load(p) for p in paths]
        print(f"reused {len(paths)} shards from {cache}", flush=True)
    else:
        t0 = time.perf_counter()
        train = load_corpus(args.corpus, split="train")
        shards = collect_shards(
            model,
            train,
            n_shards=args.shards,
            seed=0,
            max_tokens_per_language=args.tokens,
            seq_len=args.seq_len,
            prepend_bos=True,
            progress=False,
        )
        timings["collect_s"] = time.perf_counter() - t0
        cache.mkdir(parents=True, exist_ok=True)
        for shard, path in zip(shards, paths, strict=True):
            shard.save(path)
    stats = sum(shards[1:], start=shards[0])
    stats.save(args.out / "stats.safetensors")
    return shards, stats


def _earlier(out: Path, summary: dict[str, Any], evaluated: tuple[str, ...]) -> None:
    """Keep an earlier run's evaluations of budgets this run does not evaluate."""
    path = out / "summary.json"
    if not path.exists():
        return
    before = parse_json(path.read_bytes(), where=str(path), advice="delete it to start afresh")
    runs = list(before.get("earlier_runs", []))
    runs.append({k: before[k] for k in ("settings", "machine", "timings") if k in before})
    summary["earlier_runs"] = runs
    for tag, entry in before.get("budgets", {}).items():
        if tag in evaluated or "evaluation" not in entry:
            continue
        now = summary["budgets"].get(tag, {})
        if (now.get("counts"), now.get("union")) != (entry.get("counts"), entry.get("union")):
            raise SystemExit(
                f"{path}: the earlier run selected {entry.get('counts')} at {tag}, this run "
                f"{now.get('counts')}; use a new --out (the settings or statistics differ)"
            )
        now.update({k: v for k, v in entry.items() if k not in ("counts", "union")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder")
    parser.add_argument("--corpus", default="handbook", choices=("handbook", "libreoffice"))
    parser.add_argument("--model", default="gemma-3-270m", help="model for tl_lape.load_model")
    parser.add_argument("--tokens", type=int, default=8192, help="train tokens per language")
    parser.add_argument("--shards", type=int, default=8, help="statistics shards")
    parser.add_argument("--selection-boot", type=int, default=200, help="stability replicates")
    parser.add_argument("--eval-tokens", type=int, default=1024, help="held-out tokens/language")
    parser.add_argument("--n-random", type=int, default=20, help="matched random draws")
    parser.add_argument("--control", default="activity", choices=("layer", "activity"))
    parser.add_argument(
        "--pool", type=int, default=DEFAULT_POOL, help="candidates per activity-matched draw"
    )
    parser.add_argument("--positions-per-window", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per window")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--evaluate-budgets", default="0.01", help="comma-separated budgets")
    parser.add_argument("--cache", type=Path, default=Path(".cache/reproduce"))
    args = parser.parse_args()
    evaluate_budgets = tuple(float(v) for v in args.evaluate_budgets.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {
        "model": args.model,
        "corpus": args.corpus,
        "dtype": args.dtype,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": cpu_info(),
        "budgets": {},
    }

    def save_summary() -> None:
        summary["timings"] = {**timings, "total_s": time.perf_counter() - started}
        _write(args.out / "summary.json", json_text(summary))

    t0 = time.perf_counter()
    model = tl_lape.load_model(args.model, device="cpu", dtype=getattr(torch, args.dtype))
    timings["load_model_s"] = time.perf_counter() - t0

    shards, stats = _statistics(model, args, timings)
    summary["train_tokens_per_language"] = dict(
        zip(stats.languages, (int(n) for n in stats.n_tokens), strict=True)
    )

    # 2. stability of the selection at every budget
    t0 = time.perf_counter()
    for rate in BUDGETS:
        tag = _tag(rate)
        stability = bootstrap_selection(shards, n_boot=args.selection_boot, seed=0, top_rate=rate)
        _write(args.out / f"stability_{tag}.json", json_text(stability.to_dict()))
        _write(args.out / f"stability_{tag}.md", stability.to_markdown())
        summary[f"stability_{tag}"] = {
            lang: row["expected_self_jaccard"]
            for lang, row in stability.to_dict()["per_language"].items()
        }
    timings["stability_s"] = time.perf_counter() - t0

    # 3. selection at every budget
    sets = {}
    for rate in BUDGETS:
        neurons = tl_lape.identify_language_neurons(stats, top_rate=rate)
        sets[rate] = neurons
        tag = _tag(rate)
        neurons.save(args.out / f"neurons_{tag}.json")
        plot_neurons_per_layer(neurons).savefig(args.out / f"neurons_per_layer_{tag}.png", dpi=110)
        plot_overlap(neurons).savefig(args.out / f"overlap_{tag}.png", dpi=110)
        text = f"## Selection at top_rate={rate}\n\n{format_summary(neurons, stats=stats)}\n\n"
        text += f"Per layer:\n\n{_layer_table(neurons)}\n"
        _write(args.out / f"selection_{tag}.md", text)
        summary["budgets"][tag] = {"counts": neurons.counts(), "union": int(neurons.union().sum())}
    _earlier(args.out, summary, tuple(_tag(rate) for rate in evaluate_budgets))
    save_summary()

    # 4. deactivation at the evaluated budgets
    heldout = load_corpus(args.corpus, split="heldout")
    for rate in evaluate_budgets:
        tag = _tag(rate)
        t0 = time.perf_counter()
        report = run_evaluation(
            model,
            sets[rate],
            heldout,
            stats=stats,
            n_random=args.n_random,
            control=args.control,
            pool=args.pool,
            selectors=("lap", "lave"),
            selector_sizes="language",
            seq_len=args.seq_len,
            max_tokens_per_language=args.eval_tokens,
            positions_per_window=args.positions_per_window,
            progress=True,
        )
        timings[f"evaluate_{tag}_s"] = time.perf_counter() - t0
        _write(args.out / f"evaluation_{tag}.json", json_text(report.to_dict()))
        for name, fig in report.figures().items():
            fig.savefig(args.out / f"{name}_{tag}.png", dpi=110)
        _write(
            args.out / f"evaluation_{tag}.md",
            f"## Deactivation at top_rate={rate} ({args.corpus})\n\n{report.to_markdown()}\n",
        )
        summary["budgets"][tag]["evaluation"] = report.summary()
        summary["budgets"][tag]["n_random"] = args.n_random
        summary["budgets"][tag]["pool"] = args.pool
        summary["budgets"][tag]["eval_tokens_per_language"] = args.eval_tokens
        # The no-intervention row of this budget's windows (the same windows at every budget).
        summary["budgets"][tag]["heldout_nll"] = dict(
            zip(report.lape.languages, (float(x) for x in report.lape.baseline), strict=True)
        )
        save_summary()
    print(json.dumps(summary["timings"]), flush=True)


if __name__ == "__main__":
    main()
