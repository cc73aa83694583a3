"""Reproduce the demo model's evaluation numbers (docs/model_card.md, "What the neurons do").

1. Statistics as ``tl-lape demo`` collects them (train split, 60,000 tokens per language), and
   the split-half stability of the 1% set (30,000 tokens per language in each half).
2. Perplexity under deactivation of the 1% LAPE set on the held-out split, against matched
   random sets and the LAP and LAVE selectors (``run_evaluation``).
3. A steering sweep over mode, strength and neuron budget, on the library's English and neutral
   prompts, with a matched random set beside every configuration (``run_steering_sweep``).
4. A confirmation run: the configuration that reached the most targets in each setting is run
   again on fresh prompts (below) that played no part in choosing it, because picking the best
   of many configurations on the same 16 prompts flatters it.

Usage::

    python scripts/evaluate_demo_model.py --out demo_evaluation      # about 20 min on 2 cores
"""

import argparse
import json
from pathlib import Path

import torch

import tl_lape
from tl_lape.analysis import split_half_stability
from tl_lape.corpora import load_debian_handbook
from tl_lape.evaluation import run_evaluation
from tl_lape.steering import run_steering_sweep

#: Fresh prompts for the confirmation run, in the style of ENGLISH_PROMPTS and NEUTRAL_PROMPTS.
CONFIRM_PROMPTS = {
    "english": [
        "The first step is to check that",
        "A user who wants to share files can",
        "The package manager keeps track of",
        "During the installation, the system asks",
        "The firewall rules are stored in",
        "Printing a document requires a",
        "The log files show that the service",
        "Virtual machines make it possible to",
        "The configuration of the web server is",
        "An administrator who forgets the password must",
        "The archive contains several versions of",
        "Time synchronisation is handled by",
        "The disk is divided into partitions that",
        "Remote access to the machine is provided by",
        "Updates are downloaded from a mirror and",
        "The documentation of each program explains",
    ],
    "neutral": [
        *("\t", "sudo", "3.", "/usr/", "% ", "1999", "/home/", "apt"),
        *("##", "+", "7", "ftp://", "--", "[", "ssh", "cd /"),
    ],
}

SWEEP = {
    "modes": ("replace", "add", "scale"),
    "strengths": {
        "replace": (1.0, 4.0, 6.0, 8.0, 12.0),
        "add": (5.0, 7.5, 10.0),
        "scale": (3.0, 10.0),
    },
    "top_rates": (0.01, 0.02, 0.05, 0.1, 0.15),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--eval-tokens", type=int, default=16_384, help="held-out tokens/language")
    parser.add_argument("--n-random", type=int, default=3, help="matched random draws")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    model = tl_lape.load_demo_model()
    train = load_debian_handbook(split="train")
    heldout = load_debian_handbook(split="heldout")
    reference = {lang: list(texts) for lang, texts in heldout.items()}
    stats = tl_lape.collect_activation_stats(
        model, train, seq_len=256, max_tokens_per_language=60_000
    )
    neurons = tl_lape.identify_language_neurons(stats)
    stability = split_half_stability(model, train, max_tokens_per_language=30_000)
    (args.out / "stability.md").write_text(stability.to_markdown(), encoding="utf-8")

    evaluation = run_evaluation(
        model, neurons, heldout, stats=stats, n_random=args.n_random,
        max_tokens_per_language=args.eval_tokens,
    )  # fmt: skip
    (args.out / "evaluation.md").write_text(evaluation.to_markdown(), encoding="utf-8")
    (args.out / "evaluation.json").write_text(json.dumps(evaluation.to_dict(), indent=1))

    sweep = run_steering_sweep(model, stats, reference_corpus=reference, **SWEEP)
    (args.out / "steering.md").write_text(sweep.to_markdown(), encoding="utf-8")
    (args.out / "steering.json").write_text(json.dumps(sweep.to_dict(), indent=1))

    lines = ["### Confirmation on fresh prompts", ""]
    for setting in ("english", "neutral"):
        best = sweep.best(setting)
        if best is None:
            continue
        (mode, strength, top_rate), n_sweep = best
        confirm = run_steering_sweep(
            model, stats, reference_corpus=reference, modes=(mode,),
            strengths={mode: (strength,)}, top_rates=(top_rate,), settings=(setting,),
            prompts={setting: CONFIRM_PROMPTS[setting]}, progress=False,
        )  # fmt: skip
        n_confirm = confirm.n_targets_reached(setting, (mode, strength, top_rate))
        cells = ", ".join(
            f"{r.target} {100 * r.success_rate:.0f}% (random {100 * r.random_success_rate:.0f}%)"
            for r in confirm.results
        )
        lines.append(
            f"- {setting}: best in the sweep {mode} x{strength:g} at top_rate {top_rate:g} "
            f"({n_sweep} targets reached); on fresh prompts {n_confirm} reached: {cells}."
        )
    (args.out / "confirmation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(stability.to_markdown())
    print(evaluation.to_markdown())
    print(sweep.to_markdown())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
