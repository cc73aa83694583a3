"""A fluency rule that loops cannot pass: repeated phrases, digit strings and markup fail.

The model-based fluency check (the unsteered model's NLL, :mod:`tl_lape.judging.metrics`)
cannot reject a loop on its own: a loop is what a model predicts best, so its NLL is the
lowest of all. This rule looks at the text itself, in any script:

- the text is cut into *units* (:func:`text_units`): a word of a spaced script, one Chinese or
  Japanese character (kana, kanji), one punctuation mark;
- :func:`repeated_coverage`: the share of units that lie inside a unit trigram occurring more
  than once. Natural passages of an output's length stay below about 0.5 (a help page may
  name "l'axe X du diagramme" twice); phrase loops and markup loops cover 0.8-1.0;
  ``打印出错误。打印出错误的原因是：打印机打印出错误的原因`` covers 0.78;
- the share of letters among the non-space characters (digit strings and markup have few),
  the longest run of one repeated character (``0000000``, ``-------``) and the longest run of
  digits.

:class:`FluencyRule` holds the thresholds, chosen on the development half of the labelled set
(``tests/data/judge_validation.jsonl``) and measured on its test half
(``benchmarks/results/2026-12-04-judges/``). It does not see word order: shuffled text passes
it, and only the model's NLL can reject that
(:func:`~tl_lape.judging.outputs.judge_outputs` requires both).

Example:
    >>> rule = FluencyRule()
    >>> rule("The server starts the services listed in its configuration file.")
    True
    >>> rule("打印出错误。打印出错误的原因是：打印机打印出错误的原因")
    False
    >>> rule.reasons("a plus de 10000000000000000000")  # doctest: +NORMALIZE_WHITESPACE
    ['letters are 0.26 (at least 0.6)', 'a run of 19 identical characters (at most 6)',
     'a run of 20 digits (at most 12)']
"""

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tl_lape.errors import LapeError

__all__ = ["FluencyRule", "TextQuality", "repeated_coverage", "text_quality", "text_units"]

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
#: One CJK character, or a run of other word characters, or one punctuation mark.
_UNIT = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+|[^\w\s]|_+")
_DIGITS = re.compile(r"\d+")
_SAME_CHAR = re.compile(r"(\S)\1*")


def text_units(text: str) -> list[str]:
    """The units of ``text``: words of spaced scripts, single CJK characters, punctuation.

    Example:
        >>> text_units("打印出错误。Le chat, 42.")
        ['打', '印', '出', '错', '误', '。', 'Le', 'chat', ',', '42', '.']
    """
    return _UNIT.findall(text)


def repeated_coverage(units: Sequence[str], *, n: int = 3) -> float:
    """Share of ``units`` inside an ``n``-gram that occurs more than once (0: none, 1: a loop).

    Example:
        >>> repeated_coverage(list("abcabcabc"))
        1.0
        >>> repeated_coverage(list("abcdefgh"))
        0.0
    """
    grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(units)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i : i + n] = [True] * n
    return sum(covered) / len(units) if units else 0.0


@dataclass(frozen=True)
class TextQuality:
    """The measures :class:`FluencyRule` judges a text by.

    Attributes:
        n_units: Units of the text (:func:`text_units`).
        coverage: :func:`repeated_coverage` of its units (trigrams).
        letter_share: Share of letters among its non-space characters.
        longest_char_run: Longest run of one repeated non-space character.
        longest_digit_run: Longest run of digits.
    """

    n_units: int
    coverage: float
    letter_share: float
    longest_char_run: int
    longest_digit_run: int


def text_quality(text: str) -> TextQuality:
    """The :class:`TextQuality` of ``text``.

    Example:
        >>> text_quality("1.1.1.1.1.1")
        TextQuality(n_units=11, coverage=1.0, letter_share=0.0, longest_char_run=1, longest_digit_run=1)
    """  # noqa: E501
    chars = [c for c in text if not c.isspace()]
    return TextQuality(
        n_units=len(text_units(text)),
        coverage=repeated_coverage(text_units(text)),
        letter_share=sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0,
        longest_char_run=max((len(m.group(0)) for m in _SAME_CHAR.finditer(text)), default=0),
        longest_digit_run=max((len(m) for m in _DIGITS.findall(text)), default=0),
    )


@dataclass(frozen=True)
class FluencyRule:
    """A text is fluent when it is long enough, not a loop, mostly letters, and has no long run
    of one character or of digits.

    Attributes:
        max_coverage: Largest :func:`repeated_coverage` of a fluent text.
        min_letter_share: Smallest share of letters among its non-space characters.
        max_char_run: Longest run of one repeated character allowed.
        max_digit_run: Longest run of digits allowed.
        min_units: Fewest units (:func:`text_units`) of a fluent text.

    Example:
        >>> FluencyRule()("<b><b><b><b><b><b><b><b>")
        False
    """

    max_coverage: float = 0.6
    min_letter_share: float = 0.6
    max_char_run: int = 6
    max_digit_run: int = 12
    min_units: int = 3

    def __post_init__(self) -> None:
        for name in ("max_coverage", "min_letter_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise LapeError(f"{name} must be a number in [0, 1]; received {value!r}")
        for name in ("max_char_run", "max_digit_run", "min_units"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LapeError(f"{name} must be an int >= 0; received {value!r}")

    def reasons(self, text: str) -> list[str]:
        """Why ``text`` is not fluent (empty: it is)."""
        q = text_quality(text)
        out = []
        if q.n_units < self.min_units:
            out.append(f"{q.n_units} units (at least {self.min_units})")
        if q.coverage > self.max_coverage:
            out.append(f"repeated trigrams cover {q.coverage:.2f} (at most {self.max_coverage})")
        if q.letter_share < self.min_letter_share:
            out.append(f"letters are {q.letter_share:.2f} (at least {self.min_letter_share})")
        if q.longest_char_run > self.max_char_run:
            out.append(
                f"a run of {q.longest_char_run} identical characters (at most {self.max_char_run})"
            )
        if q.longest_digit_run > self.max_digit_run:
            out.append(f"a run of {q.longest_digit_run} digits (at most {self.max_digit_run})")
        return out

    def __call__(self, text: str) -> bool:
        """Whether ``text`` is fluent by this rule."""
        return not self.reasons(text)
