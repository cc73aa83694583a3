"""Steering generation with language neurons: one run, and a sweep with random controls.

The paper's second causal test: while the model generates, switch other languages' neurons off
and push the target language's neurons on (:func:`~tl_lape.interventions.hooks.steering_hooks`),
and see whether the output changes language. This module runs that test honestly:

- A steering configuration (:class:`SteeringConfig`: mode, strength, which languages' neurons
  to switch off) becomes hooks in one place, :func:`config_hooks`.
- Generation under the hooks is :mod:`tl_lape.interventions.generation` (batched, greedy by
  default, with the KV cache; many hook sets in one batch).
- Two prompt settings: :data:`ENGLISH_PROMPTS` (the paper's cross-lingual setting: the model
  must leave the prompt's language) and :data:`NEUTRAL_PROMPTS` (a command name, a number, a
  path, a bare line start: the language is open and the intervention alone decides it).
- The outputs are judged by :func:`~tl_lape.judging.outputs.judge_outputs`: the output
  language by an offline identifier restricted to the languages of the study
  (:class:`~tl_lape.judging.identification.LanguageIdentifier`), and fluency, so that a switch
  into gibberish does not count: the *unsteered* model's NLL of the generated text against its
  NLL on natural text of the target language of the same length, and the share of repeated
  token trigrams. *Success* is an output that is in the target language and fluent.
- :func:`run_steering_sweep`: success and off-target rates per setting, target, mode, strength
  and neuron budget (``top_rate``), each next to a random neuron set matched in size and layers.

Example:
    >>> report = run_steering_sweep(model, stats, reference_corpus=heldout)  # doctest: +SKIP
    >>> print(report.to_markdown())  # doctest: +SKIP
"""

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from tl_lape.checks import check_choice, check_rate, check_seed
from tl_lape.errors import LapeError
from tl_lape.interventions.generation import (
    generate_texts_and_tokens,
    generate_with_hook_sets,
)
from tl_lape.interventions.hooks import (
    DEFAULT_MODE,
    MODES,
    FwdHooks,
    Mode,
    Positions,
    steering_hooks,
)
from tl_lape.judging.identification import LanguageIdentifier
from tl_lape.judging.metrics import reference_nll
from tl_lape.judging.outputs import (
    DEFAULT_MAX_REPETITION,
    DEFAULT_NLL_MARGIN,
    OutputJudge,
    SteeringOutputs,
)
from tl_lape.neurons import LanguageNeurons, random_matched_neurons
from tl_lape.selection import identify_language_neurons
from tl_lape.stats import ActivationStats

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "ENGLISH_PROMPTS",
    "NEUTRAL_PROMPTS",
    "SelectionThresholds",
    "SteeringConfig",
    "SteeringReport",
    "SteeringResult",
    "config_hooks",
    "deactivated_languages",
    "one_line",
    "run_steering_sweep",
    "selection_thresholds",
    "steer",
]

logger = logging.getLogger(__name__)

#: Tokens generated per prompt when steering: the default of :func:`steer`,
#: :func:`run_steering_sweep`, :func:`~tl_lape.experiments.steering_study.run_steering_study`
#: and ``tl-lape steer --max-new-tokens``.
DEFAULT_MAX_NEW_TOKENS = 32

#: Unfinished English sentences on the handbook's topics (system administration), written for
#: this project: the cross-lingual setting, where steering must take the model out of English.
ENGLISH_PROMPTS: tuple[str, ...] = (
    "The main advantage of this approach is that",
    "To install a new package, the administrator",
    "When the server starts, it",
    "Most users prefer this configuration because",
    "The network interface can be configured by",
    "In this chapter, we will see how",
    "This file contains the list of",
    "If the system does not boot, you should",
    "The security team publishes updates for",
    "Each user has a home directory where",
    "The kernel loads the modules that",
    "A backup of the database should be",
    "The graphical desktop offers several",
    "Before upgrading the distribution, it is important to",
    "The mail server receives messages and",
    "This command displays the",
)

#: Prompts without a language of their own: a bare line start, command names, numbers, paths.
#: Here the intervention alone decides the output language.
NEUTRAL_PROMPTS: tuple[str, ...] = (
    "\n",
    "apt-get",
    "1.",
    "/etc/",
    "$ ",
    "2024",
    "/var/log/",
    "dpkg",
    "#",
    "*",
    "42",
    "http://",
    "-",
    "(",
    "systemctl",
    "ls -l",
)

_PROMPT_SETS: dict[str, tuple[str, ...]] = {"english": ENGLISH_PROMPTS, "neutral": NEUTRAL_PROMPTS}
#: The language the prompts of a setting are written in (None: no language).
_PROMPT_LANGUAGE: dict[str, str | None] = {"english": "en", "neutral": None}

#: What ``deactivate=`` accepts besides a list of languages.
_DEACTIVATE = ("none", "others", "source")


# ============================================================================ configuration


@dataclass(frozen=True, kw_only=True)
class SteeringConfig:
    """One steering configuration: how to push the target's neurons, and what to switch off.

    Attributes:
        mode: ``"replace"``, ``"add"`` or ``"scale"`` (see
            :func:`~tl_lape.interventions.hooks.steering_hooks`); default
            :data:`~tl_lape.interventions.hooks.DEFAULT_MODE`.
        strength: The strength of the mode.
        deactivate: Which languages' neurons to switch off in the same pass: ``"none"``,
            ``"others"`` (all but the target), ``"source"`` (the prompts' language) or a tuple
            of languages (see :func:`deactivated_languages`).

    Example:
        >>> SteeringConfig(mode="add", strength=4.0, deactivate="others")
        SteeringConfig(mode='add', strength=4.0, deactivate='others')
    """

    mode: str = DEFAULT_MODE
    strength: float | int = 1.0
    deactivate: str | tuple[str, ...] = "none"

    def __post_init__(self) -> None:
        check_choice(self.mode, MODES, "mode")
        if isinstance(self.deactivate, str):
            check_choice(self.deactivate, _DEACTIVATE, "deactivate")


def config_hooks(
    config: SteeringConfig,
    neurons: LanguageNeurons,
    stats: ActivationStats,
    target: str,
    *,
    source: str | None = None,
    model: Any = None,
    positions: Positions = None,
) -> FwdHooks:
    """The hooks of one steering configuration toward ``target``: the one place a configuration
    becomes hooks (:func:`steer`, the sweep and the study all call it).

    Args:
        config: Mode, strength and deactivation.
        neurons: The neuron set steered (LAPE's or a random control).
        stats: The :class:`~tl_lape.stats.ActivationStats` giving the mean activations.
        target: The language steered into.
        source: The prompts' language (for ``deactivate="source"``).
        model: The model the hooks are for (checks the set fits it).
        positions: Which positions to steer (see :mod:`tl_lape.interventions.hooks`; None:
            all, the prompt's too; ``"new"``: the generated tokens only).

    Returns:
        :func:`~tl_lape.interventions.hooks.steering_hooks` with the deactivated languages of
        :func:`deactivated_languages`.
    """
    off = deactivated_languages(config.deactivate, neurons, target, source)
    return steering_hooks(
        neurons,
        stats,
        target,
        mode=cast(Mode, config.mode),
        strength=config.strength,
        deactivate=off or None,
        model=model,
        positions=positions,
    )


def deactivated_languages(
    deactivate: str | Sequence[str], neurons: LanguageNeurons, target: str, source: str | None
) -> list[str]:
    """The languages whose neurons a configuration's ``deactivate`` switches off; never
    ``target``.

    Args:
        deactivate: ``"none"``, ``"others"`` (all of ``neurons.languages`` but the target),
            ``"source"`` (the prompts' language, unless it is the target or has no neurons) or
            a list of languages.
        neurons: The neuron set (its languages are the candidates).
        target: The language steered into.
        source: The prompts' language (needed by ``"source"``).

    Example:
        >>> ln = LanguageNeurons.from_indices({"en": {0: [1]}, "fr": {0: [2]}, "zh": {0: [3]}},
        ...                                   n_layers=1, d_mlp=4)
        >>> deactivated_languages("others", ln, "fr", None)
        ['en', 'zh']
        >>> deactivated_languages("source", ln, "fr", "en")
        ['en']
    """
    if isinstance(deactivate, str):
        if deactivate == "others":
            return [lang for lang in neurons.languages if lang != target]
        if deactivate == "source":
            if source is None:
                raise LapeError(
                    "deactivate='source' needs the prompts' language; received source=None: "
                    "pass source= (e.g. source='en')"
                )
            return [source] if source != target and source in neurons.languages else []
        if deactivate == "none":
            return []
        raise LapeError(
            f"deactivate must be 'others', 'source', 'none' or a list of languages; received "
            f"{deactivate!r}"
        )
    langs = list(deactivate)
    unknown = [lang for lang in langs if lang not in neurons.languages]
    if unknown:
        raise LapeError(
            f"unknown language(s) {unknown} in deactivate: the neuron set has "
            f"{list(neurons.languages)}; name only those"
        )
    return [lang for lang in langs if lang != target]


class SelectionThresholds(TypedDict, total=False):
    """The selection thresholds given to a sweep or study (a missing one keeps the default)."""

    filter_rate: float
    activation_bar_ratio: float


def selection_thresholds(
    *, filter_rate: float | None = None, activation_bar_ratio: float | None = None
) -> SelectionThresholds:
    """The selection thresholds that were given, checked, as keyword arguments of
    :func:`~tl_lape.selection.identify_language_neurons` (a threshold left at None keeps the
    selection's default, the paper's).

    Example:
        >>> selection_thresholds(filter_rate=0.9)
        {'filter_rate': 0.9}
    """
    out = SelectionThresholds()
    if filter_rate is not None:
        out["filter_rate"] = check_rate(filter_rate, "filter_rate")
    if activation_bar_ratio is not None:
        out["activation_bar_ratio"] = check_rate(activation_bar_ratio, "activation_bar_ratio")
    return out


# ============================================================================ one steering run


def steer(
    model: Any,
    neurons: LanguageNeurons,
    stats: ActivationStats,
    target: str,
    prompts: Sequence[str],
    *,
    mode: str = DEFAULT_MODE,
    strength: float = 1.0,
    deactivate: str | Sequence[str] = "none",
    source: str | None = None,
    identifier: LanguageIdentifier | None = None,
    reference: Mapping[str, float] | None = None,
    nll_margin: float = DEFAULT_NLL_MARGIN,
    max_repetition: float = DEFAULT_MAX_REPETITION,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 16,
) -> SteeringOutputs:
    """Generate from ``prompts`` steered toward ``target``, and judge the outputs.

    Args:
        model: A TransformerLens model.
        neurons: The language neurons (or a random control set with the same languages).
        stats: The :class:`~tl_lape.stats.ActivationStats` giving the mean activations.
        target: The language to steer into.
        prompts: The prompts.
        mode: ``"replace"``, ``"add"`` or ``"scale"`` (see
            :func:`~tl_lape.interventions.hooks.steering_hooks`); default
            :data:`~tl_lape.interventions.hooks.DEFAULT_MODE`.
        strength: The strength of the mode.
        deactivate: Which languages' neurons to switch off in the same pass: ``"none"`` (the
            default), ``"others"`` (all but the target), ``"source"`` (the prompts' language),
            or a list.
        source: The prompts' language (for ``deactivate="source"`` and the off-target rate).
        identifier: Judges the output language (default: py3langid over ``neurons.languages``).
        reference: :func:`~tl_lape.judging.metrics.reference_nll` per language, for the fluency
            criterion (without it only repetition is checked).
        nll_margin: Fluent outputs have NLL at most this far above the target's reference.
        max_repetition: Fluent outputs have at most this
            :func:`~tl_lape.judging.metrics.repetition_rate`.
        max_new_tokens: Generated tokens per prompt at most.
        batch_size: Sequences per forward pass (prompts per generation batch).

    Returns:
        The judged :class:`~tl_lape.judging.outputs.SteeringOutputs`.
    """
    if target not in neurons.languages:
        raise LapeError(
            f"unknown target language {target!r}: the neuron set has {list(neurons.languages)}; "
            "steer toward one of those"
        )
    off = deactivate if isinstance(deactivate, str) else tuple(deactivate)
    config = SteeringConfig(mode=mode, strength=strength, deactivate=off)
    hooks = config_hooks(config, neurons, stats, target, source=source, model=model)
    texts, tokens = generate_texts_and_tokens(
        model, prompts, fwd_hooks=hooks, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    judge = OutputJudge(
        model,
        identifier or LanguageIdentifier(neurons.languages),
        reference,
        nll_margin=nll_margin,
        max_repetition=max_repetition,
    )
    return judge(prompts, texts, tokens, target=target)


# ============================================================================ the sweep


@dataclass(frozen=True)
class SteeringResult:
    """Aggregate numbers of one steering configuration and its random control.

    Attributes:
        setting: ``"english"`` or ``"neutral"`` prompts.
        target: The target language.
        mode: The steering mode.
        strength: Its strength.
        top_rate: The neuron budget the set was selected with.
        n_prompts: Number of prompts.
        target_rate: Share of outputs identified as the target (fluent or not).
        fluent_rate: Share of fluent outputs.
        success_rate: Share of outputs in the target and fluent.
        off_target_rate: Share in a language that is neither the target nor the prompts'.
        random_target_rate: ``target_rate`` of the random control.
        random_success_rate: ``success_rate`` of the random control.
        mean_nll: Mean unsteered NLL of the outputs.
        mean_repetition: Mean repetition rate of the outputs.
        examples: A few outputs, for reading.
    """

    setting: str
    target: str
    mode: str
    strength: float
    top_rate: float
    n_prompts: int
    target_rate: float
    fluent_rate: float
    success_rate: float
    off_target_rate: float
    random_target_rate: float
    random_success_rate: float
    mean_nll: float
    mean_repetition: float
    examples: tuple[str, ...] = ()

    @property
    def margin(self) -> float:
        """``success_rate - random_success_rate``."""
        return self.success_rate - self.random_success_rate

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values."""
        return {
            "setting": self.setting,
            "target": self.target,
            "mode": self.mode,
            "strength": self.strength,
            "top_rate": self.top_rate,
            "n_prompts": self.n_prompts,
            "target_rate": self.target_rate,
            "fluent_rate": self.fluent_rate,
            "success_rate": self.success_rate,
            "off_target_rate": self.off_target_rate,
            "random_target_rate": self.random_target_rate,
            "random_success_rate": self.random_success_rate,
            "mean_nll": self.mean_nll,
            "mean_repetition": self.mean_repetition,
            "examples": list(self.examples),
        }


@dataclass(frozen=True)
class SteeringReport:
    """All configurations of a steering sweep, the unsteered baseline and the judging setup.

    Attributes:
        results: One :class:`SteeringResult` per setting, target, mode, strength and budget.
        baseline: Per setting, the identified-language counts of the unsteered outputs.
        reference_nll: The natural-text NLL per language used by the fluency criterion.
        metadata: Settings of the sweep (thresholds, prompts, identifier, ...).
    """

    results: tuple[SteeringResult, ...]
    baseline: dict[str, dict[str, int]] = field(default_factory=dict)
    reference_nll: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def configurations(self) -> list[tuple[str, float, float]]:
        """The distinct ``(mode, strength, top_rate)`` of the sweep, in order."""
        return list(dict.fromkeys((r.mode, r.strength, r.top_rate) for r in self.results))

    def n_targets_reached(
        self,
        setting: str,
        config: tuple[str, float, float],
        *,
        min_success: float = 0.5,
        min_margin: float = 0.4,
    ) -> int:
        """Targets whose success rate is at least ``min_success`` and ``min_margin`` above the
        random control, in ``setting`` under ``config``."""
        return sum(
            r.success_rate >= min_success and r.margin >= min_margin
            for r in self.results
            if r.setting == setting and (r.mode, r.strength, r.top_rate) == config
        )

    def best(
        self, setting: str, *, min_success: float = 0.5, min_margin: float = 0.4
    ) -> tuple[tuple[str, float, float], int] | None:
        """The configuration reaching the most targets in ``setting`` (ties: higher mean
        success), and that number."""
        configs = [
            c
            for c in self.configurations()
            if any(
                r.setting == setting and (r.mode, r.strength, r.top_rate) == c for r in self.results
            )
        ]
        if not configs:
            return None

        def key(c: tuple[str, float, float]) -> tuple[int, float]:
            rows = [
                r
                for r in self.results
                if r.setting == setting and (r.mode, r.strength, r.top_rate) == c
            ]
            mean = sum(r.success_rate for r in rows) / len(rows)
            return self.n_targets_reached(
                setting, c, min_success=min_success, min_margin=min_margin
            ), mean

        best = max(configs, key=key)
        return best, key(best)[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values."""
        return {
            "results": [r.to_dict() for r in self.results],
            "baseline": {k: dict(v) for k, v in self.baseline.items()},
            "reference_nll": dict(self.reference_nll),
            "metadata": dict(self.metadata),
        }

    def to_markdown(self, *, examples: int = 1) -> str:
        """Markdown tables per setting: success (random control) per target and configuration."""
        lines = ["### Steering generation", ""]
        meta = self.metadata
        lines.append(
            f"Success = identified as the target language by {meta.get('identifier', '?')} AND "
            f"fluent (unsteered NLL ≤ target's natural-text NLL + {meta.get('nll_margin')} nats, "
            f"repeated-trigram share ≤ {meta.get('max_repetition')}). In each cell: success % "
            "(matched random set's success %) / share in the target language regardless of "
            "fluency. Deactivated in the same pass: "
            f"{meta.get('deactivate')}."
        )
        if self.reference_nll:
            ref = ", ".join(f"{k} {v:.2f}" for k, v in self.reference_nll.items())
            lines += [
                "",
                f"Natural-text NLL per language (first {meta.get('max_new_tokens')} tokens): "
                f"{ref}.",
            ]
        for setting in dict.fromkeys(r.setting for r in self.results):
            rows = [r for r in self.results if r.setting == setting]
            targets = list(dict.fromkeys(r.target for r in rows))
            configs = list(dict.fromkeys((r.mode, r.strength, r.top_rate) for r in rows))
            lines += ["", f"#### {setting} prompts ({rows[0].n_prompts} prompts)", ""]
            if setting in self.baseline:
                base = ", ".join(f"{k}: {v}" for k, v in sorted(self.baseline[setting].items()))
                lines += [f"Unsteered outputs by identified language: {base}.", ""]
            lines.append("| mode | strength | top_rate | " + " | ".join(targets) + " | reached |")
            lines.append("| --- | ---: | ---: |" + " ---: |" * (len(targets) + 1))
            for config in configs:
                cells = []
                for target in targets:
                    match = [
                        r
                        for r in rows
                        if r.target == target and (r.mode, r.strength, r.top_rate) == config
                    ]
                    if not match:
                        cells.append("-")
                        continue
                    r = match[0]
                    cells.append(
                        f"{100 * r.success_rate:.0f} ({100 * r.random_success_rate:.0f}) / "
                        f"{100 * r.target_rate:.0f}"
                    )
                reached = self.n_targets_reached(setting, config)
                lines.append(
                    f"| {config[0]} | {config[1]:g} | {config[2]:g} | "
                    + " | ".join(cells)
                    + f" | {reached} |"
                )
            best = self.best(setting)
            if best is not None:
                (mode, strength, top_rate), n = best
                lines += [
                    "",
                    f"Best configuration: {mode} x{strength:g} at top_rate {top_rate:g}: "
                    f"{n} of {len(targets)} targets at ≥50% success and ≥40 points above random.",
                ]
                if examples:
                    lines.append("")
                    for r in rows:
                        if (r.mode, r.strength, r.top_rate) == (mode, strength, top_rate):
                            for text in r.examples[:examples]:
                                lines.append(f"- {r.target}: `{one_line(text)}`")
        return "\n".join(lines) + "\n"

    def figures(self) -> dict[str, Figure]:
        """One heatmap per setting: success rate per target (columns) and configuration (rows)."""
        from tl_lape.plots import plot_matrix

        figs: dict[str, Figure] = {}
        for setting in dict.fromkeys(r.setting for r in self.results):
            rows = [r for r in self.results if r.setting == setting]
            targets = list(dict.fromkeys(r.target for r in rows))
            configs = list(dict.fromkeys((r.mode, r.strength, r.top_rate) for r in rows))
            matrix = torch.full((len(configs), len(targets)), math.nan, dtype=torch.float64)
            for r in rows:
                matrix[configs.index((r.mode, r.strength, r.top_rate)), targets.index(r.target)] = (
                    100 * r.margin
                )
            figs[f"steering_{setting}"] = plot_matrix(
                matrix,
                rows=[f"{m} x{s:g} @{t:g}" for m, s, t in configs],
                columns=targets,
                fmt="{:.0f}",
                cmap="RdBu_r",
                center=0.0,
                title=f"Steering, {setting} prompts: success − random control (points)",
                xlabel="target language",
                ylabel="mode, strength, top_rate",
                colorbar_label="points",
            )
        return figs


def one_line(text: str, limit: int = 80) -> str:
    """``text`` on one line for a Markdown code span: whitespace collapsed, backticks replaced,
    cut to ``limit`` characters with an ellipsis.

    Example:
        >>> one_line("a   `b`  c", limit=5)
        "a 'b…"
    """
    flat = " ".join(text.split()).replace("`", "'")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


_DEFAULT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "replace": (1.0, 4.0, 8.0),
    "add": (5.0, 10.0),
    "scale": (3.0, 10.0),
}


@dataclass(frozen=True)
class _SweepPlan:
    """The checked inputs of a sweep: what runs, on which prompts, judged how."""

    targets: tuple[str, ...]
    settings: tuple[str, ...]
    prompt_sets: dict[str, tuple[str, ...]]
    #: ``(top_rate, mode, strength)`` in sweep order.
    configs: list[tuple[float, str, float]]
    deactivate: str
    seed: int
    thresholds: SelectionThresholds


@dataclass(frozen=True)
class _SweepRun:
    """What every step of a sweep shares: the model, the judge and the generation budget."""

    model: Any
    stats: ActivationStats
    plan: _SweepPlan
    judge: OutputJudge
    max_new_tokens: int
    batch_size: int
    n_examples: int


def run_steering_sweep(
    model: Any,
    stats: ActivationStats,
    *,
    reference_corpus: Mapping[str, Sequence[str]] | None = None,
    targets: Sequence[str] | None = None,
    modes: Sequence[str] = MODES,
    strengths: Mapping[str, Sequence[float]] | None = None,
    top_rates: Sequence[float] = (0.01, 0.02, 0.05),
    filter_rate: float | None = None,
    activation_bar_ratio: float | None = None,
    settings: Sequence[str] = ("english", "neutral"),
    prompts: Mapping[str, Sequence[str]] | None = None,
    deactivate: str = "none",
    seed: int = 0,
    identifier: LanguageIdentifier | None = None,
    nll_margin: float = DEFAULT_NLL_MARGIN,
    max_repetition: float = DEFAULT_MAX_REPETITION,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 256,
    n_examples: int = 2,
    progress: bool = True,
) -> SteeringReport:
    """Steer toward every target under every mode, strength and neuron budget, with controls.

    For each ``top_rate`` the language neurons are selected from ``stats``
    (:func:`~tl_lape.selection.identify_language_neurons`) and a random set matched to them in
    size and layers is drawn (:func:`~tl_lape.neurons.random_matched_neurons`). Each
    configuration runs on each prompt setting with the LAPE set and with the random set; the
    outputs are judged by language, NLL and repetition
    (:func:`~tl_lape.judging.outputs.judge_outputs`).

    Args:
        model: A TransformerLens model.
        stats: The :class:`~tl_lape.stats.ActivationStats` (with activation sums).
        reference_corpus: Held-out ``{language: texts}`` for the fluency yardstick
            (:func:`~tl_lape.judging.metrics.reference_nll`); without it fluency only checks
            repetition.
        targets: Target languages (default: all languages of ``stats`` but English).
        modes: Steering modes to sweep.
        strengths: Strengths per mode (default: replace 1, 4, 8; add 5, 10; scale 3, 10).
        top_rates: Neuron budgets.
        filter_rate: The selection's firing-filter quantile (None: the selection's default,
            the paper's).
        activation_bar_ratio: The selection's language bar quantile (None: the default).
        settings: Prompt settings, ``"english"`` and/or ``"neutral"``.
        prompts: Override the prompts of a setting (``{setting: prompts}``).
        deactivate: Other languages' neurons switched off in the same pass: ``"none"`` (the
            default: the target's neurons alone), ``"others"`` (all but the target) or
            ``"source"`` (English for English prompts, nothing for neutral ones). Which works
            better depends on the model and the setting: on the demo model ``"others"`` helped
            from English prompts (3 targets reached at 5% of neurons, against 2) and did not
            help from neutral ones (3 against 5).
        seed: Seed of the random control sets.
        identifier: The output-language judge (default: py3langid over the stats' languages).
        nll_margin: Fluency: NLL at most this far above the target's natural-text NLL.
        max_repetition: Fluency: repeated-trigram share at most this.
        max_new_tokens: Tokens generated per prompt.
        batch_size: Sequences per forward pass: the prompts of several targets and controls are
            generated together (:func:`~tl_lape.interventions.generation.generate_with_hook_sets`).
        n_examples: Outputs kept per configuration for reading.
        progress: Show a progress bar over configurations.

    Returns:
        A :class:`SteeringReport`.
    """
    plan = _plan_sweep(
        stats,
        targets=targets,
        modes=modes,
        strengths=strengths,
        top_rates=top_rates,
        thresholds=selection_thresholds(
            filter_rate=filter_rate, activation_bar_ratio=activation_bar_ratio
        ),
        settings=settings,
        prompts=prompts,
        deactivate=deactivate,
        seed=seed,
    )
    reference = (
        reference_nll(model, reference_corpus, n_tokens=max_new_tokens)
        if reference_corpus is not None
        else None
    )
    judge = OutputJudge(
        model,
        identifier or LanguageIdentifier(tuple(stats.languages)),
        reference,
        nll_margin=nll_margin,
        max_repetition=max_repetition,
    )
    run = _SweepRun(model, stats, plan, judge, max_new_tokens, batch_size, n_examples)
    baseline = _unsteered_baseline(run)
    results: list[SteeringResult] = []
    sets: dict[float, tuple[LanguageNeurons, LanguageNeurons]] = {}
    bar = tqdm(total=len(plan.configs) * len(plan.settings), desc="steering", disable=not progress)
    for top_rate, mode, strength in plan.configs:
        if top_rate not in sets:
            sets[top_rate] = _lape_and_control(stats, top_rate, plan)
        for setting in plan.settings:
            results += _steer_setting(run, sets[top_rate], top_rate, mode, strength, setting)
            bar.update(1)
    bar.close()
    metadata = _sweep_metadata(run, sets)
    return SteeringReport(tuple(results), baseline, dict(reference or {}), metadata)


def _plan_sweep(
    stats: ActivationStats,
    *,
    targets: Sequence[str] | None,
    modes: Sequence[str],
    strengths: Mapping[str, Sequence[float]] | None,
    top_rates: Sequence[float],
    thresholds: SelectionThresholds,
    settings: Sequence[str],
    prompts: Mapping[str, Sequence[str]] | None,
    deactivate: str,
    seed: int,
) -> _SweepPlan:
    """Check the sweep's inputs before any work; the configurations in sweep order."""
    languages = tuple(stats.languages)
    targets = (
        tuple(targets) if targets is not None else tuple(lang for lang in languages if lang != "en")
    )
    unknown = [t for t in targets if t not in languages]
    if unknown:
        raise LapeError(
            f"unknown target language(s) {unknown}: the statistics have {list(languages)}; "
            "choose targets among those"
        )
    bad_modes = [m for m in modes if m not in MODES]
    if bad_modes:
        raise LapeError(f"modes must be among 'replace', 'add', 'scale'; received {bad_modes}")
    bad_settings = [s for s in settings if s not in _PROMPT_SETS]
    if bad_settings:
        raise LapeError(f"settings must be among {sorted(_PROMPT_SETS)}; received {bad_settings}")
    check_choice(deactivate, _DEACTIVATE, "deactivate")
    strengths = _check_strengths(modes, strengths)
    return _SweepPlan(
        targets=targets,
        settings=tuple(settings),
        prompt_sets={s: tuple((prompts or {}).get(s, _PROMPT_SETS[s])) for s in settings},
        configs=[
            (top_rate, mode, float(strength))
            for top_rate in top_rates
            for mode in modes
            for strength in strengths[mode]
        ],
        deactivate=deactivate,
        seed=check_seed(seed),
        thresholds=thresholds,
    )


def _check_strengths(
    modes: Sequence[str], strengths: Mapping[str, Sequence[float]] | None
) -> dict[str, Sequence[float]]:
    """The strengths per mode (default ``_DEFAULT_STRENGTHS``): one for each mode, finite."""
    strengths = dict(strengths) if strengths is not None else dict(_DEFAULT_STRENGTHS)
    missing = [m for m in modes if m not in strengths]
    if missing:
        raise LapeError(
            f"strengths gives no value for mode(s) {missing}; received {strengths}: give "
            "strengths for every mode swept, e.g. {'add': [5.0, 10.0]}"
        )
    bad_strengths = {
        m: [v for v in strengths[m] if not math.isfinite(v)]
        for m in modes
        if any(not math.isfinite(v) for v in strengths[m])
    }
    if bad_strengths:
        raise LapeError(
            f"strengths must be finite numbers; received {bad_strengths}: give numbers such as "
            "add=5,10"
        )
    return strengths


def _unsteered_baseline(run: _SweepRun) -> dict[str, dict[str, int]]:
    """Per setting, the identified languages of the unsteered outputs."""
    baseline: dict[str, dict[str, int]] = {}
    for setting in run.plan.settings:
        prompts = run.plan.prompt_sets[setting]
        texts, tokens = generate_texts_and_tokens(
            run.model, prompts, max_new_tokens=run.max_new_tokens, batch_size=run.batch_size
        )
        baseline[setting] = run.judge(prompts, texts, tokens, target=None).language_counts()
    return baseline


def _lape_and_control(
    stats: ActivationStats, top_rate: float, plan: _SweepPlan
) -> tuple[LanguageNeurons, LanguageNeurons]:
    """The language neurons at ``top_rate`` and a random set matched to them."""
    lape = identify_language_neurons(stats, top_rate=top_rate, **plan.thresholds)
    return lape, random_matched_neurons(lape, seed=plan.seed)


def _setting_deactivate(deactivate: str, source: str | None) -> str:
    """``deactivate`` for prompts in ``source``: ``"source"`` switches nothing off for prompts
    without a language."""
    return "none" if deactivate == "source" and source is None else deactivate


def _steer_setting(
    run: _SweepRun,
    pair: tuple[LanguageNeurons, LanguageNeurons],
    top_rate: float,
    mode: str,
    strength: float,
    setting: str,
) -> list[SteeringResult]:
    """One configuration on one prompt setting: every target with the LAPE set and the control,
    generated in one batch, judged, one :class:`SteeringResult` per target."""
    source = _PROMPT_LANGUAGE[setting]
    prompts = run.plan.prompt_sets[setting]
    config = SteeringConfig(
        mode=mode, strength=strength, deactivate=_setting_deactivate(run.plan.deactivate, source)
    )
    hook_sets = [
        config_hooks(config, neuron_set, run.stats, target, source=source, model=run.model)
        for target in run.plan.targets
        for neuron_set in pair
    ]
    generated = generate_with_hook_sets(
        run.model,
        prompts,
        hook_sets,
        max_new_tokens=run.max_new_tokens,
        batch_size=run.batch_size,
    )
    results = []
    for t, target in enumerate(run.plan.targets):
        steered = run.judge(prompts, *generated[2 * t], target=target)
        control = run.judge(prompts, *generated[2 * t + 1], target=target)
        results.append(
            SteeringResult(
                setting=setting,
                target=target,
                mode=mode,
                strength=strength,
                top_rate=float(top_rate),
                n_prompts=len(prompts),
                target_rate=steered.rate(target),
                fluent_rate=steered.fluent_rate(),
                success_rate=steered.success_rate(target),
                off_target_rate=steered.off_target_rate(target, source),
                random_target_rate=control.rate(target),
                random_success_rate=control.success_rate(target),
                mean_nll=float(steered.nll.nanmean()),
                mean_repetition=float(steered.repetition.mean()),
                examples=steered.texts[: run.n_examples],
            )
        )
    return results


def _sweep_metadata(
    run: _SweepRun, sets: Mapping[float, tuple[LanguageNeurons, LanguageNeurons]]
) -> dict[str, Any]:
    """The settings of a sweep, recorded in its report."""
    return {
        "identifier": repr(run.judge.identifier),
        "nll_margin": run.judge.nll_margin,
        "max_repetition": run.judge.max_repetition,
        "max_new_tokens": run.max_new_tokens,
        "deactivate": run.plan.deactivate,
        "seed": run.plan.seed,
        "selection_thresholds": dict(run.plan.thresholds),
        "prompts": {s: list(p) for s, p in run.plan.prompt_sets.items()},
        "neuron_counts": {str(tr): pair[0].counts() for tr, pair in sets.items()},
        "fluency_uses_nll": run.judge.reference is not None,
    }
