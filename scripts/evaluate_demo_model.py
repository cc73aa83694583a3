"""Reproduce the demo model's evaluation numbers (docs/model_card.md, "What the neurons do").

1. Statistics as ``tl-lape demo`` collects them (train split, 60,000 tokens per language), and
   the split-half stability of the 1% set (30,000 tokens per language in each half).
2. Perplexity under deactivation of the 1% LAPE set on the held-out split, against matched
   random sets and the LAP and LAVE selectors (``run_evaluation``).
3. A steering sweep over mode, strength and neuron budget, on the library's English and neutral
   prompts, with a matched random set beside every configuration (``run_steering_sweep``).
4. The accuracy of the output-language judge on held-out paragraphs (whole, and cut to 30
   characters, about the length of a steered output), for py3langid and, when installed, lingua.
5. The strongest rows of the sweep again with the other languages' neurons switched off in the
   same pass (``deactivate="others"``).
6. A confirmation run: the candidate configurations below, with and without the other languages
   switched off, are run again on fresh prompts that played no part in choosing them, because
   picking the best of many configurations on the same 16 prompts flatters it.

Usage::

    python scripts/evaluate_demo_model.py --out demo_evaluation   # about 25 min on one thread
"""

import argparse
import json
from pathlib import Path

import torch

import tl_lape
from tl_lape.experiments.analysis import split_half_stability
from tl_lape.experiments.evaluation import run_evaluation
from tl_lape.experiments.steering import run_steering_sweep
from tl_lape.judging.identification import LanguageIdentifier, language_id_accuracy
from tl_lape.sources.corpora import load_debian_handbook

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

#: The sweep's strongest rows, again with the other languages' neurons switched off.
SWEEP_OTHERS = {
    "modes": ("replace", "add"),
    "strengths": {"replace": (6.0, 8.0, 12.0), "add": (7.5, 10.0)},
    "top_rates": (0.02, 0.05, 0.1),
    "deactivate": "others",
}

#: Candidates for the confirmation run: in the sweep recorded in docs/model_card.md, the best
#: configuration of each prompt setting at 5% and at 10% of neurons (English prompts at 5%: three
#: configurations tie at 2 targets; the one with the highest mean success rate).
CONFIRM_CONFIGS = (("replace", 8.0, 0.05), ("add", 10.0, 0.05), ("replace", 6.0, 0.1),
                   ("replace", 12.0, 0.1))  # fmt: skip


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

    lid_lines = ["### Language identification on held-out paragraphs", ""]
    lid_lines += ["| backend | cut | " + " | ".join(reference) + " | overall |"]
    lid_lines += ["| --- | --- |" + " ---: |" * (len(reference) + 1)]
    for backend in ("py3langid", "lingua"):
        try:
            identifier = LanguageIdentifier(list(reference), backend=backend)
        except tl_lape.LapeError as exc:  # lingua is optional
            lid_lines.append(f"| {backend} | not installed ({exc}) |")
            continue
        for cut in (None, 30):
            acc = language_id_accuracy(identifier, reference, max_chars=cut)
            cells = " | ".join(f"{100 * acc[lang]:.1f}" for lang in [*reference, "overall"])
            lid_lines.append(f"| {backend} | {cut or 'whole'} | {cells} |")
    (args.out / "lid.md").write_text("\n".join(lid_lines) + "\n", encoding="utf-8")

    sweep = run_steering_sweep(model, stats, reference_corpus=reference, **SWEEP)
    (args.out / "steering.md").write_text(sweep.to_markdown(), encoding="utf-8")
    (args.out / "steering.json").write_text(json.dumps(sweep.to_dict(), indent=1))

    others = run_steering_sweep(model, stats, reference_corpus=reference, **SWEEP_OTHERS)
    (args.out / "steering-others.md").write_text(others.to_markdown(), encoding="utf-8")
    (args.out / "steering-others.json").write_text(json.dumps(others.to_dict(), indent=1))

    lines = ["### Confirmation on fresh prompts", ""]
    lines += [
        "Targets reached on fresh prompts (success per target, random control in brackets).",
        "",
    ]
    for setting in ("english", "neutral"):
        for mode, strength, top_rate in CONFIRM_CONFIGS:
            for deactivate in ("none", "others"):
                confirm = run_steering_sweep(
                    model, stats, reference_corpus=reference, modes=(mode,),
                    strengths={mode: (strength,)}, top_rates=(top_rate,), settings=(setting,),
                    prompts={setting: CONFIRM_PROMPTS[setting]}, deactivate=deactivate,
                    progress=False,
                )  # fmt: skip
                n_confirm = confirm.n_targets_reached(setting, (mode, strength, top_rate))
                cells = ", ".join(
                    f"{r.target} {100 * r.success_rate:.0f}% ({100 * r.random_success_rate:.0f}%)"
                    for r in confirm.results
                )
                lines.append(
                    f"- {setting}, {mode} x{strength:g} at top_rate {top_rate:g}, deactivate "
                    f"{deactivate}: {n_confirm} reached: {cells}."
                )
    (args.out / "confirmation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(stability.to_markdown())
    print(evaluation.to_markdown())
    print(sweep.to_markdown())
    print(others.to_markdown())
    print("\n".join(lid_lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
