"""Is it the language, or just strong neurons? LAPE against its nearest activity-matched set.

The reproduction's random sets (``scripts/reproduce_gemma.py``, ``control="activity"``, pool
10) match LAPE's firing rate to within 0.03 but fall 0.02-0.23 below its mean activation on the
target language. This script evaluates, on the same held-out windows and scored positions, the
single set that takes each LAPE neuron's *nearest* unselected neuron of the same layer in
firing rate and mean activation (``pool=1``), and reports LAPE's selectivity minus that set's,
paired, with its bootstrap interval. One set gives no p-value: this is a sensitivity check
beside the 20 draws, not a replacement for them.

Reads ``stats.safetensors`` and ``neurons_<b>pct.json`` from ``--folder`` (a corpus folder of the
reproduction) and writes ``nearest_<b>pct.json`` (every window's NLL sums) and
``nearest_<b>pct.md`` there.

Usage::

    python scripts/nearest_control.py --corpus libreoffice --budget 0.01 \\
        --folder benchmarks/results/2026-12-04-gemma-reproduction/libreoffice
"""

import argparse
import time
from pathlib import Path

import torch

import tl_lape
from tl_lape.experiments.evaluation import run_evaluation
from tl_lape.formats import json_text, parse_json
from tl_lape.sources.corpora import load_corpus
from tl_lape.sources.models import cpu_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, required=True, help="a reproduction corpus folder")
    parser.add_argument("--corpus", required=True, choices=("handbook", "libreoffice"))
    parser.add_argument("--budget", type=float, default=0.01)
    parser.add_argument("--model", default="gemma-3-270m")
    args = parser.parse_args()
    tag = f"{round(args.budget * 100)}pct"
    summary_path = args.folder / "summary.json"
    summary = parse_json(summary_path.read_bytes(), where=str(summary_path), advice="rerun")
    settings = summary["settings"]
    stats = tl_lape.ActivationStats.load(args.folder / "stats.safetensors")
    neurons = tl_lape.LanguageNeurons.load(args.folder / f"neurons_{tag}.json")
    torch.manual_seed(0)
    started = time.perf_counter()
    model = tl_lape.load_model(args.model, device="cpu", dtype=torch.float32)
    report = run_evaluation(
        model,
        neurons,
        load_corpus(args.corpus, split="heldout"),
        stats=stats,
        n_random=1,
        control="activity",
        pool=1,
        selectors=(),
        seq_len=settings["seq_len"],
        max_tokens_per_language=settings["eval_tokens"],
        positions_per_window=settings["positions_per_window"],
        progress=True,
    )
    data = report.to_dict()
    data["metadata"]["run"] = {"seconds": time.perf_counter() - started, "machine": cpu_info()}
    (args.folder / f"nearest_{tag}.json").write_text(json_text(data), encoding="utf-8")
    (args.folder / f"nearest_{tag}.md").write_text(
        f"## LAPE against its nearest activity-matched set, top_rate={args.budget} "
        f"({args.corpus})\n\n{report.to_markdown()}\n",
        encoding="utf-8",
    )
    print(f"wrote {args.folder}/nearest_{tag}.json and .md")


if __name__ == "__main__":
    main()
