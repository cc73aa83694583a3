"""Judging the content of generated text: chrF against its own translation, against a control.

The steering study's content setting prompts with the first words of an English paragraph and
asks whether the steered continuation says what the paragraph says, in the target language.
The judge (sacrebleu's chrF, an optional dependency: ``pip install 'tl-lape[steer]'``):

- :func:`content_gain`: chrF against the translation of the own paragraph minus the mean chrF
  against other paragraphs of the same language (positive: on topic);
- :func:`judge_content`: the gains of a list of outputs, their share above 0 (*relevant*) and
  their mean;
- :func:`harmonic_mean`: the *combined* score of success and relevance.

Example:
    >>> chrf("Le chat dort.", "Le chat dort.")
    100.0
    >>> harmonic_mean(0.5, 1.0)
    0.6666666666666666
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tl_lape.errors import LapeError

__all__ = [
    "ContentJudgement",
    "check_sacrebleu",
    "chrf",
    "content_gain",
    "harmonic_mean",
    "judge_content",
]


def check_sacrebleu() -> Any:
    """The ``sacrebleu`` module, or a LapeError saying how to install it.

    Call it before a long run whose content judge needs it, to fail at once.
    """
    try:
        import sacrebleu
    except ImportError as err:
        raise LapeError(
            "the content judge needs the optional sacrebleu package, which is not installed: "
            "pip install 'tl-lape[steer]'"
        ) from err
    return sacrebleu


def chrf(hypothesis: str, reference: str) -> float:
    """sacrebleu's sentence-level chrF (0-100) of ``hypothesis`` against one ``reference``.

    Example:
        >>> chrf("Le chat dort.", "Le chat dort.")
        100.0
    """
    return float(check_sacrebleu().sentence_chrf(hypothesis, [reference]).score)


def content_gain(text: str, own: str, others: Sequence[str]) -> float:
    """chrF against the own translation minus the mean chrF against other paragraphs.

    Positive when the continuation shares more character n-grams with the translation of its
    own paragraph than with paragraphs of other content in the same language.
    """
    if not others:
        raise LapeError(
            "content_gain needs at least one other paragraph to compare with; received none: "
            "pass the other paragraphs of the same language as others="
        )
    return chrf(text, own) - sum(chrf(text, o) for o in others) / len(others)


def harmonic_mean(a: float, b: float) -> float:
    """``2ab / (a + b)``, 0 when both are 0."""
    return 0.0 if a + b <= 0 else 2 * a * b / (a + b)


@dataclass(frozen=True)
class ContentJudgement:
    """The content judge's verdict on a list of outputs.

    Attributes:
        gains: :func:`content_gain` of each output (chrF points).
        relevant_rate: Share of outputs with a positive gain.
        mean_gain: Mean gain.
    """

    gains: tuple[float, ...]
    relevant_rate: float
    mean_gain: float


def judge_content(
    texts: Sequence[str], items: Sequence[Mapping[str, str]], language: str
) -> ContentJudgement:
    """Judge each output ``texts[i]`` against ``items[i][language]``, the other items' texts of
    ``language`` being the control (:func:`content_gain`).

    Args:
        texts: The outputs, one per item.
        items: Parallel items (``{language: text}``), in the order of ``texts``.
        language: The language the outputs should be in (their references' language).
    """
    if len(texts) != len(items):
        raise LapeError(
            f"judge_content needs one parallel item per output; received {len(texts)} outputs "
            f"and {len(items)} items: pass the items the prompts were made from"
        )
    gains = []
    for i, text in enumerate(texts):
        own = items[i][language]
        others = [item[language] for j, item in enumerate(items) if j != i]
        gains.append(content_gain(text, own, others))
    n = max(1, len(gains))
    return ContentJudgement(tuple(gains), sum(g > 0 for g in gains) / n, sum(gains) / n)
