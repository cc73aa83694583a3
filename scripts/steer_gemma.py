"""The steering study (issues 12, 21) on Gemma 3 270M: LAPE against norm-matched random controls,
DiffMean (one layer and CLaS-Bench's form), their combination, prompting and few-shot prompting.

Steps:

1. Firing statistics and per-language residual means on the handbook's train split, in one
   streaming pass (``collect_activation_stats(..., residual_means=True)``), ``--tokens`` tokens
   per language.
2. Prompts from held-out text (:func:`~tl_lape.experiments.steering_prompts.heldout_prompts`,
   the handbook's and the LibreOffice Help's held-out English): ``--n-dev`` development and
   ``--n-fresh`` fresh prompts per setting (English, neutral); content prompts from aligned
   paragraphs (:func:`~tl_lape.experiments.steering_prompts.parallel_items`: half the
   handbook's, half the LibreOffice Help's, alternating, so each mismatched prompt is of the
   same source), ``--n-content`` train items for development and as many held-out items fresh
   (a multiple of 4; the handbook's held-out split has 28 aligned paragraphs, so at most 56).
   Few-shot examples from the handbook's train split.
3. :func:`tl_lape.experiments.steering_study.run_steering_study`: every method (LAPE, DiffMean,
   CLaS) tries ``--dev-budget`` configurations by ``--halving-rounds`` rounds of successive
   halving on the same development prompts; dose-response curves at ``--doses``; the chosen
   configurations on the fresh prompts, at every ``--positions``, with norm-matched random
   controls.
4. The report folder: ``study.md``, ``study.json``, one figure per setting.

``--plan-only`` prints the number of generations the settings ask for, and the time they would
take at ``--seconds-per-generation``, without loading anything. The default, 0.30 s, is the
committed run's: 4,468 s of study for 14,940 planned generations of 24 tokens (15,660
outputs: the unsteered one is recorded once per target), with their judging and, on the fresh
content prompts, the content measure, on 2 cores in bfloat16
(``benchmarks/results/2026-12-04-gemma-steering-two-sources/README.md``). The earlier 0.39 s
included the content measure in every phase and the full unembedding
(``benchmarks/results/2026-12-04-gemma-steering-timing.md``).

Usage (the committed run, 76.2 min on 2 cores)::

    python scripts/steer_gemma.py --out benchmarks/results/2026-12-04-gemma-steering-two-sources \
        --dtype bfloat16 --dev-budget 6 --halving-rounds 3 --doses 0.5,2 --dose-prompts 3 \
        --n-dev 12 --n-content 48
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
from tl_lape.experiments.steering_prompts import (
    few_shot_examples,
    heldout_prompts,
    parallel_items,
    text_supply,
)
from tl_lape.experiments.steering_study import run_steering_study
from tl_lape.sources.corpora import (
    load_corpus,
    load_debian_handbook,
    load_handbook_parallel,
    load_libreoffice_parallel,
)

#: Methods with hooks in the fresh phase at the first positions, besides their random draws
#: (lape, diffmean, clas, combined), the random controls per draw (LAPE's, DiffMean's, CLaS's),
#: the methods repeated at every further positions, and the dose curves' methods.
_STEERING, _CONTROLS, _DOSE_METHODS = 4, 3, 7


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
    parser.add_argument("--diffmean-strengths", default="0.5,1,2,4", help="DiffMean strengths")
    parser.add_argument("--clas-strengths", default=None, help="CLaS alphas (default: scaled)")
    parser.add_argument("--n-content", type=int, default=48, help="content items per phase")
    parser.add_argument("--n-dev", type=int, default=16, help="development prompts per setting")
    parser.add_argument("--n-fresh", type=int, default=48, help="fresh prompts per setting")
    parser.add_argument("--n-random", type=int, default=1, help="random draws per control")
    parser.add_argument("--dev-budget", type=int, default=12, help="configurations per method")
    parser.add_argument("--halving-rounds", type=int, default=2, help="successive halving")
    parser.add_argument("--positions", default="all,new", help="where the hooks act")
    parser.add_argument("--doses", default="0.5,2", help="multiples of the chosen strengths")
    parser.add_argument("--dose-prompts", type=int, default=8, help="dev prompts per dose curve")
    parser.add_argument("--few-shot", type=int, default=3, help="few-shot examples (0: none)")
    parser.add_argument("--targets", type=int, default=6, help="(--plan-only) target languages")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=384, help="rows per generation batch")
    parser.add_argument("--plan-only", action="store_true", help="print the plan's size and stop")
    parser.add_argument("--seconds-per-generation", type=float, default=0.30)
    args = parser.parse_args()
    if args.plan_only:
        print(json.dumps(plan_size(args), indent=1))
        return
    torch.manual_seed(0)
    started = time.perf_counter()
    dtype = getattr(torch, args.dtype) if args.dtype else None

    t0 = time.perf_counter()
    model = tl_lape.load_model(args.model, device="cpu", dtype=dtype)
    load_s = time.perf_counter() - t0
    train = load_debian_handbook(split="train")
    heldout = load_debian_handbook(split="heldout")
    libreoffice = load_corpus("libreoffice", split="heldout")
    prompts = heldout_prompts(
        [heldout, libreoffice], n_dev=args.n_dev, n_fresh=args.n_fresh, n_words=8, seed=0
    )
    # Content items: half the handbook's, half the LibreOffice Help's aligned paragraphs,
    # alternating; development ones from the train splits, fresh ones from the held-out splits.
    parallel = [
        item
        for split in ("train", "heldout")
        for item in parallel_items(
            [load_handbook_parallel(split=split), load_libreoffice_parallel(split=split)],
            args.n_content,
            seed=0,
        )
    ]
    languages = list(heldout)
    supply = {
        "handbook_heldout": text_supply(heldout, languages),
        "libreoffice_heldout": text_supply(libreoffice, languages),
    }
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
    targets = [t for t in stats.languages if t != "en"]
    evaluation = [t for corpus in (heldout, libreoffice) for lang in targets for t in corpus[lang]]
    evaluation += [item[lang] for item in parallel for lang in targets]
    few_shot = (
        few_shot_examples(train, targets, k=args.few_shot, exclude=evaluation)
        if args.few_shot
        else None
    )
    study = run_steering_study(
        model,
        stats,
        means,
        reference_corpus=heldout,
        parallel=parallel,
        dev_prompts=prompts["dev"],
        fresh_prompts=prompts["fresh"],
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
        clas_strengths=_floats(args.clas_strengths) if args.clas_strengths else None,
        dev_budget=args.dev_budget,
        halving_rounds=args.halving_rounds,
        positions=tuple(args.positions.split(",")),
        doses=_floats(args.doses),
        dose_prompts=args.dose_prompts,
        few_shot=few_shot,
    )
    study.metadata.update(
        {
            "dtype": str(next(model.parameters()).dtype),
            "train_tokens_per_language": args.tokens,
            "parallel_items": len(parallel),
            "text_supply": supply,
            "planned": plan_size(args),
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


def plan_size(args: argparse.Namespace) -> dict[str, float]:
    """Generations (one prompt, ``--max-new-tokens`` tokens) the settings ask for, per phase,
    and the minutes they take at ``--seconds-per-generation``."""
    t = args.targets
    settings = {"english": args.n_dev, "neutral": args.n_dev, "content": args.n_content}
    fresh_n = {"english": args.n_fresh, "neutral": args.n_fresh, "content": args.n_content}
    rounds = args.halving_rounds
    dev = 0
    for n in settings.values():  # per setting: the rounds' chunks, the survivors of each
        ends = [-(-n * 2**k // 2**rounds) for k in range(rounds + 1)]
        sizes = [b - a for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        alive = args.dev_budget
        for size in sizes:
            dev += 3 * alive * t * size  # lape, diffmean, clas
            alive = -(-alive // 2)
    doses = len(_floats(args.doses))
    dose = sum(
        _DOSE_METHODS * doses * t * min(n, max(args.dose_prompts, 2)) for n in settings.values()
    )
    n_positions = len(args.positions.split(","))
    hooked = _STEERING * n_positions + _CONTROLS * args.n_random
    unhooked = (1 + bool(args.few_shot)) * t + 1  # prompt and few-shot per target; none once
    fresh = sum((hooked * t + unhooked) * n for n in fresh_n.values())
    total = dev + dose + fresh
    return {
        "dev": dev,
        "dose": dose,
        "fresh": fresh,
        "total": total,
        "minutes": round(total * args.seconds_per_generation / 60, 1),
    }


if __name__ == "__main__":
    main()
