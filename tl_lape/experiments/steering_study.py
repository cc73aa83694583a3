"""A steering study judged as a demanding reviewer would: language, fluency, content, baselines.

:func:`run_steering_study` asks whether switching a language's neurons on (and others off)
makes a model write in that language *and still make sense*, against the strongest simple
alternatives, and chooses every configuration on development prompts before reporting on
fresh ones:

- **Settings.** ``english``: English prompts (English is the source language); ``neutral``:
  prompts with no language (a command, a number, a path); ``content``: the first words of an
  English handbook paragraph, whose continuation is compared with the target-language
  translation of the same paragraph (:func:`~tl_lape.sources.corpora.load_handbook_parallel`).
- **Judges.** Language by py3langid and by lingua (and how often they agree); fluency as in
  :mod:`tl_lape.experiments.steering` (the unsteered model's NLL against natural text of the target
  language, and repeated trigrams); content as the chrF (sacrebleu) of the continuation against
  its own translation minus its mean chrF against other paragraphs of the same language.
  *Success* = identified as the target by py3langid AND fluent; in the content setting the
  *combined* score is the harmonic mean of the success rate and the share of outputs whose
  content gain is positive.
- **Methods.** ``lape`` (:func:`~tl_lape.interventions.hooks.steering_hooks`, modes, strengths,
  budgets,
  with or without the other languages' neurons off), ``random`` (the same configuration on a
  random set matched in size and layers), ``diffmean``
  (:func:`~tl_lape.interventions.diffmean.diffmean_hooks`,
  layer and strength swept), ``prompt`` (a short target-language cue before the prompt, no
  intervention) and ``none`` (unsteered).
- **Sweep, then confirmation.** Each method's one configuration (for all settings) is chosen on
  the development prompts: the most (setting, target) cells at ≥50% success, then the mean
  success over the cells, with the combined score in place of success in the content
  setting. LAPE's chosen mode, budget and deactivation are then run with a random set at every
  strength (the control curve); the chosen configurations run on the fresh prompts, with
  several random draws for LAPE's control.

Example:
    >>> study = run_steering_study(model, stats, means, reference_corpus=heldout,
    ...                            parallel=items)  # doctest: +SKIP
    >>> study.save("steering_report")  # doctest: +SKIP
"""

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from tl_lape.collection.residual_means import ResidualMeans
from tl_lape.errors import LapeError
from tl_lape.experiments.steering import (
    ENGLISH_PROMPTS,
    NEUTRAL_PROMPTS,
    check_mode,
    deactivated_languages,
    judge_outputs,
    one_line,
)
from tl_lape.formats import atomic_dir
from tl_lape.interventions.diffmean import diffmean_hooks
from tl_lape.interventions.generation import generate_texts_and_tokens, generate_with_hook_sets
from tl_lape.interventions.hooks import steering_hooks
from tl_lape.judging.identification import LanguageIdentifier
from tl_lape.judging.metrics import reference_nll
from tl_lape.neurons import LanguageNeurons, random_matched_neurons
from tl_lape.stats import ActivationStats

__all__ = [
    "DEFAULT_STRENGTHS",
    "FRESH_ENGLISH_PROMPTS",
    "FRESH_NEUTRAL_PROMPTS",
    "LANGUAGE_CUES",
    "SteeringStudy",
    "StudyPlan",
    "check_study_inputs",
    "chrf",
    "content_gain",
    "content_prompts",
    "harmonic_mean",
    "run_steering_study",
]

#: Fresh English prompts (written for this project, disjoint from
#: :data:`~tl_lape.experiments.steering.ENGLISH_PROMPTS`, which serve as the development set).
FRESH_ENGLISH_PROMPTS: tuple[str, ...] = (
    "After the update, the printer",
    "The best way to learn a new tool is",
    "Our office network was slow, so we",
    "Yesterday the technician explained that",
    "A good password should",
    "The documentation describes how to",
    "When two programs need the same library,",
    "The old computer in the library",
    "Every morning the system sends a report that",
    "To share files with colleagues, you can",
    "The firewall blocks connections that",
    "She opened the terminal and",
)

#: Fresh neutral prompts, disjoint from :data:`~tl_lape.experiments.steering.NEUTRAL_PROMPTS`.
FRESH_NEUTRAL_PROMPTS: tuple[str, ...] = (
    "3.",
    "/usr/share/",
    "grep",
    "2.1",
    "/home/",
    "ssh",
    ">",
    "10",
    "mount",
    "[",
    "1999",
    "cron",
)

#: A short cue asking for the target language, for the prompting baseline (written for this
#: project).
LANGUAGE_CUES: dict[str, str] = {
    "en": "In English: ",
    "zh": "用中文写：",
    "fr": "En français : ",
    "es": "En español: ",
    "vi": "Bằng tiếng Việt: ",
    "id": "Dalam bahasa Indonesia: ",
    "ja": "日本語で：",
    "ru": "На русском: ",
    "de": "Auf Deutsch: ",
}


#: The strengths swept per LAPE mode by default.
DEFAULT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "replace": (1.0, 2.0, 3.0),
    "add": (1.0, 2.0, 4.0),
    "scale": (2.0, 4.0),
}


# ============================================================================ judges


def _sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError as err:
        raise LapeError(
            "the content judge needs the optional sacrebleu package: pip install 'tl-lape[steer]'"
        ) from err
    return sacrebleu


def chrf(hypothesis: str, reference: str) -> float:
    """sacrebleu's sentence-level chrF (0-100) of ``hypothesis`` against one ``reference``.

    Example:
        >>> chrf("Le chat dort.", "Le chat dort.")
        100.0
    """
    return float(_sacrebleu().sentence_chrf(hypothesis, [reference]).score)


def content_gain(text: str, own: str, others: Sequence[str]) -> float:
    """chrF against the own translation minus the mean chrF against other paragraphs.

    Positive when the continuation shares more character n-grams with the translation of its
    own paragraph than with paragraphs of other content in the same language.
    """
    if not others:
        raise LapeError("content_gain needs at least one other paragraph to compare with")
    return chrf(text, own) - sum(chrf(text, o) for o in others) / len(others)


def harmonic_mean(a: float, b: float) -> float:
    """``2ab / (a + b)``, 0 when both are 0."""
    return 0.0 if a + b <= 0 else 2 * a * b / (a + b)


def content_prompts(
    parallel: Sequence[Mapping[str, str]], *, n_words: int = 12, source: str = "en"
) -> list[str]:
    """The first ``n_words`` words of each item's ``source`` paragraph (the content prompts)."""
    out = []
    for item in parallel:
        if source not in item:
            raise LapeError(f"a parallel item has no {source!r} text; it has {sorted(item)}")
        out.append(" ".join(item[source].split()[:n_words]))
    return out


# ============================================================================ configurations


@dataclass(frozen=True)
class _Config:
    method: str  # lape | random | diffmean | prompt | none
    mode: str = ""
    strength: float = 0.0
    top_rate: float = 0.0
    deactivate: str = "none"
    layer: int = -1
    seed: int = 0

    def label(self) -> str:
        if self.method in ("lape", "random"):
            return (
                f"{self.method} {self.mode} x{self.strength:g} @{self.top_rate:g}"
                f" off={self.deactivate}"
                + (f" seed={self.seed}" if self.method == "random" else "")
            )
        if self.method == "diffmean":
            return f"diffmean L{self.layer} x{self.strength:g}"
        return self.method

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class _Inputs:
    """Prompts per setting, with the content references of the content setting."""

    prompts: dict[str, list[str]]
    parallel: list[dict[str, str]]


# ============================================================================ the study


@dataclass(frozen=True)
class SteeringStudy:
    """The rows of a steering study (one per phase, setting, configuration and target).

    Attributes:
        rows: Plain dicts: ``phase`` ("dev"/"fresh"), ``setting``, ``method``, ``config``
            (label), the configuration's fields, ``target``, ``n``, ``target_rate``,
            ``lingua_rate``, ``agreement`` (the share of outputs on which py3langid and lingua
            give the same answer; an output too short for both counts as agreeing),
            ``fluent_rate``, ``success_rate``, and in the
            content setting ``relevant_rate``, ``mean_gain`` and ``combined``.
        chosen: The configuration chosen on the development prompts, per method.
        examples: Per fresh (setting, method, target), a few outputs.
        throughput: Unsteered and steered generation, tokens per second, side by side.
        metadata: Thresholds, prompts, languages, timings.
    """

    rows: tuple[dict[str, Any], ...]
    chosen: dict[str, dict[str, Any]]
    examples: dict[str, list[str]] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def select(self, **where: Any) -> list[dict[str, Any]]:
        """The rows whose fields equal ``where``."""
        return [r for r in self.rows if all(r.get(k) == v for k, v in where.items())]

    def targets_reached(
        self, setting: str, method: str, *, min_success: float = 0.5, min_margin: float = 0.4
    ) -> list[str]:
        """Fresh targets with success ≥ ``min_success`` and ≥ ``min_margin`` above every random
        draw of LAPE's control (for ``method="lape"``; other methods: the success bar only)."""
        out = []
        for r in self.select(phase="fresh", setting=setting, method=method):
            ok = r["success_rate"] >= min_success
            if method == "lape":
                controls = self.select(
                    phase="fresh", setting=setting, method="random", target=r["target"]
                )
                ok = ok and all(
                    r["success_rate"] - c["success_rate"] >= min_margin for c in controls
                )
            if ok:
                out.append(r["target"])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values."""
        return {
            "rows": list(self.rows),
            "chosen": self.chosen,
            "examples": self.examples,
            "throughput": self.throughput,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SteeringStudy":
        """The inverse of :meth:`to_dict`."""
        missing = [k for k in ("rows", "chosen") if k not in data]
        if missing:
            raise LapeError(
                f"a steering study needs the keys 'rows' and 'chosen'; missing {missing} (read "
                "a study.json written by SteeringStudy.save)"
            )
        return cls(
            rows=tuple(dict(r) for r in data["rows"]),
            chosen={k: dict(v) for k, v in data["chosen"].items()},
            examples={k: list(v) for k, v in data.get("examples", {}).items()},
            throughput=dict(data.get("throughput", {})),
            metadata=dict(data.get("metadata", {})),
        )

    @classmethod
    def load(cls, folder: str | Path) -> "SteeringStudy":
        """Read the ``study.json`` of a folder written by :meth:`save`."""
        path = Path(folder) / "study.json"
        if not path.is_file():
            raise LapeError(f"no study.json in {str(folder)!r}; write one with SteeringStudy.save")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LapeError(f"{str(path)!r} is not valid JSON ({err})") from err
        return cls.from_dict(data)

    def mean_success(self, setting: str, config: str) -> float:
        """Mean fresh success over the targets of one configuration (the label) in a setting."""
        rows = self.select(phase="fresh", setting=setting, config=config)
        return sum(r["success_rate"] for r in rows) / max(1, len(rows))

    def _summary_lines(self, setting: str) -> list[str]:
        """Per configuration, the judges' means over the targets, and the method comparison."""
        fresh = self.select(phase="fresh", setting=setting)
        content = setting == "content"
        head = "| configuration | success | py3langid | lingua | agree | fluent | NLL | rep. |"
        lines = [
            "",
            "Means over the targets (fresh prompts): success, target language by each judge, "
            "judges' agreement, fluent, the unsteered model's NLL (nats/token) and repeated "
            "trigrams" + (", content gain (chrF points) and relevant" if content else "") + ":",
            "",
            head + (" gain | relevant |" if content else ""),
            "| --- |" + " ---: |" * (7 + 2 * content),
        ]
        for label in dict.fromkeys(r["config"] for r in fresh):
            rows = [r for r in fresh if r["config"] == label]

            def mean(key: str, rows: list[dict[str, Any]] = rows) -> float:
                return sum(r[key] for r in rows) / len(rows)

            cells = [
                f"{100 * mean('success_rate'):.0f}%",
                f"{100 * mean('target_rate'):.0f}%",
                f"{100 * mean('lingua_rate'):.0f}%",
                f"{100 * mean('agreement'):.0f}%",
                f"{100 * mean('fluent_rate'):.0f}%",
                f"{mean('mean_nll'):.2f}",
                f"{mean('mean_repetition'):.2f}",
            ]
            if content:
                cells += [f"{mean('mean_gain'):+.1f}", f"{100 * mean('relevant_rate'):.0f}%"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lape = self.chosen.get("lape", {}).get("label")
        diff = self.chosen.get("diffmean", {}).get("label")
        if lape and diff:
            a, b = self.mean_success(setting, lape), self.mean_success(setting, diff)
            gap = 100 * abs(b - a)
            verdict = (
                "level"
                if gap < 0.05
                else f"{'DiffMean' if b > a else 'LAPE'} is better by {gap:.1f} points"
            )
            lines += ["", f"Mean success: LAPE {100 * a:.1f}%, DiffMean {100 * b:.1f}%: {verdict}."]
        if content:
            for method in ("lape", "diffmean", "prompt"):
                rows = [r for r in fresh if r["method"] == method]
                if rows:
                    above = [r["target"] for r in rows if r["mean_gain"] > 0]
                    lines.append(
                        f"{method}: content above the other-paragraph control (mean gain > 0) "
                        f"for {len(above)} of {len(rows)} targets ({', '.join(above) or 'none'})."
                    )
        return lines

    def to_markdown(self) -> str:
        """The fresh-prompt tables per setting, the chosen configurations and throughput."""
        meta = self.metadata
        targets = list(meta.get("targets", []))
        lines = [
            "# Steering study",
            "",
            f"Model: {meta.get('model_name')}. Targets: {', '.join(targets)}. "
            f"{meta.get('max_new_tokens')} new tokens per prompt, greedy, KV cache.",
            "",
            "Success = py3langid says the target language AND fluent (unsteered NLL ≤ the target's "
            f"natural-text NLL + {meta.get('nll_margin')} nats, repeated-trigram share ≤ "
            f"{meta.get('max_repetition')}). Content gain = chrF against the own translation − "
            "mean chrF against other paragraphs (sacrebleu); relevant = gain > 0; combined = "
            "harmonic mean of success and relevant rates.",
            "",
            "## Configurations chosen on the development prompts",
            "",
        ]
        for method, cfg in self.chosen.items():
            lines.append(f"- {method}: `{cfg['label']}` (dev score {cfg['score']})")
        for setting in dict.fromkeys(r["setting"] for r in self.rows):
            fresh = self.select(phase="fresh", setting=setting)
            if not fresh:
                continue
            methods = list(dict.fromkeys(r["config"] for r in fresh))
            n = fresh[0]["n"]
            lines += [
                "",
                f"## Fresh prompts: {setting} ({n} prompts per target)",
                "",
                "Cells: success % / py3langid target % / lingua target % "
                + ("/ relevant % / combined %" if setting == "content" else ""),
                "",
                "| configuration | " + " | ".join(targets) + " | ≥50% |",
                "| --- |" + " ---: |" * (len(targets) + 1),
            ]
            for label in methods:
                cells, reached = [], 0
                for t in targets:
                    match = [r for r in fresh if r["config"] == label and r["target"] == t]
                    if not match:
                        cells.append("-")
                        continue
                    r = match[0]
                    reached += r["success_rate"] >= 0.5
                    cell = (
                        f"{100 * r['success_rate']:.0f} / {100 * r['target_rate']:.0f} / "
                        f"{100 * r['lingua_rate']:.0f}"
                    )
                    if setting == "content":
                        cell += f" / {100 * r['relevant_rate']:.0f} / {100 * r['combined']:.0f}"
                    cells.append(cell)
                lines.append(f"| {label} | " + " | ".join(cells) + f" | {reached} |")
            lape = self.targets_reached(setting, "lape")
            lines += [
                "",
                f"LAPE reaches {len(lape)} of {len(targets)} targets ({', '.join(lape) or 'none'}) "
                "at ≥50% success and ≥40 points above every random draw.",
            ]
            agreement = [r["agreement"] for r in fresh]
            lines.append(
                f"py3langid and lingua agree on {100 * sum(agreement) / len(agreement):.0f}% of "
                "outputs (mean over the cells)."
            )
            lines += self._summary_lines(setting)
        if self.throughput:
            tp = self.throughput
            lines += [
                "",
                "## Throughput (side by side, same prompts)",
                "",
                f"Unsteered {tp['unsteered_tok_s']:.1f} tok/s, steered (LAPE hooks) "
                f"{tp['steered_tok_s']:.1f} tok/s: ratio {tp['ratio']:.3f}.",
            ]
        if self.examples:
            lines += ["", "## Example outputs (fresh prompts)", ""]
            for key, texts in self.examples.items():
                for text in texts:
                    lines.append(f"- {key}: `{one_line(text, limit=90)}`")
        return "\n".join(lines) + "\n"

    def figures(self) -> dict[str, Any]:
        """Per setting: mean development success against strength, for LAPE (the chosen mode,
        budget and deactivation), its random control and DiffMean (the chosen layer)."""
        import matplotlib.pyplot as plt

        figs: dict[str, Any] = {}
        lape = self.chosen.get("lape")
        diff = self.chosen.get("diffmean")
        for setting in dict.fromkeys(r["setting"] for r in self.rows):
            fig, ax = plt.subplots(figsize=(5.5, 3.6))
            curves: list[tuple[str, list[dict[str, Any]]]] = []
            if lape is not None:
                keep = {k: lape[k] for k in ("mode", "top_rate", "deactivate")}
                curves.append(
                    ("LAPE", self.select(phase="dev", setting=setting, method="lape", **keep))
                )
                curves.append(
                    ("random", self.select(phase="dev", setting=setting, method="random", **keep))
                )
            if diff is not None:
                curves.append(
                    (
                        "DiffMean",
                        self.select(
                            phase="dev", setting=setting, method="diffmean", layer=diff["layer"]
                        ),
                    )
                )
            for name, rows in curves:
                by_strength: dict[float, list[float]] = {}
                for r in rows:
                    by_strength.setdefault(r["strength"], []).append(r["success_rate"])
                xs = sorted(by_strength)
                ys = [100 * sum(by_strength[x]) / len(by_strength[x]) for x in xs]
                ax.plot(xs, ys, marker="o", label=name)
            ax.set_xlabel("strength")
            ax.set_ylabel("mean success over targets (%)")
            ax.set_ylim(-2, 102)
            ax.set_title(f"Steering, {setting} prompts (development set)")
            ax.legend()
            fig.tight_layout()
            figs[f"steering_study_{setting}"] = fig
        return figs

    def save(self, folder: str | Path) -> Path:
        """Write ``study.json``, ``study.md`` and one PNG per figure into ``folder``, atomically."""
        import matplotlib.pyplot as plt

        with atomic_dir(folder) as tmp:
            (tmp / "study.json").write_text(
                json.dumps(self.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8"
            )
            (tmp / "study.md").write_text(self.to_markdown(), encoding="utf-8")
            for name, fig in self.figures().items():
                fig.savefig(tmp / f"{name}.png", dpi=120)
                plt.close(fig)
        return Path(folder)


def _check_numbers(values: Any, name: str) -> tuple[float, ...]:
    """A non-empty sequence of finite numbers, as floats, or a LapeError naming ``name``."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
        raise LapeError(f"{name} must be a non-empty list of numbers; received {values!r}")
    bad = [
        v
        for v in values
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
    ]
    if bad:
        raise LapeError(f"{name} must hold finite numbers; received {list(values)!r}")
    return tuple(float(v) for v in values)


def _check_sweep(
    strengths: Mapping[str, Sequence[float]] | None, top_rates: Sequence[float]
) -> dict[str, tuple[float, ...]]:
    """The checked strengths per mode (default :data:`DEFAULT_STRENGTHS`); checks ``top_rates``."""
    given = DEFAULT_STRENGTHS if strengths is None else strengths
    if not isinstance(given, Mapping) or not given:
        raise LapeError(
            f"strengths must map at least one mode to its strengths; received {strengths!r}"
        )
    out: dict[str, tuple[float, ...]] = {
        check_mode(mode): _check_numbers(v, f"strengths[{mode!r}]") for mode, v in given.items()
    }
    rates = _check_numbers(top_rates, "top_rates")
    if not all(0.0 < r < 1.0 for r in rates):
        raise LapeError(f"top_rates must lie strictly between 0 and 1; received {list(rates)}")
    return out


def _dev_score(rows: Sequence[dict[str, Any]]) -> tuple[int, float]:
    """(rows at ≥50%, mean) of success over the rows of one configuration, with the combined
    score (success and relevance) in place of success in the content setting."""
    scores = [r["combined"] if r["setting"] == "content" else r["success_rate"] for r in rows]
    reached = sum(x >= 0.5 for x in scores)
    mean = sum(scores) / max(1, len(scores))
    return reached, round(mean, 4)


@dataclass(frozen=True)
class StudyPlan:
    """The checked inputs of :func:`run_steering_study` (see :func:`check_study_inputs`)."""

    targets: tuple[str, ...]
    cues: dict[str, str]
    strengths: dict[str, tuple[float, ...]]
    diffmean_layers: tuple[int, ...]
    diffmean_strengths: tuple[float, ...]


def check_study_inputs(
    stats: ActivationStats,
    means: ResidualMeans | None,
    *,
    model: Any = None,
    reference_corpus: Mapping[str, Sequence[str]],
    parallel: Sequence[Mapping[str, str]] = (),
    targets: Sequence[str] | None = None,
    source: str = "en",
    cues: Mapping[str, str] | None = None,
    strengths: Mapping[str, Sequence[float]] | None = None,
    top_rates: Sequence[float] = (0.01, 0.02, 0.05),
    deactivate: Sequence[str] = ("none", "others"),
    n_random: int = 3,
    n_content: int = 8,
    diffmean_layers: Sequence[int] | None = None,
    diffmean_strengths: Sequence[float] = (0.5, 1.0, 2.0),
) -> StudyPlan:
    """Check the inputs of :func:`run_steering_study` without running anything.

    :func:`run_steering_study` calls it first; the command line calls it before loading the
    model (``model=None`` skips the check of the residual means' width against the model).

    Raises:
        LapeError: naming the first input that is wrong, the value received and what to do.
    """
    languages = tuple(stats.languages)
    targets = tuple(targets) if targets is not None else tuple(x for x in languages if x != source)
    unknown = [t for t in (*targets, source) if t not in languages]
    if unknown:
        raise LapeError(f"unknown language(s) {unknown}: the statistics have {list(languages)}")
    if not targets or len(set(targets)) != len(targets) or source in targets:
        raise LapeError(
            f"targets must be distinct languages other than the source {source!r}, at least one; "
            f"received {list(targets)}"
        )
    cue_for = dict(LANGUAGE_CUES if cues is None else cues)
    no_cue = [t for t in targets if not cue_for.get(t)]
    if no_cue:
        raise LapeError(
            f"the prompting baseline has no cue for target(s) {no_cue}; pass "
            "cues={language: text} with a short instruction in each target language"
        )
    strengths = _check_sweep(strengths, top_rates)
    bad = [d for d in deactivate if d not in ("none", "others")]
    if bad or not deactivate:
        raise LapeError(f"deactivate must be among 'none', 'others'; received {list(deactivate)}")
    for name, value, low in (("n_random", n_random, 1), ("n_content", n_content, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise LapeError(f"{name} must be an int of at least {low}; received {value!r}")
    missing_ref = [t for t in targets if t not in reference_corpus]
    if missing_ref:
        raise LapeError(
            f"reference_corpus has no text for target(s) {missing_ref}, so their fluency could "
            f"not be judged; it has {sorted(reference_corpus)}"
        )
    n_layers = int(stats.active_counts.shape[0])
    if means is not None:
        if tuple(means.languages) != languages:
            raise LapeError(
                f"the residual means have languages {list(means.languages)}, the statistics "
                f"{list(languages)}: collect both in one pass "
                "(collect_activation_stats(..., residual_means=True))"
            )
        cfg = getattr(model, "cfg", None)
        shape = (getattr(cfg, "n_layers", n_layers), getattr(cfg, "d_model", means.d_model))
        if (means.n_layers, means.d_model) != shape or means.n_layers != n_layers:
            raise LapeError(
                f"the residual means are for n_layers={means.n_layers}, d_model={means.d_model}; "
                f"the model has n_layers={shape[0]}, d_model={shape[1]} and the statistics "
                f"{n_layers} layers: collect the means on this model"
            )
    if diffmean_layers is None:
        diffmean_layers = sorted({n_layers // 4, n_layers // 2, (3 * n_layers) // 4})
    diffmean_layers = list(diffmean_layers)
    bad_layers = [
        lay
        for lay in diffmean_layers
        if isinstance(lay, bool) or not isinstance(lay, int) or not 0 <= lay < n_layers
    ]
    if bad_layers or not diffmean_layers:
        raise LapeError(
            f"diffmean_layers must be ints in 0..{n_layers - 1}, at least one; received "
            f"{diffmean_layers!r}"
        )
    diffmean_strengths = _check_numbers(diffmean_strengths, "diffmean_strengths")
    if parallel:
        if len(parallel) < 2 * n_content:
            raise LapeError(
                f"parallel has {len(parallel)} items; the content setting needs 2 * n_content = "
                f"{2 * n_content} (development and fresh): pass more items or a smaller n_content"
            )
        for item in parallel[: 2 * n_content]:
            lacking = [lang for lang in (source, *targets) if not item.get(lang)]
            if lacking:
                raise LapeError(
                    f"a parallel item has no text for {lacking}; it has {sorted(item)}: pass "
                    "items with the source and every target (load_handbook_parallel)"
                )
        _sacrebleu()  # fail now, not after the sweep
    return StudyPlan(
        targets=targets,
        cues={t: cue_for[t] for t in targets},
        strengths=strengths,
        diffmean_layers=tuple(diffmean_layers),
        diffmean_strengths=diffmean_strengths,
    )


def run_steering_study(
    model: Any,
    stats: ActivationStats,
    means: ResidualMeans | None,
    *,
    reference_corpus: Mapping[str, Sequence[str]],
    parallel: Sequence[Mapping[str, str]] = (),
    targets: Sequence[str] | None = None,
    source: str = "en",
    dev_prompts: Mapping[str, Sequence[str]] | None = None,
    fresh_prompts: Mapping[str, Sequence[str]] | None = None,
    n_content: int = 8,
    top_rates: Sequence[float] = (0.01, 0.02, 0.05),
    strengths: Mapping[str, Sequence[float]] | None = None,
    deactivate: Sequence[str] = ("none", "others"),
    diffmean_layers: Sequence[int] | None = None,
    diffmean_strengths: Sequence[float] = (0.5, 1.0, 2.0),
    n_random: int = 3,
    nll_margin: float = 1.0,
    max_repetition: float = 0.5,
    max_new_tokens: int = 24,
    batch_size: int = 512,
    n_examples: int = 2,
    cues: Mapping[str, str] | None = None,
    progress: bool = True,
) -> SteeringStudy:
    """Sweep LAPE steering and its baselines on development prompts; confirm on fresh ones.

    Args:
        model: A TransformerLens model.
        stats: Its :class:`~tl_lape.stats.ActivationStats` (with activation sums).
        means: Its :class:`~tl_lape.ResidualMeans` for the DiffMean baseline
        (None: no
            DiffMean).
        reference_corpus: Held-out ``{language: texts}``: the fluency yardstick.
        parallel: Held-out parallel items (:func:`~tl_lape.sources.corpora.load_handbook_parallel`)
        for
            the content setting; the first ``n_content`` are the development set, the next
            ``n_content`` the fresh set (empty: no content setting).
        targets: Target languages (default: every language of ``stats`` but ``source``).
        source: The language of the English and content prompts.
        dev_prompts: ``{"english": [...], "neutral": [...]}`` overrides of the development
            prompts (default: :data:`~tl_lape.experiments.steering.ENGLISH_PROMPTS`,
            :data:`~tl_lape.experiments.steering.NEUTRAL_PROMPTS`).
        fresh_prompts: The same for the fresh prompts (default:
            :data:`FRESH_ENGLISH_PROMPTS`, :data:`FRESH_NEUTRAL_PROMPTS`).
        n_content: Content items per phase.
        top_rates: LAPE budgets swept.
        strengths: Per LAPE mode, the strengths swept (default :data:`DEFAULT_STRENGTHS`:
            replace 1, 2, 3; add 1, 2, 4; scale 2, 4).
        deactivate: ``"none"`` and/or ``"others"``: whether the other languages' neurons are
            switched off while steering.
        diffmean_layers: Layers of the DiffMean sweep (default: about a quarter, half and three
            quarters of the depth).
        diffmean_strengths: DiffMean strengths swept.
        n_random: Random draws for LAPE's control on the fresh prompts.
        nll_margin: Fluency: the most nats an output's NLL may exceed the target language's
            natural-text NLL.
        max_repetition: Fluency: the largest share of repeated token trigrams.
        max_new_tokens: Tokens generated per prompt.
        batch_size: Rows per generation batch.
        n_examples: Fresh outputs kept per setting, method and target.
        cues: The prompting baseline's cue per target language (default
            :data:`LANGUAGE_CUES`); every target needs one.
        progress: Show a progress bar.

    Returns:
        A :class:`SteeringStudy`.
    """
    from tl_lape.selection import identify_language_neurons

    plan = check_study_inputs(
        stats,
        means,
        model=model,
        reference_corpus=reference_corpus,
        parallel=parallel,
        targets=targets,
        source=source,
        cues=cues,
        strengths=strengths,
        top_rates=top_rates,
        deactivate=deactivate,
        n_random=n_random,
        n_content=n_content,
        diffmean_layers=diffmean_layers,
        diffmean_strengths=diffmean_strengths,
    )
    languages = tuple(stats.languages)
    targets, cue_for, strengths = plan.targets, plan.cues, plan.strengths
    diffmean_layers, diffmean_strengths = plan.diffmean_layers, plan.diffmean_strengths
    lingua = LanguageIdentifier(languages, backend="lingua")
    identifier = LanguageIdentifier(languages)
    started = time.perf_counter()
    reference = reference_nll(model, reference_corpus, n_tokens=max_new_tokens)

    def inputs(phase: str) -> _Inputs:
        given = dev_prompts if phase == "dev" else fresh_prompts
        default = (
            {"english": ENGLISH_PROMPTS, "neutral": NEUTRAL_PROMPTS}
            if phase == "dev"
            else {"english": FRESH_ENGLISH_PROMPTS, "neutral": FRESH_NEUTRAL_PROMPTS}
        )
        prompts = {k: list((given or {}).get(k, v)) for k, v in default.items()}
        items = [dict(x) for x in parallel]
        part = items[:n_content] if phase == "dev" else items[n_content : 2 * n_content]
        if part:
            prompts["content"] = content_prompts(part, source=source)
        return _Inputs(prompts, part)

    sets: dict[tuple[float, int], LanguageNeurons] = {}

    def neuron_set(top_rate: float, seed: int | None) -> LanguageNeurons:
        key = (top_rate, -1 if seed is None else seed)
        if key not in sets:
            lape = sets.get((top_rate, -1)) or identify_language_neurons(stats, top_rate=top_rate)
            sets[(top_rate, -1)] = lape
            if seed is not None:
                sets[key] = random_matched_neurons(lape, seed=seed)
        return sets[key]

    def hooks_for(cfg: _Config, target: str, setting: str) -> list[tuple[str, Any]]:
        if cfg.method in ("lape", "random"):
            neurons = neuron_set(cfg.top_rate, cfg.seed if cfg.method == "random" else None)
            src = source if setting in ("english", "content") else None
            off = deactivated_languages(cfg.deactivate, neurons, target, src)
            return steering_hooks(
                neurons,
                stats,
                target,
                mode=check_mode(cfg.mode),
                strength=cfg.strength,
                deactivate=off or None,
                model=model,
            )
        if cfg.method == "diffmean":
            assert means is not None
            src_lang = source if setting in ("english", "content") else None
            return diffmean_hooks(
                means, target, layer=cfg.layer, strength=cfg.strength, source=src_lang, model=model
            )
        return []

    def judge_rows(
        phase: str,
        setting: str,
        cfg: _Config,
        target: str,
        data: _Inputs,
        prompts: list[str],
        texts: list[str],
        tokens: list[Tensor],
    ) -> dict[str, Any]:
        judged = judge_outputs(
            model,
            prompts,
            texts,
            tokens,
            identifier,
            reference,
            target,
            nll_margin,
            max_repetition,
        )
        second = lingua.identify_many(texts)
        row: dict[str, Any] = {
            "phase": phase,
            "setting": setting,
            "config": cfg.label(),
            **cfg.to_dict(),
            "target": target,
            "n": len(texts),
            "target_rate": judged.rate(target),
            "lingua_rate": sum(x == target for x in second) / max(1, len(second)),
            "agreement": sum(a == b for a, b in zip(judged.languages, second, strict=True))
            / max(1, len(second)),
            "fluent_rate": sum(judged.fluent) / max(1, len(judged.fluent)),
            "success_rate": judged.success_rate(target),
            "mean_nll": float(judged.nll.nanmean()),
            "mean_repetition": float(judged.repetition.mean()),
        }
        if setting == "content":
            gains = []
            for i, text in enumerate(texts):
                own = data.parallel[i][target]
                others = [d[target] for j, d in enumerate(data.parallel) if j != i]
                gains.append(content_gain(text, own, others))
            relevant = sum(g > 0 for g in gains) / max(1, len(gains))
            row["relevant_rate"] = relevant
            row["mean_gain"] = sum(gains) / max(1, len(gains))
            row["combined"] = harmonic_mean(row["success_rate"], relevant)
        row["_texts"] = texts
        return row

    def run(phase: str, configs: Sequence[_Config], bar: Any) -> list[dict[str, Any]]:
        data = inputs(phase)
        rows: list[dict[str, Any]] = []
        for setting, prompts in data.prompts.items():
            hooked = [c for c in configs if c.method not in ("prompt", "none")]
            plan = [(c, t) for c in hooked for t in targets]
            generated = (
                generate_with_hook_sets(
                    model,
                    prompts,
                    [hooks_for(c, t, setting) for c, t in plan],
                    max_new_tokens=max_new_tokens,
                    batch_size=batch_size,
                )
                if plan
                else []
            )
            for (c, t), (texts, tokens) in zip(plan, generated, strict=True):
                rows.append(judge_rows(phase, setting, c, t, data, prompts, texts, tokens))
            for c in configs:
                if c.method == "prompt":
                    for t in targets:
                        cued = [cue_for[t] + p for p in prompts]
                        texts, tokens = generate_texts_and_tokens(
                            model, cued, max_new_tokens=max_new_tokens, batch_size=batch_size
                        )
                        rows.append(judge_rows(phase, setting, c, t, data, prompts, texts, tokens))
                elif c.method == "none":
                    texts, tokens = generate_texts_and_tokens(
                        model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
                    )
                    for t in targets:
                        rows.append(judge_rows(phase, setting, c, t, data, prompts, texts, tokens))
            bar.update(1)
        return rows

    lape_configs = [
        _Config("lape", mode, float(s), float(tr), d)
        for tr in top_rates
        for mode, values in strengths.items()
        for s in values
        for d in deactivate
    ]
    dev_configs: list[_Config] = list(lape_configs)
    if means is not None:
        dev_configs += [
            _Config("diffmean", strength=s, layer=lay)
            for lay in diffmean_layers
            for s in diffmean_strengths
        ]
    n_settings = 2 + bool(parallel)
    bar = tqdm(total=3 * n_settings, desc="steering study", disable=not progress)
    dev_rows = run("dev", dev_configs, bar)

    chosen: dict[str, dict[str, Any]] = {}
    for method in ("lape", "diffmean"):
        candidates = [c for c in dev_configs if c.method == method]
        if not candidates:
            continue
        best = max(
            candidates,
            key=lambda c: _dev_score([r for r in dev_rows if r["config"] == c.label()]),
        )
        score = _dev_score([r for r in dev_rows if r["config"] == best.label()])
        chosen[method] = {"label": best.label(), "score": list(score), **best.to_dict()}
    if "lape" in chosen:
        # LAPE's control on the development prompts: the chosen mode, budget and deactivation
        # with a random set (seed 0), at every strength swept (the figure's random curve)
        c = chosen["lape"]
        dev_rows += run(
            "dev",
            [
                _Config("random", c["mode"], float(s), c["top_rate"], c["deactivate"], seed=0)
                for s in strengths[c["mode"]]
            ],
            bar,
        )

    fresh_configs: list[_Config] = [_Config("none"), _Config("prompt")]
    if "lape" in chosen:
        c = chosen["lape"]
        fresh_configs.append(
            _Config("lape", c["mode"], c["strength"], c["top_rate"], c["deactivate"])
        )
        fresh_configs += [
            _Config("random", c["mode"], c["strength"], c["top_rate"], c["deactivate"], seed=s)
            for s in range(n_random)
        ]
    if "diffmean" in chosen:
        c = chosen["diffmean"]
        fresh_configs.append(_Config("diffmean", strength=c["strength"], layer=c["layer"]))
    fresh_rows = run("fresh", fresh_configs, bar)
    bar.close()

    examples: dict[str, list[str]] = {}
    for r in fresh_rows:
        if r["method"] != "random" or r["seed"] == 0:
            key = f"{r['setting']} / {r['config']} / {r['target']}"
            examples[key] = list(r["_texts"][:n_examples])
    throughput = _throughput(
        model, fresh_configs, hooks_for, targets, inputs("fresh"), max_new_tokens
    )
    rows = tuple({k: v for k, v in r.items() if k != "_texts"} for r in (*dev_rows, *fresh_rows))
    metadata = {
        "model_name": getattr(getattr(model, "cfg", None), "model_name", None),
        "targets": list(targets),
        "source": source,
        "nll_margin": nll_margin,
        "max_repetition": max_repetition,
        "max_new_tokens": max_new_tokens,
        "reference_nll": reference,
        "identifiers": [repr(identifier), repr(lingua)],
        "prompts": {
            "dev": inputs("dev").prompts,
            "fresh": inputs("fresh").prompts,
        },
        "neuron_counts": {f"{k[0]:g}": v.counts() for k, v in sets.items() if k[1] == -1},
        "seconds": round(time.perf_counter() - started, 1),
    }
    return SteeringStudy(rows, chosen, examples, throughput, metadata)


def _throughput(
    model: Any,
    configs: Sequence[_Config],
    hooks_for: Callable[[_Config, str, str], list[tuple[str, Any]]],
    targets: Sequence[str],
    data: _Inputs,
    max_new_tokens: int,
) -> dict[str, float]:
    """Generated tokens per second without and with the chosen LAPE hooks, interleaved."""
    lape = [c for c in configs if c.method == "lape"]
    if not lape:
        return {}
    prompts = list(data.prompts["english"])
    hooks = hooks_for(lape[0], targets[0], "english")
    times = {"unsteered": 0.0, "steered": 0.0}
    counts = {"unsteered": 0, "steered": 0}
    for _ in range(2):
        for name, fwd in (("unsteered", []), ("steered", hooks)):
            t0 = time.perf_counter()
            _, tokens = generate_texts_and_tokens(
                model,
                prompts,
                fwd_hooks=fwd,
                max_new_tokens=max_new_tokens,
                batch_size=len(prompts),
            )
            times[name] += time.perf_counter() - t0
            counts[name] += sum(int(t.numel()) for t in tokens)
    un = counts["unsteered"] / times["unsteered"]
    st = counts["steered"] / times["steered"]
    return {"unsteered_tok_s": un, "steered_tok_s": st, "ratio": st / un}
