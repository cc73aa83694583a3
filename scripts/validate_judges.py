"""Measure the steering judges on the labelled validation set; write a results folder.

Judges measured (``tl_lape.judging``):

- language: py3langid and lingua, each closed-set (the study's seven languages only: the old
  judge) and open-set (every language the identifier knows, ``"other"`` outside the study);
  their agreement;
- fluency: the text rule (:class:`~tl_lape.judging.fluency.FluencyRule`), the old token
  repetition cap (repeated token trigrams at most 0.5), the NLL bar (the unsteered model's NLL
  at most 1 nat above natural text of the language), and their combinations: old = repetition
  cap and NLL bar; new = text rule, repetition cap and NLL bar (what ``judge_outputs`` does);
- success (target language and fluent) over every (text, target) pair: old = closed-set
  py3langid and old fluency; new = open-set py3langid and new fluency.

The model-based parts use the demo model (the study's own model would be used in a study; it is
not loaded here), with its natural-text NLL measured on held-out handbook paragraphs.

Usage::

    python scripts/validate_judges.py [--data tests/data/judge_validation.jsonl]
        [--out benchmarks/results/2026-12-04-judges]
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from tl_lape import load_demo_model
from tl_lape._adapter import adapt
from tl_lape.judging.fluency import FluencyRule
from tl_lape.judging.identification import LanguageIdentifier
from tl_lape.judging.metrics import reference_nll, repetition_rate, sequence_nll
from tl_lape.judging.outputs import DEFAULT_MAX_REPETITION, DEFAULT_NLL_MARGIN
from tl_lape.judging.validation import (
    LabelledText,
    agreement,
    language_scores,
    load_labelled_texts,
    pass_rates,
    precision_recall,
    success_scores,
)
from tl_lape.sources.corpora import PAPER_LANGUAGES, load_debian_handbook

STUDY = list(PAPER_LANGUAGES)
SPLITS = ("dev", "test", "all")


def _subset(items: list[LabelledText], split: str) -> list[int]:
    return [i for i, x in enumerate(items) if split == "all" or x.split == split]


def _pick(values: list[Any], idx: list[int]) -> list[Any]:
    return [values[i] for i in idx]


def measure(data: Path) -> dict[str, Any]:
    started = time.perf_counter()
    items = load_labelled_texts(data)
    texts = [x.text for x in items]
    answers: dict[str, list[str | None]] = {}
    for backend in ("py3langid", "lingua"):
        for open_set in (False, True):
            lid = LanguageIdentifier(STUDY, backend=backend, open_set=open_set)
            answers[f"{backend} {'open' if open_set else 'closed'}"] = lid.identify_many(texts)

    model = load_demo_model()
    adapter = adapt(model, validate=False)
    tokens = [adapter.encode(t) for t in texts]
    reference = reference_nll(model, load_debian_handbook(STUDY, split="heldout"), n_tokens=32)
    nll = sequence_nll(model, tokens).tolist()
    repetition = [repetition_rate(t) for t in tokens]
    rule = FluencyRule()
    text_ok = [rule(t) for t in texts]
    rep_ok = [r <= DEFAULT_MAX_REPETITION for r in repetition]

    def nll_ok(i: int, lang: str) -> bool:
        return nll[i] <= reference[lang] + DEFAULT_NLL_MARGIN

    # Fluency per text with its own language's yardstick (texts of a study language only), and
    # per text and target for success (the study judges against the target's yardstick).
    own = [x.language if x.language in STUDY else None for x in items]
    fluency = {
        "text rule": text_ok,
        "repetition cap": rep_ok,
        "NLL bar": [lang is not None and nll_ok(i, lang) for i, lang in enumerate(own)],
    }
    fluency["old (repetition cap + NLL bar)"] = [
        a and b for a, b in zip(fluency["repetition cap"], fluency["NLL bar"], strict=True)
    ]
    fluency["new (text rule + repetition cap + NLL bar)"] = [
        a and b for a, b in zip(text_ok, fluency["old (repetition cap + NLL bar)"], strict=True)
    ]
    per_target_old = [[rep_ok[i] and nll_ok(i, t) for t in STUDY] for i in range(len(items))]
    per_target_new = [
        [text_ok[i] and rep_ok[i] and nll_ok(i, t) for t in STUDY] for i in range(len(items))
    ]

    results: dict[str, Any] = {
        "data": str(data),
        "n_items": len(items),
        "categories": {
            c: sum(x.category == c for x in items) for c in dict.fromkeys(x.category for x in items)
        },
        "reference_nll_demo": reference,
        "language": {},
        "other_by_origin": {},
        "agreement": {},
        "fluency": {},
        "fluency_pass_rates": {},
        "success": {},
    }
    for split in SPLITS:
        idx = _subset(items, split)
        sub = _pick(items, idx)
        results["language"][split] = {
            name: {
                k: v.to_dict()
                for k, v in language_scores(_pick(a, idx), sub, languages=STUDY).items()
            }
            for name, a in answers.items()
        }
        results["agreement"][split] = {
            "py3langid open vs lingua open": agreement(
                _pick(answers["py3langid open"], idx), _pick(answers["lingua open"], idx)
            ),
            "py3langid closed vs lingua closed": agreement(
                _pick(answers["py3langid closed"], idx), _pick(answers["lingua closed"], idx)
            ),
        }
        with_lang = [i for i in idx if own[i] is not None]
        results["fluency"][split] = {
            name: precision_recall(
                _pick(v, with_lang), [items[i].fluent for i in with_lang]
            ).to_dict()
            for name, v in fluency.items()
        }
        results["fluency"][split]["text rule, all texts"] = precision_recall(
            _pick(text_ok, idx), [x.fluent for x in sub]
        ).to_dict()
        results["success"][split] = {
            "old (py3langid closed + old fluency)": success_scores(
                _pick(answers["py3langid closed"], idx),
                _pick(per_target_old, idx),
                sub,
                languages=STUDY,
            ).to_dict(),
            "new (py3langid open + new fluency)": success_scores(
                _pick(answers["py3langid open"], idx),
                _pick(per_target_new, idx),
                sub,
                languages=STUDY,
            ).to_dict(),
            "new with lingua open": success_scores(
                _pick(answers["lingua open"], idx),
                _pick(per_target_new, idx),
                sub,
                languages=STUDY,
            ).to_dict(),
        }
    labelled = [i for i in range(len(items)) if own[i] is not None]
    results["fluency_pass_rates"] = {
        name: pass_rates(_pick(v, labelled), _pick(items, labelled)) for name, v in fluency.items()
    }
    results["fluency_pass_rates"]["text rule, all texts"] = pass_rates(text_ok, items)
    for name, a in answers.items():
        origins: dict[str, list[bool]] = {}
        for ans, x in zip(a, items, strict=True):
            if x.language == "other":
                origins.setdefault(
                    x.origin if x.category == "neighbour" else x.category, []
                ).append(ans == "other")
        results["other_by_origin"][name] = {k: sum(v) / len(v) for k, v in origins.items()}
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["items"] = [
        {
            "id": x.id,
            **{name: a[i] for name, a in answers.items()},
            "nll_demo": round(nll[i], 4),
            "token_repetition_demo": round(repetition[i], 4),
            "text_rule": text_ok[i],
        }
        for i, x in enumerate(items)
    ]
    return results


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Steering judges on the labelled validation set (2026-12-04)",
        "",
        f"{r['n_items']} short texts (`{r['data']}`, built by "
        "`scripts/build_judge_validation.py`), measured by `scripts/validate_judges.py` in "
        f"{r['seconds']} s on 2 CPU cores. Categories: "
        + ", ".join(f"{k} {v}" for k, v in r["categories"].items())
        + ". Thresholds were not tuned on the `test` half; the `dev` half was looked at when "
        "choosing the text rule's defaults.",
        "",
        "## Language identification",
        "",
        "Precision / recall (%) per study language and for `other` (a language outside the "
        "study, a mixture, or no language); macro = mean over the seven study languages. "
        "Closed = choosing among the study's languages only (the judge of the 2026-12-02 study); "
        "open = among every language the identifier knows, `other` outside the study.",
        "",
    ]
    for split in ("test", "all"):
        lines += [
            f"### {split} ({'reported' if split == 'test' else 'dev + test'})",
            "",
            "| identifier | " + " | ".join([*STUDY, "other", "macro"]) + " |",
            "| --- |" + " ---: |" * (len(STUDY) + 2),
        ]
        for name, scores in r["language"][split].items():
            cells = [
                f"{_fmt(scores[k]['precision'])} / {_fmt(scores[k]['recall'])}"
                for k in [*STUDY, "other", "macro"]
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        agree = r["agreement"][split]
        lines += [
            "",
            "Agreement: " + "; ".join(f"{k} {100 * v:.1f}%" for k, v in agree.items()) + ".",
            "",
        ]
    lines += [
        "Share of texts labelled `other` that each identifier answers `other`, by origin "
        "(neighbour languages) or category (all texts):",
        "",
    ]
    origins = list(next(iter(r["other_by_origin"].values())))
    lines += [
        "| identifier | " + " | ".join(origins) + " |",
        "| --- |" + " ---: |" * len(origins),
    ]
    for name, by in r["other_by_origin"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * by[o]:.0f}" for o in origins) + " |")
    lines += [
        "",
        "## Fluency",
        "",
        "Positive = fluent. Texts labelled with a study language (the NLL bar needs the "
        "language's yardstick); the last row is the text rule on every text. NLL: the demo "
        "model, not the study's model.",
        "",
        "| judge | test precision | test recall | all precision | all recall |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in r["fluency"]["test"]:
        t, a = r["fluency"]["test"][name], r["fluency"]["all"][name]
        lines.append(
            f"| {name} | {_fmt(t['precision'])} | {_fmt(t['recall'])} | {_fmt(a['precision'])} "
            f"| {_fmt(a['recall'])} |"
        )
    cats = list(r["fluency_pass_rates"]["text rule, all texts"])
    lines += [
        "",
        "Share of each category passed as fluent (all texts):",
        "",
        "| judge | " + " | ".join(cats) + " |",
        "| --- |" + " ---: |" * len(cats),
    ]
    for name, rates in r["fluency_pass_rates"].items():
        lines.append(
            f"| {name} | "
            + " | ".join("-" if c not in rates else f"{100 * rates[c]:.0f}" for c in cats)
            + " |"
        )
    lines += [
        "",
        "## Success (target language and fluent)",
        "",
        "Over every (text, target) pair of the seven targets; positive = the text is in the "
        "target and fluent.",
        "",
        "| judge | test precision | test recall | all precision | all recall |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in r["success"]["test"]:
        t, a = r["success"]["test"][name], r["success"]["all"][name]
        lines.append(
            f"| {name} | {_fmt(t['precision'])} | {_fmt(t['recall'])} | {_fmt(a['precision'])} "
            f"| {_fmt(a['recall'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("tests/data/judge_validation.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/2026-12-04-judges"))
    args = parser.parse_args()
    torch.manual_seed(0)
    results = measure(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    (args.out / "table.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))


if __name__ == "__main__":
    main()
