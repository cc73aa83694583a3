"""The steering study (issue 12) on Gemma 3 270M: LAPE against random sets, DiffMean and prompting.

Steps:

1. Firing statistics and per-language residual means on the handbook's train split, in one
   streaming pass (``collect_activation_stats(..., residual_means=True)``), ``--tokens`` tokens
   per language.
2. :func:`tl_lape.experiments.steering_study.run_steering_study`: a sweep on the development prompts
   (English, neutral and handbook-content prompts), then the chosen configuration of each method
   on fresh prompts, judged by py3langid and lingua, fluency (the unsteered model's NLL against
   held-out natural text, repetition) and content (chrF against the own translation minus chrF
   against other paragraphs).
3. The report folder: ``study.md``, ``study.json``, one figure per setting.

Usage::

    python scripts/steer_gemma.py --out benchmarks/results/2026-12-02-gemma-steering
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import tl_lape
from tl_lape.collection.engine import collect_activation_stats
from tl_lape.collection.residual_means import ResidualMeans
from tl_lape.experiments.steering_study import run_steering_study
from tl_lape.sources.corpora import load_debian_handbook, load_handbook_parallel


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder")
    parser.add_argument("--model", default="gemma-3-270m", help="model for tl_lape.load_model")
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: fastest)")
    parser.add_argument("--tokens", type=int, default=8192, help="train tokens per language")
    parser.add_argument("--top-rates", default="0.01,0.02,0.05", help="LAPE budgets swept")
    parser.add_argument("--replace", default="1,2,3", help="replace strengths swept")
    parser.add_argument("--add", default="1,2,4", help="add strengths swept")
    parser.add_argument("--scale", default="2,4", help="scale strengths swept")
    parser.add_argument("--deactivate", default="none,others", help="other languages off?")
    parser.add_argument("--diffmean-layers", default=None, help="DiffMean layers swept")
    parser.add_argument("--diffmean-strengths", default="0.5,1,2", help="DiffMean strengths")
    parser.add_argument("--n-content", type=int, default=8, help="content items per phase")
    parser.add_argument("--n-random", type=int, default=3, help="random draws (fresh prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=192, help="rows per generation batch")
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    dtype = getattr(torch, args.dtype) if args.dtype else None

    t0 = time.perf_counter()
    model = tl_lape.load_model(args.model, device="cpu", dtype=dtype)
    load_s = time.perf_counter() - t0
    train = load_debian_handbook(split="train")
    heldout = load_debian_handbook(split="heldout")
    parallel = load_handbook_parallel(split="heldout")
    args.out.mkdir(parents=True, exist_ok=True)
    stats_path, means_path = args.out / "stats.safetensors", args.out / "residual_means.safetensors"
    t0 = time.perf_counter()
    reuse = stats_path.is_file() and means_path.is_file()
    if reuse:
        stats, means = tl_lape.ActivationStats.load(stats_path), ResidualMeans.load(means_path)
        wanted = {"max_tokens_per_language": args.tokens, "prepend_bos": True}
        found = {k: stats.metadata.get(k) for k in wanted}
        if found != wanted or means.metadata.get("model_name") != stats.metadata.get("model_name"):
            raise SystemExit(
                f"{args.out} holds statistics of other settings ({found}, model "
                f"{stats.metadata.get('model_name')!r}); delete them or choose another --out"
            )
    else:
        stats, means = collect_activation_stats(
            model,
            train,
            max_tokens_per_language=args.tokens,
            prepend_bos=True,
            progress=False,
            residual_means=True,
        )
        stats.save(stats_path)
        means.save(means_path)
    collect_s = time.perf_counter() - t0
    print(f"loaded in {load_s:.0f} s, statistics in {collect_s:.0f} s", flush=True)

    strengths = {
        mode: _floats(getattr(args, mode))
        for mode in ("replace", "add", "scale")
        if _floats(getattr(args, mode))
    }
    study = run_steering_study(
        model,
        stats,
        means,
        reference_corpus=heldout,
        parallel=parallel,
        n_content=args.n_content,
        top_rates=_floats(args.top_rates),
        strengths=strengths,
        deactivate=tuple(args.deactivate.split(",")),
        diffmean_layers=(
            [int(v) for v in args.diffmean_layers.split(",")] if args.diffmean_layers else None
        ),
        diffmean_strengths=_floats(args.diffmean_strengths),
        n_random=args.n_random,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    study.metadata.update(
        {
            "dtype": str(next(model.parameters()).dtype),
            "train_tokens_per_language": args.tokens,
            "parallel_items": len(parallel),
            "load_s": round(load_s, 1),
            "collect_s": round(collect_s, 1),
            "total_s": round(time.perf_counter() - started, 1),
            "machine": f"{platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads",
            "command": "python scripts/steer_gemma.py "
            + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None
            ),
        }
    )
    study.save(args.out / "study")
    print(json.dumps(study.chosen, indent=1))
    print(study.to_markdown())


if __name__ == "__main__":
    main()
