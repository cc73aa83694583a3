"""State each deactivation claim of a reproduction with its interval and p-value.

Reads the files ``scripts/reproduce_gemma.py`` wrote in each corpus folder of ``--root``
(``evaluation_<b>pct.json``, ``stability_<b>pct.json``, ``summary.json``, and
``nearest_<b>pct.json`` from ``scripts/nearest_control.py`` where present), at every evaluated
budget, recomputes every
estimate from the per-window results with the library's paired bootstrap
(``EvaluationReport.from_dict(...).intervals()``), rewrites ``evaluation_<b>pct.md`` from the
JSON with the current library (so the report has every statistic the library now computes, e.g.
the paired LAPE-minus-LAP/LAVE differences), writes ``claims.json`` (every number the summary
prints) and ``claims.md`` (the Markdown claims section, also printed), so the numbers in the
README and the model card are the numbers in the files.

Usage::

    python scripts/reproduction_claims.py --root benchmarks/results/2026-12-04-gemma-reproduction
"""

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from tl_lape.experiments.analysis import split_half_jaccard
from tl_lape.experiments.evaluation import EvaluationReport
from tl_lape.formats import json_text
from tl_lape.intervals import Estimate
from tl_lape.neurons import LanguageNeurons


def _fmt(e: Estimate, digits: int = 3, sign: bool = True) -> str:
    """The library's format, signed by default (the claims are differences)."""
    return e.format(digits, sign=sign)


def corpus_claims(folder: Path, tag: str) -> tuple[dict[str, Any], list[str]]:
    """The claims of one corpus folder at one budget: a dict and Markdown lines."""
    report = EvaluationReport.from_dict(json.loads((folder / f"evaluation_{tag}.json").read_text()))
    est = report.intervals()
    summary = json.loads((folder / "summary.json").read_text())
    rate = int(tag.removesuffix("pct")) / 100
    (folder / f"evaluation_{tag}.md").write_text(
        f"## Deactivation at top_rate={rate} ({summary.get('corpus')})\n\n{report.to_markdown()}\n",
        encoding="utf-8",
    )
    for name, fig in report.figures().items():  # the figures too, with the current intervals
        fig.savefig(folder / f"{name}_{tag}.png", dpi=110)
        plt.close(fig)
    stability_path = folder / f"stability_{tag}.json"
    stability = json.loads(stability_path.read_text()) if stability_path.exists() else None
    langs = list(report.lape.deactivated)
    cols = list(report.lape.languages)
    n_draws = len(report.random)
    p_values = est.p_values
    rows = []
    lines = [
        f"| language | neurons | own NLL rise (nats) | selectivity | random selectivity "
        f"(mean of {n_draws}) | LAPE − random | p vs random | P(own rises most) | LAPE − LAP | "
        "LAPE − LAVE | self-Jaccard |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, lang in enumerate(langs):
        j = cols.index(lang)
        own = est.lape.delta[i][j]
        sel = est.lape.selectivity[i]
        rand = est.random_selectivity[i] if est.random_selectivity else None
        p = p_values[i]
        prob = est.lape.own_largest_probability[i]
        diffs = {name: est.baseline_differences[name][i] for name in est.baseline_differences}
        jac = (
            None if stability is None else stability["per_language"][lang]["expected_self_jaccard"]
        )
        minus_random = est.random_differences[i] if est.random_differences else None
        row = {
            "language": lang,
            "neurons": report.neuron_counts["lape"][lang],
            "own_rise": own.to_dict(),
            "selectivity": sel.to_dict(),
            "random_selectivity": None if rand is None else rand.to_dict(),
            "minus_random": None if minus_random is None else minus_random.to_dict(),
            "p_value": p,
            "own_largest_probability": prob,
            "minus_baseline": {k: v.to_dict() for k, v in diffs.items()},
            "expected_self_jaccard": jac,
        }
        rows.append(row)
        lines.append(
            f"| {lang} | {row['neurons']} | {_fmt(own)} | {_fmt(sel)} | "
            f"{'n/a' if rand is None else _fmt(rand)} | "
            f"{'n/a' if minus_random is None else _fmt(minus_random)} | "
            f"{'n/a' if p is None else f'{p:.3g}'} | "
            f"{'n/a' if prob is None else f'{prob:.2f}'} | "
            f"{_fmt(diffs['lap']) if 'lap' in diffs else 'n/a'} | "
            f"{_fmt(diffs['lave']) if 'lave' in diffs else 'n/a'} | "
            f"{'n/a' if jac is None else f'{jac:.2f}'} |"
        )
    count = est.lape.n_own_largest
    # The run that evaluated this budget: this one or an earlier one into the same folder.
    runs = [summary, *reversed(summary.get("earlier_runs", []))]
    run = next((r for r in runs if f"evaluate_{tag}_s" in r.get("timings", {})), {})
    ratio = est.selectivity_ratio
    data = {
        "corpus": summary.get("corpus"),
        "budget": tag,
        "n_random": n_draws,
        "control": report.metadata.get("control"),
        "pool": report.metadata.get("pool"),
        "selector_sizes": report.metadata.get("selector_sizes"),
        "eval_tokens_per_language": report.metadata.get("max_tokens_per_language"),
        "positions_per_window": report.metadata.get("positions_per_window"),
        "windows_per_language": report.lape.n_windows.tolist(),
        "documents_per_language": report.lape.n_clusters(),
        "min_p_value": est.min_p_value,
        "n_own_largest": count.to_dict(),
        "mean_selectivity": est.mean_selectivity.to_dict(),
        "random_mean_abs_selectivity": (
            None
            if est.random_mean_abs_selectivity is None
            else est.random_mean_abs_selectivity.to_dict()
        ),
        "selectivity_ratio": None if ratio is None else ratio.to_dict(),
        "random_difference": (
            None if est.random_difference is None else est.random_difference.to_dict()
        ),
        "nearest": _nearest(folder, tag),
        "baseline_mean_differences": {
            k: v.to_dict() for k, v in est.baseline_mean_differences.items()
        },
        "neuron_counts": report.neuron_counts,
        "rows": rows,
        "evaluate_s": run.get("timings", {}).get(f"evaluate_{tag}_s"),
        "total_s": run.get("timings", {}).get("total_s"),
        "machine": run.get("machine"),
        "n_boot": est.n_boot,
        "level": est.level,
    }
    head = [
        f"### {data['corpus']}, {tag}",
        "",
        f"Held-out windows per language: {data['windows_per_language']} (documents: "
        f"{data['documents_per_language']}), {data['eval_tokens_per_language']} tokens per "
        f"language, {data['positions_per_window'] or 'all'} scored positions per window; "
        f"{n_draws} random draw(s) ({data['control']}-matched"
        f"{'; pool 1: the single nearest-matched set' if data['pool'] == 1 else ''}); "
        "LAP and LAVE at "
        f"{'each language' if data['selector_sizes'] == 'language' else 'the total'}'s LAPE "
        f"size; {100 * est.level:g}% paired expanded-percentile bootstrap intervals "
        f"({est.n_boot} replicates, windows resampled within each language, a document's "
        f"windows together, tails widened for {min(data['documents_per_language'])} "
        "documents); p: "
        f"empirical against the draws, smallest possible {est.min_p_value:.3g}.",
        "",
    ]
    diffs_text = "; ".join(
        f"LAPE − {k.upper()} {_fmt(v, 4)}" for k, v in est.baseline_mean_differences.items()
    )
    tail = [
        "",
        f"- Own language rises most for **{count.value:.0f} of {len(langs)}** (interval of the "
        f"count [{count.low:.0f}, {count.high:.0f}])."
        if count.low is not None and count.high is not None
        else f"- Own language rises most for **{count.value:.0f} of {len(langs)}** (± n/a).",
        f"- Mean selectivity {_fmt(est.mean_selectivity, 4)} nats; the random draws' mean "
        f"absolute selectivity "
        + (
            "n/a"
            if est.random_mean_abs_selectivity is None
            else _fmt(est.random_mean_abs_selectivity, 4, sign=False)
        )
        + "; ratio "
        + ("n/a" if ratio is None else f"{ratio.value:.1f} (a point: no valid interval)")
        + ".",
        "- Mean selectivity, paired differences: LAPE − random (signed means) "
        + ("n/a" if est.random_difference is None else _fmt(est.random_difference, 4))
        + f"; {diffs_text}.",
    ]
    nearest = data["nearest"]
    if nearest is not None:
        gaps = ", ".join(
            f"{lang} {g['mean_activation']:+.3f}" for lang, g in nearest["activity_gap"].items()
        )
        mean_difference = Estimate.from_dict(nearest["mean_difference"])
        tail.append(
            "- Against the single nearest activity-matched set (pool 1; mean-activation gap "
            f"{gaps}): LAPE − nearest {_fmt(mean_difference, 4)}; per "
            "language "
            + ", ".join(
                f"{lang} {_fmt(Estimate.from_dict(d), 3)}"
                for lang, d in zip(langs, nearest["differences"], strict=True)
            )
            + "."
        )
    return data, head + lines + tail


def _nearest(folder: Path, tag: str) -> dict[str, Any] | None:
    """LAPE against its nearest activity-matched set (``scripts/nearest_control.py``)."""
    path = folder / f"nearest_{tag}.json"
    if not path.exists():
        return None
    report = EvaluationReport.from_dict(json.loads(path.read_text()))
    est = report.intervals()
    assert est.random_differences is not None and est.random_difference is not None
    gap = report.metadata["activity_gap"][0]
    return {
        "pool": report.metadata.get("pool"),
        "activity_gap": {lang: row["gap"] for lang, row in gap.items()},
        "selectivity": [e.to_dict() for e in est.random_selectivity or ()],
        "differences": [e.to_dict() for e in est.random_differences],
        "mean_difference": est.random_difference.to_dict(),
        "seconds": report.metadata.get("run", {}).get("seconds"),
    }


def _glance(out: dict[str, Any]) -> list[str]:
    """One row per corpus and budget: the headline claims with their intervals."""
    lines = [
        "| corpus | budget | draws | own language rises most | own rise > 0 | p = min | "
        "mean selectivity | LAPE − random | LAPE − LAP | LAPE − LAVE |",
        "| --- | --- | ---: | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for corpus, budgets in out.items():
        if corpus == "cross_corpus_jaccard":
            continue
        for tag, d in budgets.items():
            rows = d["rows"]
            count = d["n_own_largest"]
            rises = [r["language"] for r in rows if (r["own_rise"]["low"] or 0) > 0]
            floor = d["min_p_value"]
            at_floor = [r["language"] for r in rows if r["p_value"] == floor]
            diffs = d["baseline_mean_differences"]

            def f(e: dict[str, Any] | None) -> str:
                if e is None or e["value"] is None:
                    return "n/a"
                if e["low"] is None:
                    return f"{e['value']:+.3f} ± n/a"
                return f"{e['value']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"

            draws = f"{d['n_random']}" + (" (nearest)" if d.get("pool") == 1 else "")
            lines.append(
                f"| {corpus} | {tag} | {draws} | {count['value']:.0f} of {len(rows)} "
                f"[{count['low']:.0f}, {count['high']:.0f}] | {' '.join(rises)} | "
                + (
                    f"{len(at_floor)} of {len(rows)} (p = {floor:.3g})"
                    if floor is not None and floor < 0.05
                    else f"n/a (floor {floor:.3g})"
                )
                + f" | {f(d['mean_selectivity'])} | {f(d['random_difference'])} | "
                f"{f(diffs.get('lap'))} | {f(diffs.get('lave'))} |"
            )
    return ["### At a glance", "", *lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    out: dict[str, Any] = {}
    text: list[str] = []
    for tag in ("1pct", "2pct", "5pct"):
        for folder in sorted(p for p in args.root.iterdir() if p.is_dir()):
            if not (folder / f"evaluation_{tag}.json").exists():
                continue
            data, lines = corpus_claims(folder, tag)
            out.setdefault(folder.name, {})[tag] = data
            text += [*lines, ""]
    folders = sorted(p for p in args.root.iterdir() if (p / "neurons_1pct.json").exists())
    if len(folders) == 2:
        a_dir, b_dir = folders
        cross: dict[str, Any] = {}
        text += [
            f"### The same budget's sets on {a_dir.name} and {b_dir.name} (Jaccard per language)",
            "",
        ]
        for tag in ("1pct", "2pct", "5pct"):
            a = LanguageNeurons.load(a_dir / f"neurons_{tag}.json")
            b = LanguageNeurons.load(b_dir / f"neurons_{tag}.json")
            values = [float(x) for x in split_half_jaccard(a, b)]
            cross[tag] = dict(zip(a.languages, values, strict=True))
            if tag == "1pct":
                text += ["| budget | " + " | ".join(a.languages) + " |"]
                text += ["| --- |" + " ---: |" * len(a.languages)]
            text += [f"| {tag} | " + " | ".join(f"{v:.2f}" for v in values) + " |"]
        out["cross_corpus_jaccard"] = cross
        text.append("")
    text = [*_glance(out), "", *text]
    (args.root / "claims.json").write_text(json_text(out), encoding="utf-8")
    title = "# The reproduction's claims with their intervals (written by reproduction_claims.py)"
    (args.root / "claims.md").write_text("\n".join([title, "", *text]), encoding="utf-8")
    print("\n".join(text))


if __name__ == "__main__":
    main()
