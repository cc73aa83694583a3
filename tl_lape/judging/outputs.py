"""Judging generated outputs: their language, the unsteered model's NLL, repetition, fluency.

:func:`judge_outputs` is the one judge of steered (or unsteered) generations; it combines
:class:`~tl_lape.judging.identification.LanguageIdentifier` (the output language) with
:mod:`tl_lape.judging.metrics` (quality) into a :class:`SteeringOutputs`:

- the output language, by an offline identifier over every language it knows, with
  ``"other"`` for a language outside the study (and its confidence);
- the *unsteered* model's NLL of each output
  (:func:`~tl_lape.judging.metrics.sequence_nll`), its share of repeated token trigrams
  (:func:`~tl_lape.judging.metrics.repetition_rate`) and the text rule's verdict
  (:class:`~tl_lape.judging.fluency.FluencyRule`: no phrase, digit or markup loop);
- *fluent*: not empty, passing the text rule, repetition at most ``max_repetition`` and NLL at
  most ``nll_margin`` above the yardstick language's natural-text NLL
  (:func:`~tl_lape.judging.metrics.reference_nll`). The NLL bar rejects shuffled text, the
  text rule rejects loops (which a model predicts best, so their NLL is low);
- *success* (:meth:`SteeringOutputs.success_rate`): in the target language and fluent.

Example:
    >>> judged = judge_outputs(model, prompts, texts, tokens, identifier, target="fr",
    ...                        reference=None, nll_margin=1.0, max_repetition=0.5)  # doctest: +SKIP
    >>> judged.success_rate("fr")  # doctest: +SKIP
"""

from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_lape.judging.fluency import FluencyRule, repeated_coverage, text_units
from tl_lape.judging.identification import LanguageIdentifier
from tl_lape.judging.metrics import repetition_rate, sequence_nll

__all__ = [
    "DEFAULT_MAX_REPETITION",
    "DEFAULT_NLL_MARGIN",
    "OutputJudge",
    "SteeringOutputs",
    "judge_outputs",
]

#: Fluent outputs have NLL at most this many nats above the yardstick's natural-text NLL.
DEFAULT_NLL_MARGIN = 1.0
#: Fluent outputs have at most this share of repeated token trigrams.
DEFAULT_MAX_REPETITION = 0.5
#: Fluent outputs pass this text rule (no phrase, digit or markup loop).
DEFAULT_FLUENCY_RULE = FluencyRule()


@dataclass(frozen=True)
class SteeringOutputs:
    """The outputs of one steering configuration on one prompt set, and their judgement.

    Attributes:
        prompts: The prompts.
        texts: The generated continuations.
        languages: The identified language of each continuation (None: too short to judge).
        nll: The unsteered model's mean NLL per token of each continuation (float64).
        repetition: :func:`~tl_lape.judging.metrics.repetition_rate` of each continuation.
        fluent: Whether each continuation meets the fluency criterion.
        confidence: The identifier's confidence in each language (empty: not recorded).
        coverage: :func:`~tl_lape.judging.fluency.repeated_coverage` of each continuation's
            text units (empty: not recorded).
        text_fluent: Whether each continuation passes the text rule (empty: no rule applied).
    """

    prompts: tuple[str, ...]
    texts: tuple[str, ...]
    languages: tuple[str | None, ...]
    nll: Float[Tensor, " batch"]
    repetition: Float[Tensor, " batch"]
    fluent: tuple[bool, ...]
    confidence: tuple[float, ...] = ()
    coverage: tuple[float, ...] = ()
    text_fluent: tuple[bool, ...] = ()

    def successes(self, target: str) -> tuple[bool, ...]:
        """Per output, whether it is in ``target`` and fluent."""
        return tuple(
            lang == target and fl for lang, fl in zip(self.languages, self.fluent, strict=True)
        )

    def rate(self, language: str) -> float:
        """Share of outputs identified as ``language``."""
        return sum(lang == language for lang in self.languages) / max(1, len(self.languages))

    def fluent_rate(self) -> float:
        """Share of fluent outputs."""
        return sum(self.fluent) / max(1, len(self.fluent))

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
    *,
    target: str | None,
    reference: Mapping[str, float] | None,
    nll_margin: float = DEFAULT_NLL_MARGIN,
    max_repetition: float = DEFAULT_MAX_REPETITION,
    rule: FluencyRule | None = DEFAULT_FLUENCY_RULE,
) -> SteeringOutputs:
    """Judge generated outputs: their language, the unsteered model's NLL, repetition, fluency.

    An output is fluent when it is not empty, passes ``rule`` (when given), its
    :func:`~tl_lape.judging.metrics.repetition_rate` is at most ``max_repetition`` and, when
    ``reference`` has the yardstick language (``target``, or the output's own identified
    language when ``target`` is None), its :func:`~tl_lape.judging.metrics.sequence_nll` is at
    most ``nll_margin`` above that language's reference NLL.

    Args:
        model: The TransformerLens model, run without hooks to score the outputs.
        prompts: The prompts the outputs continue.
        texts: The generated continuations.
        tokens: Their generated token ids, as
            :func:`~tl_lape.interventions.generation.generate_texts_and_tokens` returns them.
        identifier: Judges the output language.
        target: The language steered into (None: unsteered outputs).
        reference: :func:`~tl_lape.judging.metrics.reference_nll` per language (None: fluency
            checks only emptiness and repetition).
        nll_margin: Fluent outputs have NLL at most this far above the yardstick's reference.
        max_repetition: Fluent outputs have at most this repetition rate.
        rule: The text rule fluent outputs pass (None: none).

    Returns:
        The judged :class:`SteeringOutputs`.
    """
    scored = [identifier.identify_scored(text) for text in texts]
    languages = tuple(lang for lang, _ in scored)
    nll = sequence_nll(model, tokens)
    repetition = torch.tensor([repetition_rate(t) for t in tokens], dtype=torch.float64)
    coverage = tuple(repeated_coverage(text_units(text)) for text in texts)
    text_fluent = tuple(rule(text) for text in texts) if rule is not None else ()
    fluent = []
    for i, lang in enumerate(languages):
        yardstick_lang = target if target is not None else lang
        ok = bool(tokens[i].numel() > 0) and float(repetition[i]) <= max_repetition
        ok = ok and (rule is None or text_fluent[i])
        if (
            ok
            and reference is not None
            and yardstick_lang is not None
            and yardstick_lang in reference
        ):
            ok = bool(float(nll[i]) <= reference[yardstick_lang] + nll_margin)
        fluent.append(ok)
    return SteeringOutputs(
        tuple(prompts),
        tuple(texts),
        languages,
        nll,
        repetition,
        tuple(fluent),
        confidence=tuple(conf for _, conf in scored),
        coverage=coverage,
        text_fluent=text_fluent,
    )


@dataclass(frozen=True)
class OutputJudge:
    """:func:`judge_outputs` with its setup fixed: the model that scores, the identifier, the
    fluency yardstick and thresholds. Call it on each batch of outputs.

    Attributes:
        model: The TransformerLens model, run without hooks to score the outputs.
        identifier: Judges the output language.
        reference: :func:`~tl_lape.judging.metrics.reference_nll` per language (None: fluency
            checks only emptiness and repetition).
        nll_margin: Fluent outputs have NLL at most this far above the yardstick's reference.
        max_repetition: Fluent outputs have at most this repetition rate.
        rule: The text rule fluent outputs pass (None: none).
    """

    model: Any
    identifier: LanguageIdentifier
    reference: Mapping[str, float] | None
    _: KW_ONLY
    nll_margin: float = DEFAULT_NLL_MARGIN
    max_repetition: float = DEFAULT_MAX_REPETITION
    rule: FluencyRule | None = DEFAULT_FLUENCY_RULE

    def __call__(
        self, prompts: Sequence[str], texts: list[str], tokens: list[Tensor], *, target: str | None
    ) -> SteeringOutputs:
        """:func:`judge_outputs` of these outputs toward ``target`` (None: unsteered)."""
        return judge_outputs(
            self.model,
            prompts,
            texts,
            tokens,
            self.identifier,
            target=target,
            reference=self.reference,
            nll_margin=self.nll_margin,
            max_repetition=self.max_repetition,
            rule=self.rule,
        )
