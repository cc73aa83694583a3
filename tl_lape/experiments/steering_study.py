"""A steering study judged as a demanding reviewer would: language, fluency, content, baselines.

:func:`run_steering_study` asks whether switching a language's neurons on (and others off)
makes a model write in that language *and still make sense*, against the strongest simple
alternatives, and chooses every configuration on development prompts before reporting on
fresh ones:

- **Settings.** ``english``: English prompts (English is the source language); ``neutral``:
  prompts with no language (a command, a number, a path); ``content``: the first words of an
  English paragraph, whose continuation is compared with the target-language translation of
  the same paragraph (:func:`~tl_lape.sources.corpora.load_handbook_parallel`,
  :func:`~tl_lape.sources.corpora.load_libreoffice_parallel`).
- **Judges** (all in :mod:`tl_lape.judging`, measured on a labelled set in
  ``benchmarks/results/2026-12-04-judges/``). Language by py3langid and by lingua, each over
  every language it knows, ``"other"`` outside the study (and how often they agree); fluency
  by :func:`~tl_lape.judging.outputs.judge_outputs` (the unsteered model's NLL against natural
  text of the target language, repeated token trigrams, and a text rule that loops, digit
  strings and markup fail); content by
  :func:`~tl_lape.judging.content.judge_content`: the chrF (sacrebleu) of the continuation
  against its own translation minus its mean chrF against other paragraphs of the same
  language; and judge-free, :func:`~tl_lape.judging.continuation.content_nll`: the
  teacher-forced NLL of the reference translation after the prompt under the same hooks,
  against after a mismatched prompt (on the fresh prompts only: the sweep does not read it).
  *Success* = identified as the target by py3langid AND
  fluent; in the content setting the *combined* score is the harmonic mean of the success rate
  and the share of outputs whose content gain is positive.
- **Methods.** ``lape`` (:func:`~tl_lape.experiments.steering.config_hooks`: modes, strengths,
  budgets, with or without the other languages' neurons off), ``random`` (the same
  configuration on a random set matched in size and layers), ``diffmean``
  (:func:`~tl_lape.interventions.diffmean.diffmean_hooks`, layer and strength swept),
  ``prompt`` (a short target-language cue before the prompt, no intervention) and ``none``
  (unsteered).
- **Sweep, then confirmation.** Each method's one configuration (for all settings) is chosen on
  the development prompts: the most (setting, target) cells at ≥50% success, then the mean
  success over the cells, with the combined score in place of success in the content
  setting. LAPE's chosen mode, budget and deactivation are then run with a random set at every
  strength (the control curve); the chosen configurations run on the fresh prompts, with
  several random draws for LAPE's control.
- **Records.** Every output is kept with its prompt, method, configuration, target and each
  judge's verdict and score (:func:`~tl_lape.experiments.steering_records.output_records`);
  the report quotes outputs chosen by rule (seeded random and the weakest success), and gives
  each fresh success rate a bootstrap interval over prompts and each difference between two
  methods a paired interval on the same prompts
  (:mod:`tl_lape.experiments.steering_records`).

Example:
    >>> study = run_steering_study(model, stats, means, reference_corpus=heldout,
    ...                            parallel=items)  # doctest: +SKIP
    >>> study.save("steering_report")  # doctest: +SKIP
"""

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from tl_lape.checks import check_choice, check_positive_int
from tl_lape.collection.residual_means import ResidualMeans
from tl_lape.errors import LapeError
from tl_lape.experiments.steering import (
    DEFAULT_MAX_NEW_TOKENS,
    ENGLISH_PROMPTS,
    NEUTRAL_PROMPTS,
    SelectionThresholds,
    SteeringConfig,
    config_hooks,
    one_line,
    selection_thresholds,
)
from tl_lape.experiments.steering_prompts import few_shot_prompt
from tl_lape.experiments.steering_records import (
    choose_examples,
    output_records,
    paired_differences,
    success_estimates,
)
from tl_lape.experiments.tuning import (
    check_rounds,
    halving_chunks,
    sample_configs,
    successive_halving,
)
from tl_lape.formats import atomic_dir, check_tagged_json, parse_json, tagged_json_text
from tl_lape.intervals import Estimate
from tl_lape.interventions.diffmean import diffmean_hooks
from tl_lape.interventions.generation import generate_texts_and_tokens, generate_with_hook_sets
from tl_lape.interventions.hooks import MODES, FwdHooks, Positions
from tl_lape.interventions.norms import added_norm, matched_strength
from tl_lape.judging.content import check_sacrebleu, harmonic_mean, judge_content
from tl_lape.judging.continuation import content_nll
from tl_lape.judging.identification import OTHER, LanguageIdentifier
from tl_lape.judging.metrics import reference_nll
from tl_lape.judging.outputs import DEFAULT_MAX_REPETITION, DEFAULT_NLL_MARGIN, OutputJudge
from tl_lape.neurons import LanguageNeurons, random_matched_neurons
from tl_lape.selection import identify_language_neurons
from tl_lape.stats import ActivationStats

__all__ = [
    "DEFAULT_STRENGTHS",
    "FRESH_ENGLISH_PROMPTS",
    "FRESH_NEUTRAL_PROMPTS",
    "LANGUAGE_CUES",
    "SteeringStudy",
    "StudyPlan",
    "check_study_inputs",
    "content_prompts",
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


#: The seed of the bootstrap over prompts (the same weights for every cell of a setting, so
#: differences are paired).
_BOOT_SEED = 0

#: ``study.json``: its format tag and version (:func:`~tl_lape.formats.tagged_json_text`), the
#: fields :meth:`SteeringStudy.to_dict` writes, and what a reader of a bad file should do.
_FORMAT = "tl_lape.SteeringStudy"
_VERSION = 1
_FIELDS = ("rows", "chosen", "examples", "throughput", "metadata", "intervals", "outputs")
_ADVICE = "write it again with SteeringStudy.save"
#: The fields every row has as text, and the numeric fields a row may have (a number or null).
_ROW_TEXT = ("phase", "setting", "method", "config", "target")
_ROW_NUMBERS = (
    "n",
    "success_rate",
    "target_rate",
    "lingua_rate",
    "agreement",
    "fluent_rate",
    "relevant_rate",
    "mean_gain",
    "combined",
    "strength",
    "top_rate",
    "layer_end",
    "dm_strength",
    "dose",
    "round",
    "applied_strength",
    "added_norm",
    "matched_norm",
)


def _number_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


#: Where the study's hooks may act: every position (the prompt's too) or the new tokens only.
POSITIONS: tuple[str, ...] = ("all", "new")
#: The default multiples of each chosen strength for the dose-response curves.
DEFAULT_DOSES: tuple[float, ...] = (0.5, 1.0, 2.0)


#: The strengths swept per LAPE mode by default.
DEFAULT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "replace": (1.0, 2.0, 3.0),
    "add": (1.0, 2.0, 4.0),
    "scale": (2.0, 4.0),
}


# ============================================================================ inputs


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
    """One configuration of one method of the study; its fields become a row's fields.

    Methods: ``lape``; ``random`` (LAPE's configuration on a random set, norm-matched when the
    plan says so); ``diffmean`` (one layer); ``clas`` (CLaS-Bench's form: the unit direction
    times ``strength`` at layers ``layer`` to ``layer_end - 1``); ``random_diffmean`` and
    ``random_clas`` (the same with a random direction of the same norm); ``combined`` (LAPE's
    configuration plus DiffMean at ``layer`` with ``dm_strength``); ``prompt``, ``fewshot``
    and ``none`` (no hooks). ``positions``: ``"all"`` (the prompt's positions too) or
    ``"new"``; ``dose``: the multiple of the chosen strength (dose-response rows).
    """

    method: str
    mode: str = ""
    strength: float = 0.0
    top_rate: float = 0.0
    deactivate: str = "none"
    layer: int = -1
    seed: int = 0
    layer_end: int = -1
    dm_strength: float = 0.0
    positions: str = "all"
    dose: float = 1.0

    def key(self) -> str:
        """The method as rows and records name it: ``lape``, or ``lape_new`` at new positions."""
        return self.method if self.positions == "all" else f"{self.method}_{self.positions}"

    def label(self) -> str:
        seed = f" seed={self.seed}" if self.method.startswith("random") else ""
        tail = ("" if self.positions == "all" else f" @{self.positions}") + (
            "" if self.dose == 1.0 else f" dose={self.dose:g}"
        )
        lape = (
            f"{self.mode} x{self.strength:g} @{self.top_rate:g} off={self.deactivate}"
            if self.mode
            else ""
        )
        if self.method in ("lape", "random"):
            return f"{self.method} {lape}{seed}{tail}"
        if self.method in ("diffmean", "random_diffmean"):
            return f"{self.method} L{self.layer} x{self.strength:g}{seed}{tail}"
        if self.method in ("clas", "random_clas"):
            return (
                f"{self.method} L{self.layer}-{self.layer_end - 1} a{self.strength:g}{seed}{tail}"
            )
        if self.method == "combined":
            return f"combined {lape} + L{self.layer} x{self.dm_strength:g}{tail}"
        return self.method

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    def steering(self, strength: float | None = None) -> SteeringConfig:
        """The LAPE part of a ``lape``, ``random`` or ``combined`` configuration."""
        return SteeringConfig(
            mode=self.mode,
            strength=self.strength if strength is None else strength,
            deactivate=self.deactivate,
        )

    def scaled(self, dose: float) -> "_Config":
        """The same configuration at ``dose`` times its strength(s)."""
        return replace(
            self, strength=self.strength * dose, dm_strength=self.dm_strength * dose, dose=dose
        )


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
            content setting ``relevant_rate``, ``mean_gain`` and ``combined``; ``other_rate``
            and ``lingua_other_rate``: the share of outputs each identifier places outside the
            study's languages.
        chosen: The configuration chosen on the development prompts, per method.
        examples: Per fresh (setting, configuration, target), the outputs quoted, chosen by
            rule (:func:`~tl_lape.experiments.steering_records.choose_examples`): records with
            a ``rule`` field.
        throughput: Unsteered and steered generation, tokens per second, side by side.
        metadata: Thresholds, prompts, languages, timings.
        outputs: Every output of both phases with its prompt, configuration, target and each
            judge's verdict and score
            (:func:`~tl_lape.experiments.steering_records.output_records`).
        intervals: ``{"success": [...], "differences": [...]}``: the fresh success rates with
            bootstrap intervals over prompts and the paired differences between methods
            (:func:`~tl_lape.experiments.steering_records.success_estimates`,
            :func:`~tl_lape.experiments.steering_records.paired_differences`), estimates as
            plain dicts.
    """

    rows: tuple[dict[str, Any], ...]
    chosen: dict[str, dict[str, Any]]
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[dict[str, Any], ...] = ()
    intervals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

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
            "intervals": self.intervals,
            "outputs": list(self.outputs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SteeringStudy":
        """The inverse of :meth:`to_dict` (the ``format``, ``version`` and ``checksum`` of a
        parsed ``study.json`` are verified, when present)."""
        return cls._from_doc(data, "the steering study given to SteeringStudy.from_dict")

    @classmethod
    def load(cls, folder: str | Path) -> "SteeringStudy":
        """Read the ``study.json`` of a folder written by :meth:`save`: strictly parsed
        (:func:`~tl_lape.formats.parse_json`), its checksum verified and its structure checked,
        or one :class:`~tl_lape.LapeError` line naming the file."""
        path = Path(folder) / "study.json"
        if not path.is_file():
            raise LapeError(f"no study.json in {str(folder)!r}; write one with SteeringStudy.save")
        where = f"the study file {str(path)!r}"
        return cls._from_doc(parse_json(path.read_bytes(), where=where, advice=_ADVICE), where)

    @classmethod
    def _from_doc(cls, data: Any, where: str) -> "SteeringStudy":
        doc = check_tagged_json(
            dict(data) if isinstance(data, Mapping) else data,
            where=where,
            tag=_FORMAT,
            version=_VERSION,
            advice=_ADVICE,
        )
        missing = [k for k in ("rows", "chosen") if k not in doc]
        if missing:
            raise LapeError(
                f"{where} needs the keys 'rows' and 'chosen'; missing {missing}; {_ADVICE}"
            )
        unknown = sorted(set(doc) - set(_FIELDS), key=str)
        if unknown:
            raise LapeError(
                f"{where} has the keys {unknown}, which no tl_lape writes (it writes "
                f"{list(_FIELDS)}); {_ADVICE}"
            )

        def records(value: Any, name: str) -> list[dict[str, Any]]:
            if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
                raise LapeError(
                    f"{where}: {name} must be a list of objects; received {repr(value)[:60]}; "
                    f"{_ADVICE}"
                )
            return [dict(x) for x in value]

        def groups(value: Any, name: str, item: Any) -> dict[str, Any]:
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and item(v) for k, v in value.items()
            ):
                raise LapeError(
                    f"{where}: {name} has the wrong shape (see SteeringStudy's attributes); "
                    f"received {repr(value)[:60]}; {_ADVICE}"
                )
            return dict(value)

        rows = records(doc["rows"], "'rows'")
        for k, row in enumerate(rows):
            bad = [f for f in _ROW_TEXT if not isinstance(row.get(f), str)]
            bad += [f for f in _ROW_NUMBERS if f in row and not _number_or_null(row[f])]
            if "success_rate" not in row:
                bad.append("success_rate")
            if bad:
                raise LapeError(
                    f"{where}: row {k} lacks or mistypes {bad} (text: {list(_ROW_TEXT)}; "
                    f"numbers or null: {list(_ROW_NUMBERS)}); received {repr(row)[:80]}; "
                    f"{_ADVICE}"
                )
        examples = groups(
            doc.get("examples", {}),
            "'examples'",
            lambda v: isinstance(v, list) and all(isinstance(x, dict | str) for x in v),
        )
        throughput = groups(doc.get("throughput", {}), "'throughput'", _number_or_null)
        intervals = groups(
            doc.get("intervals", {}),
            "'intervals'",
            lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
        )
        return cls(
            rows=tuple(rows),
            chosen={
                k: dict(v)
                for k, v in groups(doc["chosen"], "'chosen'", lambda v: isinstance(v, dict)).items()
            },
            examples={
                k: [x if isinstance(x, dict) else {"rule": "first", "text": x} for x in v]
                for k, v in examples.items()
            },
            throughput=throughput,
            metadata=groups(doc.get("metadata", {}), "'metadata'", lambda v: True),
            outputs=tuple(records(doc.get("outputs", []), "'outputs'")),
            intervals={k: [dict(x) for x in v] for k, v in intervals.items()},
        )

    def _repr_html_(self) -> str:
        """Fresh-prompt success per method and target, one coloured table per setting (random:
        the mean over its draws, with their number)."""
        from tl_lape.html import fragment, table

        parts = []
        for setting in dict.fromkeys(r["setting"] for r in self.rows):
            fresh = self.select(phase="fresh", setting=setting)
            targets = list(dict.fromkeys(r["target"] for r in fresh))
            methods = list(dict.fromkeys(r["method"] for r in fresh))
            rows, shade = [], []
            for method in methods:
                draws = max(
                    sum(1 for r in fresh if (r["method"], r["target"]) == (method, target))
                    for target in targets
                )
                label = f"{method} (mean of {draws} draws)" if draws > 1 else method
                cells: list[Any] = [label]
                tints: list[float | None] = [None]
                for target in targets:
                    got = [
                        r["success_rate"]
                        for r in fresh
                        if (r["method"], r["target"]) == (method, target)
                    ]
                    mean = sum(got) / len(got) if got else None
                    cells.append("-" if mean is None else f"{100 * mean:.0f}%")
                    tints.append(mean)
                rows.append(cells)
                shade.append(tints)
            parts.append(
                f"<div><b>{setting}</b> prompts: success (target language and fluent)</div>"
            )
            parts.append(table(["method", *targets], rows, shade=shade, scale=(0.0, 1.0)))
        return fragment(
            "SteeringStudy", *parts, note="fresh prompts; chosen on development prompts"
        )

    def mean_success(self, setting: str, config: str) -> float:
        """Mean fresh success over the targets of one configuration (the label) in a setting."""
        rows = self.select(phase="fresh", setting=setting, config=config)
        return sum(r["success_rate"] for r in rows) / max(1, len(rows))

    def _summary_lines(self, setting: str) -> list[str]:
        """Per configuration, the judges' means over the targets, and the method comparison."""
        fresh = self.select(phase="fresh", setting=setting)
        content = setting == "content"
        # Studies saved before the judge-free content measure have no reference NLL.
        measured = content and all("reference_nll" in r for r in fresh)
        head = "| configuration | success | py3langid | lingua | agree | fluent | NLL | rep. |"
        lines = [
            "",
            "Means over the targets (fresh prompts): success, target language by each judge, "
            "judges' agreement, fluent, the unsteered model's NLL (nats/token) and repeated "
            "trigrams"
            + (", content gain (chrF points) and relevant" if content else "")
            + (
                "; the reference translation's NLL after the prompt under the method "
                "(teacher-forced, nats/token) and its gap to a mismatched prompt"
                if measured
                else ""
            )
            + ":",
            "",
            head
            + (" gain | relevant |" if content else "")
            + (" ref. NLL | gap |" if measured else ""),
            "| --- |" + " ---: |" * (7 + 2 * content + 2 * measured),
        ]
        for label in dict.fromkeys(r["config"] for r in fresh):
            rows = [r for r in fresh if r["config"] == label]

            def mean(key: str, rows: list[dict[str, Any]] = rows) -> float:
                # A NaN (no output to score) is saved as null in study.json: skip it.
                values = [r[key] for r in rows if r[key] is not None and r[key] == r[key]]
                return sum(values) / len(values) if values else math.nan

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
            if measured:
                cells += [f"{mean('reference_nll'):.2f}", f"{mean('reference_gap'):+.3f}"]
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
            paired = self.estimate(
                "differences", setting=setting, first="lape", second="diffmean", target="mean"
            )
            if paired is not None:
                verdict += (
                    f"; paired difference {100 * paired.value:+.1f} points "
                    + (
                        f"[{100 * paired.low:+.1f}, {100 * paired.high:+.1f}]"
                        if paired.low is not None and paired.high is not None
                        else "± n/a"
                    )
                    + (
                        ", the interval excludes 0"
                        if paired.excludes(0.0)
                        else ", the interval includes 0: no difference shown"
                    )
                )
            lines += ["", f"Mean success: LAPE {100 * a:.1f}%, DiffMean {100 * b:.1f}%: {verdict}."]
        if content:
            for method in ("lape", "diffmean", "clas", "combined", "prompt", "fewshot"):
                rows = [r for r in fresh if r["method"] == method]
                if rows:
                    above = [r["target"] for r in rows if r["mean_gain"] > 0]
                    lines.append(
                        f"{method}: content above the other-paragraph control (mean gain > 0) "
                        f"for {len(above)} of {len(rows)} targets ({', '.join(above) or 'none'})."
                    )
        if measured:
            lines += self._reference_lines(setting)
        return lines

    def _reference_lines(self, setting: str) -> list[str]:
        """What the judge-free content measure shows: whether it separates on the unsteered
        model, and each method's reference NLL against the unsteered model's."""
        sep = self.estimate("reference_gap", setting=setting, method="none", target="mean")
        if sep is None:
            return []
        lines = [
            "",
            "Judge-free content measure: after its own prompt the unsteered model finds the "
            f"reference translation likelier than after a mismatched prompt by {sep.format(3)} "
            "nats/token (mean over targets, 95% interval over prompts): "
            + (
                "it separates the true translation from a mismatched one."
                if sep.low is not None and sep.low > 0
                else "it does not separate them here, so the measure cannot judge content on "
                "this model and these prompts."
            ),
        ]
        pairs = (("lape", "none"), ("diffmean", "none"), ("prompt", "none"), ("lape", "random"))
        for first, second in (*pairs, ("lape", "diffmean")):
            est = self.estimate(
                "reference_nll_differences",
                setting=setting,
                first=first,
                second=second,
                target="mean",
            )
            if est is not None:
                lines.append(
                    f"- {first} − {second}, reference NLL: {est.format(3)} nats/token"
                    + (" (interval below 0)" if est.high is not None and est.high < 0 else "")
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
            "Success = py3langid (choosing among every language it knows; `other` outside the "
            "study) says the target language AND fluent (unsteered NLL ≤ the target's "
            f"natural-text NLL + {meta.get('nll_margin')} nats, repeated-trigram share ≤ "
            f"{meta.get('max_repetition')}, and the text rule: no phrase, digit or markup loop). "
            "Intervals: 95% bootstrap over prompts (clustered by prompt for means over "
            "targets); `± n/a` where one prompt allows none. Content gain = chrF against the "
            "own translation − mean chrF against other paragraphs (sacrebleu); relevant = gain "
            "> 0; combined = harmonic mean of success and relevant rates.",
            "",
            "## Configurations chosen on the development prompts",
            "",
        ]
        for method, cfg in self.chosen.items():
            lines.append(f"- {method}: `{cfg['label']}` (dev score {cfg['score']})")
        lines += self._tuning_lines()
        for setting in dict.fromkeys(r["setting"] for r in self.rows):
            fresh = self.select(phase="fresh", setting=setting)
            if not fresh:
                continue
            methods = list(dict.fromkeys(r["config"] for r in fresh))
            n = fresh[0]["n"]
            start = len(lines)
            lines += [
                "",
                f"## Fresh prompts: {setting} ({n} prompts per target)",
                "",
                "Cells: success % [95% interval] / py3langid target % / lingua target % "
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
                        f"{self._success_cell(setting, label, t, r['success_rate'])} / "
                        f"{100 * r['target_rate']:.0f} / {100 * r['lingua_rate']:.0f}"
                    )
                    if setting == "content":
                        cell += f" / {100 * r['relevant_rate']:.0f} / {100 * r['combined']:.0f}"
                    cells.append(cell)
                lines.append(f"| {label} | " + " | ".join(cells) + f" | {reached} |")
            lape = self.targets_reached(setting, "lape")
            if any("†" in line for line in lines[start:]):
                lines += ["", _FLAT_NOTE]
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
            lines += self._difference_lines(setting, targets)
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
            lines += [
                "",
                "## Example outputs (fresh prompts)",
                "",
                "Chosen by rule: one output at random (seeded by the cell's name) and the weakest "
                "success (the success the unsteered model found least likely); the verdict "
                "after each.",
                "",
            ]
            for key, chosen in self.examples.items():
                for ex in chosen:
                    lines.append(
                        f"- {key} ({ex.get('rule')}): `{one_line(ex['text'], limit=90)}`"
                        + _verdict(ex)
                    )
        return "\n".join(lines) + "\n"

    def _tuning_lines(self) -> list[str]:
        """The tuning budgets (what each method tried) and the dose-response table."""
        tuning = self.metadata.get("tuning")
        lines: list[str] = []
        if isinstance(tuning, dict) and tuning.get("methods"):
            lines += [
                "",
                f"Equal tuning budgets: every method tried {tuning['dev_budget']} "
                f"configurations of its grid on the same development prompts, by "
                f"{tuning['halving_rounds']} rounds of successive halving (prompts per round "
                f"and setting: {tuning['prompts_per_round']}).",
                "",
                "| method | grid | tried | per round | outputs generated |",
                "| --- | ---: | ---: | --- | ---: |",
            ]
            for method, t in tuning["methods"].items():
                lines.append(
                    f"| {method} | {t['grid']} | {t['configurations']} | "
                    f"{', '.join(map(str, t['per_round']))} | {t['outputs']} |"
                )
        matched = [r for r in self.select(phase="fresh") if r.get("matched_norm") is not None]
        if matched:
            worst = max(
                abs(r["added_norm"] - r["matched_norm"]) / max(r["matched_norm"], 1e-12)
                for r in matched
            )
            lines += [
                "",
                "LAPE's random controls run at the strength at which they add as large a vector "
                "to the residual stream as LAPE does (measured on development prompts; largest "
                f"relative gap {100 * worst:.1f}%); DiffMean's and CLaS's random directions "
                "have their norms by construction.",
            ]
        for setting in dict.fromkeys(r["setting"] for r in self.select(phase="dose")):
            curves = self.dose_response(setting)
            doses = sorted({x for pts in curves.values() for x, _, _ in pts})
            lines += [
                "",
                f"Dose-response, {setting} prompts (development set): mean success / fluent % "
                "over targets at each multiple of the chosen strength (x1 for the swept methods: "
                "the sweep's outputs of the chosen configuration on the same prompts):",
                "",
                "| method | " + " | ".join(f"x{d:g}" for d in doses) + " |",
                "| --- |" + " ---: |" * len(doses),
            ]
            for method, pts in curves.items():
                cell = {x: f"{100 * y:.0f} / {100 * f:.0f}" for x, y, f in pts}
                lines.append(f"| {method} | " + " | ".join(cell.get(d, "-") for d in doses) + " |")
        return lines

    def estimate(self, kind: str, **where: Any) -> Estimate | None:
        """The stored estimate of ``kind`` whose fields match ``where``, or None.

        ``kind``: ``"success"`` and, where the content measure ran, ``"reference_gap"``
        (fields ``setting``, ``method``, ``config``, ``target``), or ``"differences"`` and
        ``"reference_nll_differences"`` (``setting``, ``first``, ``second``, ``target``: first
        minus second method, paired on the same prompts). ``target="mean"`` is the mean over
        targets, its interval clustered by prompt. Fresh prompts only.

        Example:
            >>> study.estimate("success", setting="english", config=label, target="mean")
            ... # doctest: +SKIP
        """
        for x in self.intervals.get(kind, []):
            if all(x.get(k) == v for k, v in where.items()):
                return Estimate.from_dict(x["estimate"])
        return None

    def _success_cell(self, setting: str, config: str, target: str, rate: float) -> str:
        est = self.estimate("success", setting=setting, config=config, target=target)
        if est is None:
            return f"{100 * rate:.0f}"
        if est.low is None or est.high is None:
            return f"{100 * rate:.0f} ± n/a"
        flat = "†" if est.low == est.high else ""
        return f"{100 * rate:.0f} [{100 * est.low:.0f}, {100 * est.high:.0f}]{flat}"

    def _difference_lines(self, setting: str, targets: Sequence[str]) -> list[str]:
        """The paired differences between methods on the same prompts, per target and mean."""
        rows = [x for x in self.intervals.get("differences", []) if x["setting"] == setting]
        pairs = list(dict.fromkeys((x["first"], x["second"]) for x in rows))
        if not pairs:
            return []
        lines = [
            "",
            "Paired differences in success (points, first minus second method, the same "
            "prompts; random: the mean over its draws), 95% bootstrap interval over prompts; "
            "* where the interval excludes 0:",
            "",
            "| difference | " + " | ".join([*targets, "mean"]) + " |",
            "| --- |" + " ---: |" * (len(targets) + 1),
        ]
        for first, second in pairs:
            cells = []
            for t in [*targets, "mean"]:
                est = self.estimate(
                    "differences", setting=setting, first=first, second=second, target=t
                )
                if est is None:
                    cells.append("-")
                elif est.low is None or est.high is None:
                    cells.append(f"{100 * est.value:+.0f} ± n/a")
                else:
                    star = "*" if est.excludes(0.0) else ""
                    star += "†" if est.low == est.high else ""
                    cells.append(
                        f"{100 * est.value:+.0f} [{100 * est.low:+.0f}, {100 * est.high:+.0f}]"
                        + star
                    )
            lines.append(f"| {first} − {second} | " + " | ".join(cells) + " |")
        flat = any("†" in line for line in lines)
        return [*lines, "", _FLAT_NOTE] if flat else lines

    def figures(self) -> dict[str, Any]:
        """Per setting, the dose-response curves: mean development success and fluency against
        the multiple of each method's chosen strength (random controls dashed). Studies saved
        before the dose-response phase: development success against strength for LAPE, its
        random control and DiffMean."""
        if self.select(phase="dose"):
            return self._dose_figures()
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

    def dose_response(self, setting: str) -> dict[str, list[tuple[float, float, float]]]:
        """Per method, ``(dose, mean success, mean fluent rate)`` over the targets at each dose
        (the multiple of the method's chosen strength), on the development prompts.

        A method chosen by the sweep (``lape``, ``diffmean``, ``clas``) also gets its point at
        x1 when the dose phase did not run it: the sweep's outputs of the chosen configuration
        on the same development prompts (the winner of successive halving ran on all of them).
        """
        out: dict[str, list[tuple[float, float, float]]] = {}
        rows = self.select(phase="dose", setting=setting)
        dose_prompts = {
            o["prompt_index"]
            for o in self.outputs
            if o["phase"] == "dose" and o["setting"] == setting
        }
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            points = []
            for dose in sorted({r["dose"] for r in mine}):
                at = [r for r in mine if r["dose"] == dose]
                points.append(
                    (
                        dose,
                        sum(r["success_rate"] for r in at) / len(at),
                        sum(r["fluent_rate"] for r in at) / len(at),
                    )
                )
            unit = self._chosen_on(setting, method, dose_prompts)
            if unit is not None and all(x != 1.0 for x, _, _ in points):
                points = sorted([*points, unit])
            out[method] = points
        return out

    def _chosen_on(
        self, setting: str, method: str, prompts: set[int]
    ) -> tuple[float, float, float] | None:
        """``(1.0, mean success, mean fluent rate)`` over the targets of the chosen
        configuration's development outputs on ``prompts``, or None."""
        chosen = self.chosen.get(method)
        if not chosen or not prompts:
            return None
        by_target: dict[str, list[Mapping[str, Any]]] = {}
        for o in self.outputs:
            if (
                o["phase"] == "dev"
                and o["setting"] == setting
                and o["config"] == chosen["label"]
                and o["prompt_index"] in prompts
            ):
                by_target.setdefault(o["target"], []).append(o)
        if not by_target or any(len(v) != len(prompts) for v in by_target.values()):
            return None  # the chosen configuration did not run on every dose prompt

        def mean(key: str) -> float:
            rates = [sum(bool(o[key]) for o in v) / len(v) for v in by_target.values()]
            return sum(rates) / len(rates)

        return (1.0, mean("success"), mean("fluent"))

    def _dose_figures(self) -> dict[str, Any]:
        import matplotlib.pyplot as plt

        figs: dict[str, Any] = {}
        for setting in dict.fromkeys(r["setting"] for r in self.select(phase="dose")):
            fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.6), sharex=True)
            for method, points in self.dose_response(setting).items():
                xs = [x for x, _, _ in points]
                style = "--" if method.startswith("random") else "-"
                left.plot(xs, [100 * y for _, y, _ in points], style, marker="o", label=method)
                right.plot(xs, [100 * f for _, _, f in points], style, marker="o", label=method)
            for ax, what in ((left, "success"), (right, "fluent")):
                ax.set_xscale("log", base=2)
                ax.set_xlabel("multiple of the chosen strength")
                ax.set_ylabel(f"mean {what} over targets (%)")
                ax.set_ylim(-2, 102)
            left.set_title(f"Dose-response, {setting} prompts (development set)", fontsize=9)
            right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
            fig.tight_layout()
            figs[f"steering_study_{setting}"] = fig
        return figs

    def save(self, folder: str | Path) -> Path:
        """Write ``study.json``, ``study.md`` and one PNG per figure into ``folder``, atomically."""
        import matplotlib.pyplot as plt

        with atomic_dir(folder) as tmp:
            text = tagged_json_text(self.to_dict(), tag=_FORMAT, version=_VERSION)
            (tmp / "study.json").write_text(text, encoding="utf-8")
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
        check_choice(mode, MODES, "mode"): _check_numbers(v, f"strengths[{mode!r}]")
        for mode, v in given.items()
    }
    rates = _check_numbers(top_rates, "top_rates")
    if not all(0.0 < r < 1.0 for r in rates):
        raise LapeError(f"top_rates must lie strictly between 0 and 1; received {list(rates)}")
    return out


@dataclass(frozen=True)
class StudyPlan:
    """The checked inputs of :func:`run_steering_study` (see :func:`check_study_inputs`)."""

    targets: tuple[str, ...]
    cues: dict[str, str]
    strengths: dict[str, tuple[float, ...]]
    diffmean_layers: tuple[int, ...]
    diffmean_strengths: tuple[float, ...]
    #: The selection thresholds given (``filter_rate``, ``activation_bar_ratio``), checked.
    thresholds: SelectionThresholds = field(default_factory=SelectionThresholds)
    #: CLaS-Bench's DiffMean: layer ranges ``(first, end)`` and alphas swept (empty: none).
    clas_layer_ranges: tuple[tuple[int, int], ...] = ()
    clas_strengths: tuple[float, ...] = ()
    #: Configurations every method tries on the development prompts.
    dev_budget: int = 1
    #: Successive-halving rounds of the development sweep (0: a plain sweep).
    halving_rounds: int = 0
    #: Where the hooks act: the first for the sweep, every one in the fresh phase.
    positions: tuple[str, ...] = ("all",)
    #: Multiples of each chosen strength for the dose-response curves (empty: none).
    doses: tuple[float, ...] = ()
    #: Development prompts per setting the dose-response curves run on (None: all).
    dose_prompts: int | None = None
    #: Few-shot examples per target (empty: no few-shot baseline).
    few_shot: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Whether LAPE's random control is run at the strength that adds LAPE's norm.
    match_norm: bool = True


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
    filter_rate: float | None = None,
    activation_bar_ratio: float | None = None,
    deactivate: Sequence[str] = ("none", "others"),
    n_random: int = 3,
    n_content: int = 8,
    diffmean_layers: Sequence[int] | None = None,
    diffmean_strengths: Sequence[float] = (0.5, 1.0, 2.0),
    clas_layer_ranges: Sequence[tuple[int, int]] | None = None,
    clas_strengths: Sequence[float] | None = None,
    dev_budget: int | None = None,
    halving_rounds: int = 0,
    positions: Sequence[str] = ("all",),
    doses: Sequence[float] = DEFAULT_DOSES,
    dose_prompts: int | None = None,
    few_shot: Mapping[str, Sequence[str]] | None = None,
    match_norm: bool = True,
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
        _check_means(means, languages, n_layers, model)
    layers = _check_diffmean_layers(diffmean_layers, n_layers)
    diffmean_strengths = _check_numbers(diffmean_strengths, "diffmean_strengths")
    if parallel:
        _check_parallel(parallel, n_content, (source, *targets))
    ranges = _check_layer_ranges(clas_layer_ranges, n_layers)
    alphas = (
        _check_numbers(clas_strengths, "clas_strengths")
        if clas_strengths is not None
        else _default_clas_strengths(means, targets, source)
    )
    grids = {"lape": len(top_rates) * sum(len(v) for v in strengths.values()) * len(deactivate)}
    if means is not None:
        grids["diffmean"] = len(layers) * len(diffmean_strengths)
        grids["clas"] = len(ranges) * len(alphas)
    budget = min(grids.values()) if dev_budget is None else dev_budget
    budget = check_positive_int(budget, "dev_budget", example=12)
    small = {m: n for m, n in grids.items() if n < budget}
    if small:
        raise LapeError(
            f"dev_budget={budget} configurations per method, but the grids have {grids}: "
            f"{sorted(small)} cannot try that many; every method must try the same number, so "
            "widen those grids or lower dev_budget"
        )
    if isinstance(match_norm, bool) is False:
        raise LapeError(f"match_norm must be True or False; received {match_norm!r}")
    return StudyPlan(
        targets=targets,
        cues={t: cue_for[t] for t in targets},
        strengths=strengths,
        diffmean_layers=layers,
        diffmean_strengths=diffmean_strengths,
        thresholds=selection_thresholds(
            filter_rate=filter_rate, activation_bar_ratio=activation_bar_ratio
        ),
        clas_layer_ranges=ranges,
        clas_strengths=alphas,
        dev_budget=budget,
        halving_rounds=check_rounds(halving_rounds),
        positions=_check_positions(positions),
        doses=_check_doses(doses),
        dose_prompts=(
            None if dose_prompts is None else check_positive_int(dose_prompts, "dose_prompts")
        ),
        few_shot=_check_few_shot(few_shot, targets),
        match_norm=match_norm,
    )


def _check_positions(positions: Any) -> tuple[str, ...]:
    """Distinct choices among :data:`POSITIONS`, at least one."""
    if isinstance(positions, str) or not isinstance(positions, Sequence) or not positions:
        raise LapeError(
            f"positions must be a non-empty list among {list(POSITIONS)}; received "
            f"{positions!r}; pass e.g. positions=('all', 'new')"
        )
    out = tuple(check_choice(p, POSITIONS, "positions") for p in positions)
    if len(set(out)) != len(out):
        raise LapeError(f"positions must be distinct; received {list(positions)!r}")
    return out


def _check_doses(doses: Any) -> tuple[float, ...]:
    """Positive multiples of the chosen strengths (an empty list: no dose-response curves)."""
    if isinstance(doses, Sequence) and not isinstance(doses, str) and not doses:
        return ()
    values = _check_numbers(doses, "doses")
    if not all(v > 0 for v in values):
        raise LapeError(
            f"doses must be positive multiples of the chosen strength; received {list(values)}"
        )
    return values


def _check_few_shot(
    few_shot: Mapping[str, Sequence[str]] | None, targets: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """At least one non-empty example text per target (``few_shot_examples`` makes them)."""
    if few_shot is None:
        return {}
    if not isinstance(few_shot, Mapping):
        raise LapeError(
            f"few_shot must map each target to its example texts; received {few_shot!r}; "
            "make it with tl_lape.experiments.steering_prompts.few_shot_examples"
        )
    bad = [
        t
        for t in targets
        if isinstance(few_shot.get(t), str)
        or not isinstance(few_shot.get(t), Sequence)
        or not few_shot[t]
        or not all(isinstance(x, str) and x.strip() for x in few_shot[t])
    ]
    if bad:
        raise LapeError(
            f"few_shot has no example texts for target(s) {bad}; it has {sorted(few_shot)}: "
            "pass few_shot_examples(train, targets) (train text, never evaluation text)"
        )
    return {t: tuple(few_shot[t]) for t in targets}


def _check_layer_ranges(
    ranges: Sequence[tuple[int, int]] | None, n_layers: int
) -> tuple[tuple[int, int], ...]:
    """CLaS-Bench layer ranges ``(first, end)`` (default: the first half, the middle half and
    the second half of the depth)."""
    if ranges is None:
        half, quarter = max(1, n_layers // 2), n_layers // 4
        found = [(0, half), (quarter, quarter + half), (n_layers - half, n_layers)]
        return tuple(dict.fromkeys(found))
    out = []
    for r in ranges if isinstance(ranges, Sequence) and not isinstance(ranges, str) else [ranges]:
        ok = (
            isinstance(r, Sequence)
            and len(r) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in r)
            and 0 <= r[0] < r[1] <= n_layers
        )
        if not ok:
            raise LapeError(
                f"clas_layer_ranges must be (first, end) pairs with 0 <= first < end <= "
                f"{n_layers}; received {ranges!r}; pass e.g. [(0, {max(1, n_layers // 2)})]"
            )
        out.append((int(r[0]), int(r[1])))
    if not out:
        raise LapeError("clas_layer_ranges must hold at least one (first, end) pair")
    return tuple(out)


def _default_clas_strengths(
    means: ResidualMeans | None, targets: Sequence[str], source: str
) -> tuple[float, ...]:
    """CLaS-Bench alphas scaled to the model: 0.25, 0.5, 1 and 2 times the median norm of the
    per-layer DiffMean vectors (targets minus source), to 3 significant figures."""
    if means is None:
        return ()
    norms = [
        float(means.direction(t, source)[lay].norm())
        for t in targets
        for lay in range(means.n_layers)
    ]
    median = sorted(norms)[len(norms) // 2]
    return tuple(float(f"{m * median:.3g}") for m in (0.25, 0.5, 1.0, 2.0))


def _check_means(
    means: ResidualMeans, languages: tuple[str, ...], n_layers: int, model: Any
) -> None:
    """The residual means have the statistics' languages and fit the model (when given)."""
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


def _check_diffmean_layers(layers: Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    """The DiffMean layers (default: about a quarter, half and three quarters of the depth)."""
    if layers is None:
        layers = sorted({n_layers // 4, n_layers // 2, (3 * n_layers) // 4})
    layers = list(layers)
    bad_layers = [
        lay
        for lay in layers
        if isinstance(lay, bool) or not isinstance(lay, int) or not 0 <= lay < n_layers
    ]
    if bad_layers or not layers:
        raise LapeError(
            f"diffmean_layers must be ints in 0..{n_layers - 1}, at least one; received {layers!r}"
        )
    return tuple(layers)


def _check_parallel(
    parallel: Sequence[Mapping[str, str]], n_content: int, languages: Sequence[str]
) -> None:
    """Enough parallel items for both phases, each with a text in every language; sacrebleu."""
    if len(parallel) < 2 * n_content:
        raise LapeError(
            f"parallel has {len(parallel)} items; the content setting needs 2 * n_content = "
            f"{2 * n_content} (development and fresh): pass more items or a smaller n_content"
        )
    for item in parallel[: 2 * n_content]:
        lacking = [lang for lang in languages if not item.get(lang)]
        if lacking:
            raise LapeError(
                f"a parallel item has no text for {lacking}; it has {sorted(item)}: pass "
                "items with the source and every target (load_handbook_parallel)"
            )
    check_sacrebleu()  # fail now, not after the sweep


@dataclass
class _StudyRun:
    """What every step of a study shares: the model and its statistics, the checked plan, the
    judges, the prompts of each phase and the neuron sets drawn so far."""

    model: Any
    stats: ActivationStats
    means: ResidualMeans | None
    plan: StudyPlan
    source: str
    judge: OutputJudge
    lingua: LanguageIdentifier
    inputs: dict[str, _Inputs]
    max_new_tokens: int
    batch_size: int
    #: ``(top_rate, seed)`` -> neuron set; seed -1 is the LAPE set itself.
    sets: dict[tuple[float, int], LanguageNeurons] = field(default_factory=dict)
    #: ``(label, target, source)`` of a random control -> (strength, its norm, LAPE's norm).
    matched: dict[tuple[str, str, str | None], tuple[float, float, float]] = field(
        default_factory=dict
    )

    @property
    def norm_prompts(self) -> list[str]:
        """The development prompts on which added norms are measured (up to 4 per setting)."""
        return [p for ps in self.inputs["dev"].prompts.values() for p in ps[:4]]


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
    filter_rate: float | None = None,
    activation_bar_ratio: float | None = None,
    strengths: Mapping[str, Sequence[float]] | None = None,
    deactivate: Sequence[str] = ("none", "others"),
    diffmean_layers: Sequence[int] | None = None,
    diffmean_strengths: Sequence[float] = (0.5, 1.0, 2.0),
    n_random: int = 3,
    nll_margin: float = DEFAULT_NLL_MARGIN,
    max_repetition: float = DEFAULT_MAX_REPETITION,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 512,
    n_examples: int = 1,
    cues: Mapping[str, str] | None = None,
    clas_layer_ranges: Sequence[tuple[int, int]] | None = None,
    clas_strengths: Sequence[float] | None = None,
    dev_budget: int | None = None,
    halving_rounds: int = 0,
    positions: Sequence[str] = ("all",),
    doses: Sequence[float] = DEFAULT_DOSES,
    dose_prompts: int | None = None,
    few_shot: Mapping[str, Sequence[str]] | None = None,
    match_norm: bool = True,
    progress: bool = True,
) -> SteeringStudy:
    """Sweep LAPE steering and its baselines on development prompts; confirm on fresh ones.

    Args:
        model: A TransformerLens model.
        stats: Its :class:`~tl_lape.stats.ActivationStats` (with activation sums).
        means: Its :class:`~tl_lape.ResidualMeans` for the DiffMean baseline (None: no
            DiffMean).
        reference_corpus: Held-out ``{language: texts}``: the fluency yardstick.
        parallel: Held-out parallel items (:func:`~tl_lape.sources.corpora.load_handbook_parallel`)
            for the content setting; the first ``n_content`` are the development set, the next
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
        filter_rate: The selection's firing-filter quantile (None: the selection's default,
            the paper's).
        activation_bar_ratio: The selection's language bar quantile (None: the default).
        strengths: Per LAPE mode, the strengths swept (default :data:`DEFAULT_STRENGTHS`:
            replace 1, 2, 3; add 1, 2, 4; scale 2, 4).
        deactivate: ``"none"`` and/or ``"others"``: whether the other languages' neurons are
            switched off while steering.
        diffmean_layers: Layers of the DiffMean sweep (default: about a quarter, half and three
            quarters of the depth).
        diffmean_strengths: DiffMean strengths swept.
        n_random: Random draws for LAPE's control on the fresh prompts (seeds 0 to
            ``n_random - 1``).
        nll_margin: Fluency: the most nats an output's NLL may exceed the target language's
            natural-text NLL.
        max_repetition: Fluency: the largest share of repeated token trigrams.
        max_new_tokens: Tokens generated per prompt.
        batch_size: Sequences per forward pass (prompts x hook sets generated together).
        n_examples: Fresh outputs quoted at random per setting, configuration and target (seeded
            by the cell's name), besides the weakest success; every output is kept in
            :attr:`SteeringStudy.outputs` either way.
        cues: The prompting baseline's cue per target language (default
            :data:`LANGUAGE_CUES`); every target needs one.
        clas_layer_ranges: DiffMean in CLaS-Bench's form (method ``clas``): the layer ranges
            ``(first, end)`` swept (default: the first, middle and second half of the depth).
        clas_strengths: Its alphas swept, the added norm per layer (default: 0.25, 0.5, 1 and
            2 times the median norm of the per-layer DiffMean vectors).
        dev_budget: Configurations each method (LAPE, DiffMean, CLaS) tries on the development
            prompts, the same for all: a seeded sample of each grid
            (:func:`~tl_lape.experiments.tuning.sample_configs`; default: the smallest grid's
            size). ``metadata["tuning"]`` records what each method tried.
        halving_rounds: Successive-halving rounds of the development sweep
            (:func:`~tl_lape.experiments.tuning.successive_halving`; 0: every configuration on
            every development prompt).
        positions: Where the hooks act: ``"all"`` (the prompt's positions too) and/or ``"new"``
            (the generated tokens only). The sweep uses the first; the fresh phase runs LAPE,
            DiffMean, CLaS and the combination at each (methods ``lape_new`` and so on).
        doses: Multiples of each chosen strength at which every steering method and its random
            control run on the development prompts (phase ``"dose"``): the dose-response
            curves (empty: none).
        dose_prompts: The first this many development prompts of each setting (at least 2 in
            the content setting) run the dose-response curves (None: all of them).
        few_shot: Per target, example texts put before each prompt, one per line (method
            ``fewshot``; :func:`~tl_lape.experiments.steering_prompts.few_shot_examples` picks
            them from train text). None: no few-shot baseline.
        match_norm: Run LAPE's random control at the strength at which it adds as large a
            vector to the residual stream as LAPE does
            (:func:`~tl_lape.interventions.norms.matched_strength`, measured on development
            prompts); the random directions of DiffMean and CLaS match by construction.
        progress: Show a progress bar.

    Returns:
        A :class:`SteeringStudy`.
    """
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
        filter_rate=filter_rate,
        activation_bar_ratio=activation_bar_ratio,
        deactivate=deactivate,
        n_random=n_random,
        n_content=n_content,
        diffmean_layers=diffmean_layers,
        diffmean_strengths=diffmean_strengths,
        clas_layer_ranges=clas_layer_ranges,
        clas_strengths=clas_strengths,
        dev_budget=dev_budget,
        halving_rounds=halving_rounds,
        positions=positions,
        doses=doses,
        dose_prompts=dose_prompts,
        few_shot=few_shot,
        match_norm=match_norm,
    )
    languages = tuple(stats.languages)
    started = time.perf_counter()
    judge = OutputJudge(
        model,
        LanguageIdentifier(languages),
        reference_nll(model, reference_corpus, n_tokens=max_new_tokens),
        nll_margin=nll_margin,
        max_repetition=max_repetition,
    )
    inputs = {
        phase: _phase_inputs(phase, given, parallel, n_content=n_content, source=source)
        for phase, given in (("dev", dev_prompts), ("fresh", fresh_prompts))
    }
    run = _StudyRun(
        model,
        stats,
        means,
        plan,
        source,
        judge,
        LanguageIdentifier(languages, backend="lingua"),
        inputs,
        max_new_tokens,
        batch_size,
    )
    chunks = {
        setting: halving_chunks(
            len(prompts), rounds=plan.halving_rounds, min_size=2 if setting == "content" else 1
        )
        for setting, prompts in inputs["dev"].prompts.items()
    }
    n_steps = (plan.halving_rounds + 2 + bool(plan.doses)) * len(chunks)
    bar = tqdm(total=n_steps, desc="steering study", disable=not progress)
    grids = _dev_grids(plan, top_rates, deactivate, with_diffmean=means is not None)
    groups = {m: sample_configs(g, plan.dev_budget, method=m) for m, g in grids.items()}
    dev_rows: list[dict[str, Any]] = []

    def run_round(alive: list[_Config], k: int) -> None:
        dev_rows.extend(
            _run_phase(run, "dev", alive, bar, chunk={s: c[k] for s, c in chunks.items()}, round_=k)
        )

    def score(config: _Config) -> tuple[int, float]:
        return _dev_score([r for r in dev_rows if r["config"] == config.label()])

    best, history = successive_halving(groups, run_round, score, rounds=plan.halving_rounds)
    chosen = _choose_on_dev(best, dev_rows)
    dose_chunk = {
        setting: slice(0, max(plan.dose_prompts, 2 * (setting == "content")))
        for setting in chunks
        if plan.dose_prompts is not None
    }
    dose_rows = (
        _run_phase(run, "dose", _dose_configs(chosen, plan), bar, chunk=dose_chunk or None)
        if plan.doses
        else []
    )
    fresh_configs = _fresh_configs(chosen, n_random, plan)
    fresh_rows = _run_phase(run, "fresh", fresh_configs, bar)
    bar.close()
    examples = _fresh_examples(fresh_rows, n_examples)
    throughput = _throughput(run, fresh_configs)
    every = (*dev_rows, *dose_rows, *fresh_rows)
    outputs = tuple(o for r in every for o in r["_outputs"])
    rows = tuple({k: v for k, v in r.items() if k != "_outputs"} for r in every)
    intervals = {
        name: [{**x, "estimate": x["estimate"].to_dict()} for x in found]
        for name, found in (
            ("success", success_estimates(outputs, seed=_BOOT_SEED)),
            ("differences", paired_differences(outputs, seed=_BOOT_SEED)),
            ("reference_gap", success_estimates(outputs, key="reference_gap", seed=_BOOT_SEED)),
            (
                "reference_nll_differences",
                paired_differences(outputs, key="reference_nll", seed=_BOOT_SEED),
            ),
        )
    }
    metadata = _study_metadata(run, seconds=time.perf_counter() - started)
    metadata["tuning"] = _tuning_record(plan, grids, history, chunks, dev_rows)
    return SteeringStudy(rows, chosen, examples, throughput, metadata, outputs, intervals)


def _phase_inputs(
    phase: str,
    given: Mapping[str, Sequence[str]] | None,
    parallel: Sequence[Mapping[str, str]],
    *,
    n_content: int,
    source: str,
) -> _Inputs:
    """The prompts of one phase per setting (``given`` overrides the defaults), and its part of
    the parallel items (the first ``n_content`` for dev, the next ``n_content`` for fresh)."""
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


def _dev_grids(
    plan: StudyPlan, top_rates: Sequence[float], deactivate: Sequence[str], *, with_diffmean: bool
) -> dict[str, list[_Config]]:
    """Each method's grid for the development sweep: LAPE at every budget, mode, strength and
    deactivation; DiffMean at every layer and strength; CLaS at every layer range and alpha.
    Every method then tries :attr:`StudyPlan.dev_budget` of its grid."""
    at = plan.positions[0]
    grids = {
        "lape": [
            _Config("lape", mode, float(s), float(tr), d, positions=at)
            for tr in top_rates
            for mode, values in plan.strengths.items()
            for s in values
            for d in deactivate
        ]
    }
    if with_diffmean:
        grids["diffmean"] = [
            _Config("diffmean", strength=s, layer=lay, positions=at)
            for lay in plan.diffmean_layers
            for s in plan.diffmean_strengths
        ]
        grids["clas"] = [
            _Config("clas", strength=a, layer=first, layer_end=end, positions=at)
            for first, end in plan.clas_layer_ranges
            for a in plan.clas_strengths
        ]
    return grids


def _dev_score(rows: Sequence[dict[str, Any]]) -> tuple[int, float]:
    """(cells at ≥50%, mean) of success over the (setting, target) cells of one
    configuration, each cell pooled over the halving rounds' prompt chunks (weighted by
    prompts), with the combined score (success and relevance) in the content setting."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["setting"], r["target"]), []).append(r)
    scores = []
    for (setting, _), group in cells.items():
        n = sum(r["n"] for r in group) or 1
        success = sum(r["success_rate"] * r["n"] for r in group) / n
        if setting == "content":
            relevant = sum(r["relevant_rate"] * r["n"] for r in group) / n
            scores.append(harmonic_mean(success, relevant))
        else:
            scores.append(success)
    reached = sum(x >= 0.5 for x in scores)
    mean = sum(scores) / max(1, len(scores))
    return reached, round(mean, 4)


def _choose_on_dev(
    best: Mapping[str, _Config], rows: Sequence[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per method, the configuration the sweep chose, its label and development score."""
    chosen: dict[str, dict[str, Any]] = {}
    for method, config in best.items():
        score = _dev_score([r for r in rows if r["config"] == config.label()])
        chosen[method] = {"label": config.label(), "score": list(score), **config.to_dict()}
    return chosen


def _config_of(chosen: Mapping[str, Any], **changes: Any) -> _Config:
    """The :class:`_Config` of a chosen configuration (its stored fields), with ``changes``."""
    fields = {k: chosen[k] for k in _Config.__dataclass_fields__ if k in chosen}
    return replace(_Config(**fields), **changes)


def _steering_configs(chosen: Mapping[str, dict[str, Any]], positions: str) -> dict[str, _Config]:
    """The chosen steering configurations at ``positions``, and LAPE + DiffMean combined."""
    out = {m: _config_of(c, positions=positions) for m, c in chosen.items()}
    if "lape" in chosen and "diffmean" in chosen:
        dm = chosen["diffmean"]
        out["combined"] = _config_of(
            chosen["lape"],
            method="combined",
            layer=dm["layer"],
            dm_strength=dm["strength"],
            positions=positions,
        )
    return out


def _controls(config: _Config, seeds: Sequence[int]) -> list[_Config]:
    """The random controls of a steering configuration, one per seed: LAPE's on random sets,
    DiffMean's and CLaS's in random directions (the combination has none of its own)."""
    method = {"lape": "random", "diffmean": "random_diffmean", "clas": "random_clas"}.get(
        config.method
    )
    if method is None:
        return []
    return [replace(config, method=method, seed=s) for s in seeds]


def _dose_configs(chosen: Mapping[str, dict[str, Any]], plan: StudyPlan) -> list[_Config]:
    """The dose-response sweep on the development prompts: every chosen steering configuration
    (and the combination) and its first random control, at each dose times its strength."""
    configs = []
    for config in _steering_configs(chosen, plan.positions[0]).values():
        for dose in plan.doses:
            configs += [c.scaled(dose) for c in (config, *_controls(config, [0]))]
    return configs


def _fresh_configs(
    chosen: Mapping[str, dict[str, Any]], n_random: int, plan: StudyPlan
) -> list[_Config]:
    """The confirmation: no intervention, the prompting cue, few-shot prompting (when
    given); each chosen steering configuration and the combination at every ``positions``,
    with ``n_random`` random controls each at the first."""
    configs: list[_Config] = [_Config("none"), _Config("prompt")]
    if plan.few_shot:
        configs.append(_Config("fewshot"))
    for k, at in enumerate(plan.positions):
        for config in _steering_configs(chosen, at).values():
            configs.append(config)
            if k == 0:
                configs += _controls(config, range(n_random))
    return configs


def _sliced(data: _Inputs, chunk: Mapping[str, slice] | None) -> tuple[_Inputs, dict[str, int]]:
    """The prompts (and content items) of one halving chunk per setting, and each setting's
    offset into the full list."""
    if chunk is None:
        return data, dict.fromkeys(data.prompts, 0)
    prompts = {s: list(ps[chunk[s]]) for s, ps in data.prompts.items()}
    parallel = data.parallel[chunk["content"]] if "content" in chunk else data.parallel
    return _Inputs(prompts, parallel), {s: chunk[s].start for s in data.prompts}


def _run_phase(
    run: _StudyRun,
    phase: str,
    configs: Sequence[_Config],
    bar: Any,
    *,
    chunk: Mapping[str, slice] | None = None,
    round_: int | None = None,
) -> list[dict[str, Any]]:
    """Every configuration on every setting of a phase (``"dose"``: the development prompts;
    ``chunk``: one halving round's part of them), each output judged: one row per (setting,
    configuration, target)."""
    data, offsets = _sliced(run.inputs["dev" if phase == "dose" else phase], chunk)
    rows: list[dict[str, Any]] = []
    for setting in data.prompts:
        where = _Where(phase, setting, data, offsets[setting], round_)
        rows += _run_hooked(run, where, [c for c in configs if _is_hooked(c)])
        rows += _run_unhooked(run, where, [c for c in configs if not _is_hooked(c)])
        bar.update(1)
    return rows


@dataclass(frozen=True)
class _Where:
    """Which prompts a batch of rows ran on: phase, setting, the prompts (a halving chunk or
    all), the chunk's offset into the setting's prompts and the halving round (or None)."""

    phase: str
    setting: str
    data: _Inputs
    offset: int = 0
    round_: int | None = None

    @property
    def prompts(self) -> list[str]:
        return self.data.prompts[self.setting]


def _is_hooked(config: _Config) -> bool:
    return config.method not in ("prompt", "fewshot", "none")


def _run_hooked(run: _StudyRun, where: _Where, configs: Sequence[_Config]) -> list[dict[str, Any]]:
    """The configurations with hooks, for every target, generated together in one batch of
    hook sets."""
    cells = [(c, t) for c in configs for t in run.plan.targets]
    if not cells:
        return []
    generated = generate_with_hook_sets(
        run.model,
        where.prompts,
        [_hooks_for(run, c, t, where.setting) for c, t in cells],
        max_new_tokens=run.max_new_tokens,
        batch_size=run.batch_size,
    )
    return [
        _judge_row(run, where, c, t, texts, tokens)
        for (c, t), (texts, tokens) in zip(cells, generated, strict=True)
    ]


def _cued(run: _StudyRun, config: _Config, target: str, prompts: Sequence[str]) -> list[str]:
    """The prompts as a method without hooks sees them: after the target's cue (``prompt``),
    after the target's few-shot examples (``fewshot``), or as they are."""
    if config.method == "prompt":
        return [run.plan.cues[target] + p for p in prompts]
    if config.method == "fewshot":
        return [few_shot_prompt(run.plan.few_shot[target], p) for p in prompts]
    return list(prompts)


def _run_unhooked(
    run: _StudyRun, where: _Where, configs: Sequence[_Config]
) -> list[dict[str, Any]]:
    """The baselines without hooks: the prompting cue and few-shot prompting (per target) and
    no intervention (one generation judged against every target)."""
    rows = []
    for c in configs:
        if c.method == "none":
            texts, tokens = _generate(run, where.prompts)
            for t in run.plan.targets:
                rows.append(_judge_row(run, where, c, t, texts, tokens))
            continue
        for t in run.plan.targets:
            texts, tokens = _generate(run, _cued(run, c, t, where.prompts))
            rows.append(_judge_row(run, where, c, t, texts, tokens))
    return rows


def _generate(run: _StudyRun, prompts: Sequence[str]) -> tuple[list[str], list[Tensor]]:
    return generate_texts_and_tokens(
        run.model, prompts, max_new_tokens=run.max_new_tokens, batch_size=run.batch_size
    )


def _prompt_language(run: _StudyRun, setting: str) -> str | None:
    """The language the prompts of a setting are written in (None: neutral prompts)."""
    return run.source if setting in ("english", "content") else None


def _neuron_set(run: _StudyRun, top_rate: float, seed: int | None) -> LanguageNeurons:
    """The LAPE set at ``top_rate`` (``seed`` None) or a random set matched to it, drawn once."""
    key = (top_rate, -1 if seed is None else seed)
    if key not in run.sets:
        lape = run.sets.get((top_rate, -1)) or identify_language_neurons(
            run.stats, top_rate=top_rate, **run.plan.thresholds
        )
        run.sets[(top_rate, -1)] = lape
        if seed is not None:
            run.sets[key] = random_matched_neurons(lape, seed=seed)
    return run.sets[key]


def _hooks_for(
    run: _StudyRun, config: _Config, target: str, setting: str, start: int | None = None
) -> FwdHooks:
    """The hooks of one configuration toward ``target`` in ``setting`` (none for the
    baselines without hooks). ``start``: in a teacher-forced pass, the first position of the
    continuation, where a ``"new"`` configuration's hooks begin (in generation they follow
    the generated tokens themselves)."""
    source = _prompt_language(run, setting)
    positions: Positions = None
    if config.positions == "new":
        positions = "new" if start is None else slice(start, None)
    method = config.method
    hooks: FwdHooks = []
    if method in ("lape", "random", "combined"):
        seed = config.seed if method == "random" else None
        neurons = _neuron_set(run, config.top_rate, seed)
        strength = config.strength
        if method == "random" and run.plan.match_norm:
            strength = _matched(run, config, target, source)[0]
        hooks = config_hooks(
            config.steering(strength),
            neurons,
            run.stats,
            target,
            source=source,
            model=run.model,
            positions=positions,
        )
    if method in ("diffmean", "random_diffmean", "clas", "random_clas", "combined"):
        if run.means is None:
            raise LapeError(f"the {method} configuration needs residual means; none were given")
        clas = method in ("clas", "random_clas")
        hooks = hooks + diffmean_hooks(
            run.means,
            target,
            layer=range(config.layer, config.layer_end) if clas else config.layer,
            strength=config.dm_strength if method == "combined" else config.strength,
            source=source,
            model=run.model,
            positions=positions,
            normalize=clas,
            random_seed=config.seed if method.startswith("random_") else None,
        )
    return hooks


def _matched(
    run: _StudyRun, config: _Config, target: str, source: str | None
) -> tuple[float, float, float]:
    """A random LAPE control's norm-matched strength, the norm it adds and LAPE's, measured
    on the development prompts (:func:`~tl_lape.interventions.norms.matched_strength`)."""
    key = (config.label(), target, source)
    if key not in run.matched:
        lape = _neuron_set(run, config.top_rate, None)
        control = _neuron_set(run, config.top_rate, config.seed)
        prompts = run.norm_prompts

        def hooks(neurons: LanguageNeurons, strength: float) -> FwdHooks:
            return config_hooks(
                config.steering(strength),
                neurons,
                run.stats,
                target,
                source=source,
                model=run.model,
            )

        goal = added_norm(run.model, hooks(lape, config.strength), prompts)
        strength, got = matched_strength(
            run.model, lambda s: hooks(control, s), goal, prompts, start=config.strength
        )
        run.matched[key] = (strength, got, goal)
    return run.matched[key]


def _judge_row(
    run: _StudyRun,
    where: _Where,
    config: _Config,
    target: str,
    texts: list[str],
    tokens: list[Tensor],
) -> dict[str, Any]:
    """One row: the outputs of one configuration toward one target, judged by py3langid and
    fluency (:class:`~tl_lape.judging.outputs.OutputJudge`), lingua and, in the content
    setting, the content judge (:func:`~tl_lape.judging.content.judge_content`)."""
    phase, setting, data = where.phase, where.setting, where.data
    prompts = _cued(run, config, target, where.prompts)
    judged = run.judge(prompts, texts, tokens, target=target)
    scored = [run.lingua.identify_scored(text) for text in texts]
    second = [lang for lang, _ in scored]
    row: dict[str, Any] = {
        "phase": phase,
        "setting": setting,
        "config": config.label(),
        **config.to_dict(),
        "method": config.key(),
        "target": target,
        "n": len(texts),
        "target_rate": judged.rate(target),
        "lingua_rate": sum(x == target for x in second) / max(1, len(second)),
        "agreement": sum(a == b for a, b in zip(judged.languages, second, strict=True))
        / max(1, len(second)),
        "fluent_rate": judged.fluent_rate(),
        "success_rate": judged.success_rate(target),
        "other_rate": judged.rate(OTHER),
        "lingua_other_rate": sum(x == OTHER for x in second) / max(1, len(second)),
        "mean_nll": float(judged.nll.nanmean()),
        "mean_repetition": float(judged.repetition.mean()),
    }
    gains = None
    extra: dict[str, list[float]] = {}
    if setting == "content":
        content = judge_content(texts, data.parallel, target)
        row["relevant_rate"] = content.relevant_rate
        row["mean_gain"] = content.mean_gain
        row["combined"] = harmonic_mean(row["success_rate"], content.relevant_rate)
        gains = content.gains
    if setting == "content" and phase == "fresh":
        # The judge-free content measure: the reference translation, teacher-forced under the
        # same hooks after the same prompts, against after a mismatched prompt. Only on the
        # fresh prompts, where it is reported; the sweep chooses by the judges.
        hooks: FwdHooks | Callable[[int], FwdHooks] = _hooks_for(run, config, target, setting)
        if config.positions == "new":  # the hooks act from the reference's first token on
            hooks = partial(_hooks_for, run, config, target, setting)
        scores = content_nll(
            run.model,
            prompts,
            [item[target] for item in data.parallel],
            fwd_hooks=hooks,
            max_tokens=run.max_new_tokens,
            batch_size=run.batch_size,
        )
        row["reference_nll"] = float(scores.own.mean())
        row["reference_gap"] = float(scores.gap.mean())
        extra = {
            "reference_nll": scores.own.tolist(),
            "mismatched_nll": scores.mismatched.tolist(),
            "reference_gap": scores.gap.tolist(),
        }
    if where.round_ is not None:
        row["round"] = where.round_
    if config.method == "random" and run.plan.match_norm:
        applied, got, goal = _matched(run, config, target, _prompt_language(run, setting))
        row.update(applied_strength=applied, added_norm=got, matched_norm=goal)
    cell = {
        "phase": phase,
        "setting": setting,
        "method": config.key(),
        "config": config.label(),
        "seed": config.seed,
        "target": target,
        **({} if where.round_ is None else {"round": where.round_}),
    }
    records = output_records(cell, judged, scored, gains=gains, extra=extra)
    for record in records:
        record["prompt_index"] += where.offset  # the index among the phase's prompts
    row["_outputs"] = records
    return row


def _fresh_examples(
    rows: Sequence[dict[str, Any]], n_examples: int
) -> dict[str, list[dict[str, Any]]]:
    """The quoted fresh outputs per (setting, configuration, target), chosen by rule
    (:func:`~tl_lape.experiments.steering_records.choose_examples`); of the random draws,
    seed 0."""
    records = [
        o
        for r in rows
        if not r["method"].startswith("random") or r["seed"] == 0
        for o in r["_outputs"]
    ]
    return choose_examples(records, n_random=n_examples)


#: The footnote of a zero-width bootstrap interval.
_FLAT_NOTE = (
    "† Every prompt gave the same outcome, so the bootstrap over prompts has no spread to show; "
    "the rate is still uncertain: with n prompts all failing, a 95% upper bound is about 3/n "
    "(the rule of three)."
)


def _verdict(example: Mapping[str, Any]) -> str:
    """`` (lang/lingua, fluent or why not)`` after a quoted output, when it has verdicts."""
    if "language" not in example:
        return ""
    fluent = "fluent" if example.get("fluent") else "not fluent"
    if example.get("text_fluent") is False:
        fluent += " (text rule)"
    return f" ({example['language']}/{example.get('lingua')}, {fluent})"


def _study_metadata(run: _StudyRun, *, seconds: float) -> dict[str, Any]:
    """Thresholds, prompts, judges, neuron counts and time of a study, for its report."""
    return {
        "model_name": getattr(getattr(run.model, "cfg", None), "model_name", None),
        "targets": list(run.plan.targets),
        "source": run.source,
        "nll_margin": run.judge.nll_margin,
        "max_repetition": run.judge.max_repetition,
        "max_new_tokens": run.max_new_tokens,
        "reference_nll": run.judge.reference,
        "identifiers": [repr(run.judge.identifier), repr(run.lingua)],
        "selection_thresholds": dict(run.plan.thresholds),
        "prompts": {phase: data.prompts for phase, data in run.inputs.items()},
        "positions": list(run.plan.positions),
        "doses": list(run.plan.doses),
        "dose_prompts": run.plan.dose_prompts,
        "few_shot": {t: list(v) for t, v in run.plan.few_shot.items()},
        "clas_layer_ranges": [list(r) for r in run.plan.clas_layer_ranges],
        "clas_strengths": list(run.plan.clas_strengths),
        "match_norm": run.plan.match_norm,
        "norm_prompts": run.norm_prompts,
        "neuron_counts": {f"{k[0]:g}": v.counts() for k, v in run.sets.items() if k[1] == -1},
        "seconds": round(seconds, 1),
    }


def _tuning_record(
    plan: StudyPlan,
    grids: Mapping[str, Sequence[_Config]],
    history: Sequence[Mapping[str, Sequence[_Config]]],
    chunks: Mapping[str, Sequence[slice]],
    dev_rows: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """What each method tried on the development prompts: its grid, the budget, the
    configurations per halving round, the prompts per round and setting, and the outputs
    generated (one per configuration, target and prompt)."""
    methods = {}
    for method, grid in grids.items():
        rows = [r for r in dev_rows if r["method"] == method]
        methods[method] = {
            "grid": len(grid),
            "configurations": len(history[0].get(method, ())) if history else 0,
            "per_round": [len(h.get(method, ())) for h in history],
            "outputs": sum(r["n"] for r in rows),
        }
    return {
        "dev_budget": plan.dev_budget,
        "halving_rounds": plan.halving_rounds,
        "prompts_per_round": {s: [c.stop - c.start for c in cs] for s, cs in chunks.items()},
        "methods": methods,
    }


def _throughput(run: _StudyRun, configs: Sequence[_Config]) -> dict[str, float]:
    """Generated tokens per second without and with the chosen LAPE hooks, interleaved."""
    lape = [c for c in configs if c.method == "lape"]
    if not lape:
        return {}
    prompts = list(run.inputs["fresh"].prompts["english"])
    hooks = _hooks_for(run, lape[0], run.plan.targets[0], "english")
    times = {"unsteered": 0.0, "steered": 0.0}
    counts = {"unsteered": 0, "steered": 0}
    for _ in range(2):
        for name, fwd in (("unsteered", []), ("steered", hooks)):
            t0 = time.perf_counter()
            _, tokens = generate_texts_and_tokens(
                run.model,
                prompts,
                fwd_hooks=fwd,
                max_new_tokens=run.max_new_tokens,
                batch_size=len(prompts),
            )
            times[name] += time.perf_counter() - t0
            counts[name] += sum(int(t.numel()) for t in tokens)
    un = counts["unsteered"] / times["unsteered"]
    st = counts["steered"] / times["steered"]
    return {"unsteered_tok_s": un, "steered_tok_s": st, "ratio": st / un}
