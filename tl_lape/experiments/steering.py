"""Steering generation with language neurons, and judging whether it worked.

The paper's second causal test: while the model generates, switch other languages' neurons off
and push the target language's neurons on (:func:`~tl_lape.interventions.hooks.steering_hooks`),
and see
whether the output changes language. This module runs that test honestly:

- Generation under the hooks is :mod:`tl_lape.interventions.generation`
  (:func:`~tl_lape.interventions.generation.generate_with_hooks`, batched, greedy by default, with
  the KV
  cache; :func:`~tl_lape.interventions.generation.generate_with_hook_sets`, many hook sets in one
  batch).
- Two prompt settings: :data:`ENGLISH_PROMPTS` (the paper's cross-lingual setting: the model
  must leave the prompt's language) and :data:`NEUTRAL_PROMPTS` (a command name, a number, a
  path, a bare line start: the language is open and the intervention alone decides it).
- The output language, judged by an offline identifier restricted to the languages of the
  study (:class:`~tl_lape.judging.identification.LanguageIdentifier`: ``py3langid`` by default,
  chosen
  by measured accuracy on held-out handbook paragraphs; ``lingua`` optional).
- Quality, so that a switch into gibberish does not count (:mod:`tl_lape.judging.metrics`): the
  *unsteered* model's NLL of the generated text against its NLL on natural text of the target
  language of the same length, and the share of repeated token trigrams. An output is *fluent*
  when its NLL is at most ``nll_margin`` above the target language's reference and its
  repetition at most ``max_repetition``; *success* is an output that is in the target language
  and fluent.
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
from typing import Any, cast

import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor
from tqdm.auto import tqdm

from tl_lape.errors import LapeError
from tl_lape.interventions.generation import (
    generate_texts_and_tokens,
    generate_with_hook_sets,
)
from tl_lape.interventions.hooks import MODES, Mode, steering_hooks
from tl_lape.judging.identification import LanguageIdentifier
from tl_lape.judging.metrics import reference_nll, repetition_rate, sequence_nll
from tl_lape.neurons import LanguageNeurons, random_matched_neurons
from tl_lape.stats import ActivationStats

__all__ = [
    "ENGLISH_PROMPTS",
    "NEUTRAL_PROMPTS",
    "SteeringOutputs",
    "SteeringReport",
    "SteeringResult",
    "check_mode",
    "deactivated_languages",
    "judge_outputs",
    "one_line",
    "run_steering_sweep",
    "steer",
]

logger = logging.getLogger(__name__)


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


def check_mode(mode: str) -> Mode:
    """``mode`` as a steering mode of :func:`~tl_lape.interventions.hooks.steering_hooks`, or a
    LapeError.

    Example:
        >>> check_mode("add")
        'add'
    """
    if mode not in MODES:
        raise LapeError(f"mode must be 'replace', 'add' or 'scale'; received {mode!r}")
    return cast(Mode, mode)


# ============================================================================ one steering run


@dataclass(frozen=True)
class SteeringOutputs:
    """The outputs of one steering configuration on one prompt set, and their judgement.

    Attributes:
        prompts: The prompts.
        texts: The generated continuations.
        languages: The identified language of each continuation (None: too short to judge).
        nll: The unsteered model's mean NLL per token of each continuation (float64).
        repetition: :func:`repetition_rate` of each continuation.
        fluent: Whether each continuation meets the fluency criterion.
    """

    prompts: tuple[str, ...]
    texts: tuple[str, ...]
    languages: tuple[str | None, ...]
    nll: Float[Tensor, " batch"]
    repetition: Float[Tensor, " batch"]
    fluent: tuple[bool, ...]

    def rate(self, language: str) -> float:
        """Share of outputs identified as ``language``."""
        return sum(lang == language for lang in self.languages) / max(1, len(self.languages))

    def success_rate(self, target: str) -> float:
        """Share of outputs in ``target`` and fluent."""
        ok = sum(
            lang == target and fl for lang, fl in zip(self.languages, self.fluent, strict=True)
        )
        return ok / max(1, len(self.languages))

    def off_target_rate(self, target: str, source: str | None) -> float:
        """Share of outputs in a language that is neither ``target`` nor ``source``."""
        off = sum(lang is not None and lang not in (target, source) for lang in self.languages)
        return off / max(1, len(self.languages))

    def language_counts(self) -> dict[str, int]:
        """How many outputs were identified as each language (``"-"``: too short)."""
        counts: dict[str, int] = {}
        for lang in self.languages:
            key = lang or "-"
            counts[key] = counts.get(key, 0) + 1
        return counts


def judge_outputs(
    model: Any,
    prompts: Sequence[str],
    texts: list[str],
    tokens: list[Tensor],
    identifier: LanguageIdentifier,
    reference: Mapping[str, float] | None,
    target: str | None,
    nll_margin: float,
    max_repetition: float,
) -> SteeringOutputs:
    """Judge generated outputs: their language, the unsteered model's NLL, repetition, fluency.

    An output is fluent when it is not empty, its :func:`~tl_lape.judging.metrics.repetition_rate`
    is
    at most ``max_repetition`` and, when ``reference`` has the yardstick language (``target``,
    or the output's own identified language when ``target`` is None), its
    :func:`~tl_lape.judging.metrics.sequence_nll` is at most ``nll_margin`` above that language's
    reference NLL.

    Args:
        model: The TransformerLens model, run without hooks to score the outputs.
        prompts: The prompts the outputs continue.
        texts: The generated continuations.
        tokens: Their generated token ids, as
            :func:`~tl_lape.interventions.generation.generate_texts_and_tokens` returns them.
        identifier: Judges the output language.
        reference: :func:`~tl_lape.judging.metrics.reference_nll` per language (None: fluency checks
            only emptiness and repetition).
        target: The language steered into (None: unsteered outputs).
        nll_margin: Fluent outputs have NLL at most this far above the yardstick's reference.
        max_repetition: Fluent outputs have at most this repetition rate.

    Returns:
        The judged :class:`SteeringOutputs`.
    """
    languages = tuple(identifier.identify_many(texts))
    nll = sequence_nll(model, tokens)
    repetition = torch.tensor([repetition_rate(t) for t in tokens], dtype=torch.float64)
    fluent = []
    for i, lang in enumerate(languages):
        yardstick_lang = target if target is not None else lang
        ok = bool(tokens[i].numel() > 0) and float(repetition[i]) <= max_repetition
        if (
            ok
            and reference is not None
            and yardstick_lang is not None
            and yardstick_lang in reference
        ):
            ok = bool(float(nll[i]) <= reference[yardstick_lang] + nll_margin)
        fluent.append(ok)
    return SteeringOutputs(tuple(prompts), tuple(texts), languages, nll, repetition, tuple(fluent))


def steer(
    model: Any,
    neurons: LanguageNeurons,
    stats: ActivationStats,
    target: str,
    prompts: Sequence[str],
    *,
    mode: str = "add",
    strength: float = 1.0,
    deactivate: str | Sequence[str] = "none",
    source: str | None = None,
    identifier: LanguageIdentifier | None = None,
    reference: Mapping[str, float] | None = None,
    nll_margin: float = 1.0,
    max_repetition: float = 0.5,
    max_new_tokens: int = 32,
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
        :func:`~tl_lape.interventions.hooks.steering_hooks`).
        strength: The strength of the mode.
        deactivate: Which languages' neurons to switch off in the same pass: ``"none"`` (the
            default), ``"others"`` (all but the target), ``"source"`` (the prompts' language),
            or a list.
        source: The prompts' language (for ``deactivate="source"`` and the off-target rate).
        identifier: Judges the output language (default: py3langid over ``neurons.languages``).
        reference: :func:`reference_nll` per language, for the fluency criterion (without it
            only repetition is checked).
        nll_margin: Fluent outputs have NLL at most this far above the target's reference.
        max_repetition: Fluent outputs have at most this :func:`repetition_rate`.
        max_new_tokens: Generated tokens per prompt at most.
        batch_size: Prompts per batch.

    Returns:
        The judged :class:`SteeringOutputs`.
    """
    if target not in neurons.languages:
        raise LapeError(
            f"unknown target language {target!r}: the neuron set has {list(neurons.languages)}"
        )
    off = deactivated_languages(deactivate, neurons, target, source)
    hooks = steering_hooks(
        neurons,
        stats,
        target,
        mode=check_mode(mode),
        strength=strength,
        deactivate=off or None,
        model=model,
    )
    texts, tokens = generate_texts_and_tokens(
        model,
        prompts,
        fwd_hooks=hooks,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    identifier = identifier or LanguageIdentifier(neurons.languages)
    return judge_outputs(
        model, prompts, texts, tokens, identifier, reference, target, nll_margin, max_repetition
    )


def deactivated_languages(
    deactivate: Any, neurons: LanguageNeurons, target: str, source: str | None
) -> list[str]:
    """The languages whose neurons :func:`steer`'s ``deactivate=`` switches off; never ``target``.

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
                raise LapeError("deactivate='source' needs the prompts' language: pass source=")
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
            f"{list(neurons.languages)}"
        )
    return [lang for lang in langs if lang != target]


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


def run_steering_sweep(
    model: Any,
    stats: ActivationStats,
    *,
    reference_corpus: Mapping[str, Sequence[str]] | None = None,
    targets: Sequence[str] | None = None,
    modes: Sequence[str] = MODES,
    strengths: Mapping[str, Sequence[float]] | None = None,
    top_rates: Sequence[float] = (0.01, 0.02, 0.05),
    settings: Sequence[str] = ("english", "neutral"),
    prompts: Mapping[str, Sequence[str]] | None = None,
    deactivate: str = "none",
    random_seed: int = 0,
    identifier: LanguageIdentifier | None = None,
    nll_margin: float = 1.0,
    max_repetition: float = 0.5,
    max_new_tokens: int = 32,
    batch_size: int = 256,
    n_examples: int = 2,
    selection_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> SteeringReport:
    """Steer toward every target under every mode, strength and neuron budget, with controls.

    For each ``top_rate`` the language neurons are selected from ``stats``
    (:func:`~tl_lape.selection.identify_language_neurons`) and a random set matched to them in
    size and layers is drawn (:func:`~tl_lape.neurons.random_matched_neurons`). Each
    configuration runs on each prompt setting with the LAPE set and with the random set; the
    outputs are judged by language, NLL and repetition (see the module docstring).

    Args:
        model: A TransformerLens model.
        stats: The :class:`~tl_lape.stats.ActivationStats` (with activation sums).
        reference_corpus: Held-out ``{language: texts}`` for the fluency yardstick
            (:func:`reference_nll`); without it fluency only checks repetition.
        targets: Target languages (default: all languages of ``stats`` but English).
        modes: Steering modes to sweep.
        strengths: Strengths per mode (default: replace 1, 4, 8; add 5, 10; scale 3, 10).
        top_rates: Neuron budgets.
        settings: Prompt settings, ``"english"`` and/or ``"neutral"``.
        prompts: Override the prompts of a setting (``{setting: prompts}``).
        deactivate: Other languages' neurons switched off in the same pass: ``"none"`` (the
            default: the target's neurons alone), ``"others"`` (all but the target) or
            ``"source"`` (English for English prompts, nothing for neutral ones). Which works
            better depends on the model and the setting: on the demo model ``"others"`` helped
            from English prompts (3 targets reached at 5% of neurons, against 2) and did not
            help from neutral ones (3 against 5).
        random_seed: Seed of the random control sets.
        identifier: The output-language judge (default: py3langid over the stats' languages).
        nll_margin: Fluency: NLL at most this far above the target's natural-text NLL.
        max_repetition: Fluency: repeated-trigram share at most this.
        max_new_tokens: Tokens generated per prompt.
        batch_size: Rows per generation batch: the prompts of several targets and controls are
            generated together (:func:`generate_with_hook_sets`).
        n_examples: Outputs kept per configuration for reading.
        selection_kwargs: Extra arguments of ``identify_language_neurons`` (filter_rate,
            activation_bar_ratio).
        progress: Show a progress bar over configurations.

    Returns:
        A :class:`SteeringReport`.
    """
    from tl_lape.selection import identify_language_neurons

    languages = tuple(stats.languages)
    targets = (
        tuple(targets) if targets is not None else tuple(lang for lang in languages if lang != "en")
    )
    unknown = [t for t in targets if t not in languages]
    if unknown:
        raise LapeError(
            f"unknown target language(s) {unknown}: the statistics have {list(languages)}"
        )
    bad_modes = [m for m in modes if m not in MODES]
    if bad_modes:
        raise LapeError(f"modes must be among 'replace', 'add', 'scale'; received {bad_modes}")
    bad_settings = [s for s in settings if s not in _PROMPT_SETS]
    if bad_settings:
        raise LapeError(f"settings must be among {sorted(_PROMPT_SETS)}; received {bad_settings}")
    strengths = dict(strengths) if strengths is not None else dict(_DEFAULT_STRENGTHS)
    missing = [m for m in modes if m not in strengths]
    if missing:
        raise LapeError(f"strengths gives no value for mode(s) {missing}; received {strengths}")
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
    prompt_sets = {s: tuple((prompts or {}).get(s, _PROMPT_SETS[s])) for s in settings}
    identifier = identifier or LanguageIdentifier(languages)
    reference = (
        reference_nll(model, reference_corpus, n_tokens=max_new_tokens)
        if reference_corpus is not None
        else None
    )

    def judge(
        setting: str, texts: list[str], tokens: list[Tensor], target: str | None
    ) -> SteeringOutputs:
        return judge_outputs(
            model,
            prompt_sets[setting],
            texts,
            tokens,
            identifier,
            reference,
            target,
            nll_margin,
            max_repetition,
        )

    baseline: dict[str, dict[str, int]] = {}
    for setting in settings:
        texts, tokens = generate_texts_and_tokens(
            model, prompt_sets[setting], max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        baseline[setting] = judge(setting, texts, tokens, None).language_counts()

    configs = [
        (top_rate, mode, float(strength))
        for top_rate in top_rates
        for mode in modes
        for strength in strengths[mode]
    ]
    results: list[SteeringResult] = []
    bar = tqdm(total=len(configs) * len(settings), desc="steering", disable=not progress)
    sets: dict[float, tuple[LanguageNeurons, LanguageNeurons]] = {}
    for top_rate, mode, strength in configs:
        if top_rate not in sets:
            lape = identify_language_neurons(
                stats, top_rate=top_rate, **dict(selection_kwargs or {})
            )
            sets[top_rate] = (lape, random_matched_neurons(lape, seed=random_seed))
        lape, control = sets[top_rate]
        for setting in settings:
            source = _PROMPT_LANGUAGE[setting]
            hook_sets = []
            for target in targets:
                for neuron_set in (lape, control):
                    off = (
                        deactivated_languages(deactivate, neuron_set, target, source)
                        if deactivate != "source" or source is not None
                        else []
                    )
                    hook_sets.append(
                        steering_hooks(
                            neuron_set,
                            stats,
                            target,
                            mode=check_mode(mode),
                            strength=strength,
                            deactivate=off or None,
                            model=model,
                        )
                    )
            generated = generate_with_hook_sets(
                model,
                prompt_sets[setting],
                hook_sets,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
            for t, target in enumerate(targets):
                steered = judge(setting, *generated[2 * t], target)
                random_run = judge(setting, *generated[2 * t + 1], target)
                results.append(
                    SteeringResult(
                        setting=setting,
                        target=target,
                        mode=mode,
                        strength=strength,
                        top_rate=float(top_rate),
                        n_prompts=len(prompt_sets[setting]),
                        target_rate=steered.rate(target),
                        fluent_rate=sum(steered.fluent) / max(1, len(steered.fluent)),
                        success_rate=steered.success_rate(target),
                        off_target_rate=steered.off_target_rate(target, source),
                        random_target_rate=random_run.rate(target),
                        random_success_rate=random_run.success_rate(target),
                        mean_nll=float(steered.nll.nanmean()),
                        mean_repetition=float(steered.repetition.mean()),
                        examples=steered.texts[:n_examples],
                    )
                )
            bar.update(1)
    bar.close()
    metadata = {
        "identifier": repr(identifier),
        "nll_margin": nll_margin,
        "max_repetition": max_repetition,
        "max_new_tokens": max_new_tokens,
        "deactivate": deactivate,
        "random_seed": random_seed,
        "prompts": {s: list(p) for s, p in prompt_sets.items()},
        "neuron_counts": {str(tr): pair[0].counts() for tr, pair in sets.items()},
        "fluency_uses_nll": reference is not None,
    }
    return SteeringReport(tuple(results), baseline, dict(reference or {}), metadata)
