"""How good the judges are: precision and recall on a labelled set of short texts.

The steering study's numbers are only as good as its judges. A labelled set (built by
``scripts/build_judge_validation.py`` into ``tests/data/judge_validation.jsonl``) gives each
short text the language a judge should answer (a study language, or
:data:`~tl_lape.judging.identification.OTHER`) and whether it is fluent; this module scores a
judge's answers against those labels:

- :func:`load_labelled_texts`: the set, as :class:`LabelledText` items;
- :func:`precision_recall`: of a yes/no verdict against a yes/no label;
- :func:`language_scores`: per study language (and ``"other"``), the precision and recall of
  an identifier's answers, and their macro mean;
- :func:`success_scores`: the combined verdict of the study, *in the target language and
  fluent*, over every (text, target) pair;
- :func:`agreement`: the share of texts on which two judges give the same answer;
- :func:`pass_rates`: the share of each category a verdict accepts (e.g. phrase loops: 0).

``scripts/validate_judges.py`` writes the table of ``benchmarks/results/2026-12-04-judges/``;
``tests/test_judge_validation.py`` holds the floors.

Example:
    >>> items = [LabelledText("a", "Le chat dort.", "on_target", "fr", True),
    ...          LabelledText("b", "O gato dorme.", "neighbour", "other", True)]
    >>> scores = language_scores(["fr", "fr"], items, languages=["fr"])
    >>> scores["fr"].precision, scores["fr"].recall
    (0.5, 1.0)
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_lape.errors import LapeError
from tl_lape.formats import parse_json
from tl_lape.judging.identification import OTHER

__all__ = [
    "LabelledText",
    "PrecisionRecall",
    "agreement",
    "language_scores",
    "load_labelled_texts",
    "pass_rates",
    "precision_recall",
    "success_scores",
]


@dataclass(frozen=True)
class LabelledText:
    """One text of the validation set with its labels.

    Attributes:
        id: A stable identifier.
        text: The text.
        category: How it was made (``on_target``, ``neighbour``, ``phrase_loop``, ...).
        language: The answer a language judge should give: a study language or ``"other"``.
        fluent: Whether a fluency judge should accept it.
        split: ``"dev"`` (thresholds may be tuned on it) or ``"test"`` (reported).
        origin: The language(s) the text was taken from (``"ms"``, ``"en+fr"``, ``"none"``).
        source: Where it was taken from (package and version).
    """

    id: str
    text: str
    category: str
    language: str
    fluent: bool
    split: str = "test"
    origin: str = ""
    source: str = ""


def load_labelled_texts(path: str | Path) -> list[LabelledText]:
    """Read a validation set written by ``scripts/build_judge_validation.py`` (JSON lines, the
    first a header)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines:
        raise LapeError(f"{str(path)!r} is empty; build it with scripts/build_judge_validation.py")
    items = []
    fields = ("id", "text", "category", "language", "fluent", "split", "origin", "source")
    for number, line in enumerate(lines[1:], start=2):
        data = parse_json(
            line,
            where=f"line {number} of {str(path)!r}",
            advice="rebuild it with scripts/build_judge_validation.py",
        )
        try:
            items.append(LabelledText(**{k: data[k] for k in fields}))
        except (KeyError, TypeError) as err:
            raise LapeError(
                f"line {number} of {str(path)!r} is not a labelled text with fields {fields} "
                f"({err}); rebuild it with scripts/build_judge_validation.py"
            ) from err
    return items


@dataclass(frozen=True)
class PrecisionRecall:
    """Precision and recall of a yes/no verdict (None where undefined: nothing predicted, or
    no positive label).

    Attributes:
        precision: True positives over predicted positives.
        recall: True positives over actual positives.
        true_positives: Predicted and actual.
        predicted: Predicted positives.
        actual: Actual positives.
    """

    precision: float | None
    recall: float | None
    true_positives: int
    predicted: int
    actual: int

    @property
    def f1(self) -> float | None:
        """The harmonic mean of precision and recall (None if either is undefined)."""
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, with ``f1``."""
        return {**self.__dict__, "f1": self.f1}


def precision_recall(predicted: Sequence[bool], actual: Sequence[bool]) -> PrecisionRecall:
    """Precision and recall of ``predicted`` against ``actual``.

    Example:
        >>> precision_recall([True, True, False], [True, False, True])
        PrecisionRecall(precision=0.5, recall=0.5, true_positives=1, predicted=2, actual=2)
    """
    if len(predicted) != len(actual):
        raise LapeError(
            f"precision_recall needs one verdict per label; received {len(predicted)} verdicts "
            f"and {len(actual)} labels"
        )
    tp = sum(bool(p) and bool(a) for p, a in zip(predicted, actual, strict=True))
    n_pred, n_act = sum(map(bool, predicted)), sum(map(bool, actual))
    return PrecisionRecall(
        tp / n_pred if n_pred else None, tp / n_act if n_act else None, tp, n_pred, n_act
    )


def _check_lengths(answers: Sequence[Any], items: Sequence[LabelledText], what: str) -> None:
    if len(answers) != len(items):
        raise LapeError(
            f"{what} needs one answer per labelled text; received {len(answers)} answers and "
            f"{len(items)} texts"
        )


def language_scores(
    answers: Sequence[str | None], items: Sequence[LabelledText], *, languages: Sequence[str]
) -> dict[str, PrecisionRecall]:
    """Per study language and ``"other"``, the precision and recall of a language judge's
    ``answers`` (None, too short to judge, counts as no language), with ``"macro"``: the mean
    precision and recall over the study languages (counts summed).

    An answer outside ``languages`` (a closed-set identifier never gives one; an open-set one
    gives ``"other"``) counts as ``"other"``.
    """
    _check_lengths(answers, items, "language_scores")
    study = list(dict.fromkeys(languages))

    def bucket(x: str | None) -> str | None:
        return x if x is None or x in study else OTHER

    said = [bucket(a) for a in answers]
    truth = [bucket(item.language) for item in items]
    out = {
        lang: precision_recall([s == lang for s in said], [t == lang for t in truth])
        for lang in [*study, OTHER]
    }
    per = [out[lang] for lang in study]
    precisions = [p.precision for p in per if p.precision is not None]
    recalls = [p.recall for p in per if p.recall is not None]
    out["macro"] = PrecisionRecall(
        sum(precisions) / len(precisions) if precisions else None,
        sum(recalls) / len(recalls) if recalls else None,
        sum(p.true_positives for p in per),
        sum(p.predicted for p in per),
        sum(p.actual for p in per),
    )
    return out


def success_scores(
    answers: Sequence[str | None],
    fluent: Sequence[bool] | Sequence[Sequence[bool]],
    items: Sequence[LabelledText],
    *,
    languages: Sequence[str],
) -> PrecisionRecall:
    """Precision and recall of *success* (in the target and fluent) over every pair of a text
    and a target in ``languages``: the label is ``language == target and fluent``.

    Args:
        answers: The language judge's answer per text.
        fluent: The fluency verdict per text, or per text and target (a verdict that depends on
            the target, e.g. an NLL yardstick per target language), in ``languages`` order.
        items: The labelled texts.
        languages: The targets.
    """
    _check_lengths(answers, items, "success_scores")
    _check_lengths(fluent, items, "success_scores")
    predicted, actual = [], []
    for answer, ok, item in zip(answers, fluent, items, strict=True):
        for k, target in enumerate(languages):
            verdict = ok[k] if isinstance(ok, Sequence) else ok
            predicted.append(answer == target and bool(verdict))
            actual.append(item.language == target and item.fluent)
    return precision_recall(predicted, actual)


def agreement(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Share of positions where ``a`` and ``b`` give the same answer.

    Example:
        >>> agreement(["fr", "other", None], ["fr", "es", None])
        0.6666666666666666
    """
    if len(a) != len(b) or not a:
        raise LapeError(
            f"agreement needs two non-empty answer lists of one length; received {len(a)} and "
            f"{len(b)}"
        )
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def pass_rates(verdicts: Sequence[bool], items: Sequence[LabelledText]) -> dict[str, float]:
    """Share of each category's texts that ``verdicts`` accept.

    Example:
        >>> items = [LabelledText("a", "x", "loop", "fr", False),
        ...          LabelledText("b", "y", "on_target", "fr", True)]
        >>> pass_rates([False, True], items)
        {'loop': 0.0, 'on_target': 1.0}
    """
    _check_lengths(verdicts, items, "pass_rates")
    seen: dict[str, list[bool]] = {}
    for verdict, item in zip(verdicts, items, strict=True):
        seen.setdefault(item.category, []).append(bool(verdict))
    return {k: sum(v) / len(v) for k, v in seen.items()}
