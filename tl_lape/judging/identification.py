"""Which language a text is in: an offline identifier over every language it knows, or
restricted to the languages of a study.

- :class:`LanguageIdentifier`: the language of a text by ``py3langid`` (default; 97 languages)
  or ``lingua`` (optional; 75 languages). By default (``open_set=True``) the identifier chooses
  among *all* the languages it knows and answers :data:`OTHER` for any language outside the
  study, so that drift into a neighbour (Malay for Indonesian, Portuguese or Catalan for
  Spanish, Romanian for French) is not counted as the study language;
  ``open_set=False`` restricts the choice to the study's languages. Texts too short to judge
  get no language.
- :func:`language_id_accuracy`: how often an identifier is right on a labelled corpus, e.g.
  held-out paragraphs cut to the length of a generated output.

:mod:`tl_lape.experiments.steering` uses these to judge the language of steered outputs;
:mod:`tl_lape.judging.validation` measures them on a labelled set.

Example:
    >>> lid = LanguageIdentifier(["en", "fr"])
    >>> lid.identify_many(["The cat sleeps on the mat today.", "Le chat dort sur le tapis."])
    ['en', 'fr']
    >>> lid("O gato dorme no tapete enquanto a chuva cai lá fora.")  # Portuguese
    'other'
"""

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch

from tl_lape.errors import LapeError

__all__ = ["OTHER", "LanguageIdentifier", "language_id_accuracy"]

#: The answer of an open-set identifier for a text in a language outside the study.
OTHER = "other"


class LanguageIdentifier:
    """An offline language identifier for the languages of a study, with an "other" outcome.

    Two backends: ``"py3langid"`` (default; a naive-Bayes model over byte n-grams of 97
    languages, fast) and ``"lingua"`` (``lingua-language-detector``, 75 languages; its models
    for all languages take about 1 GB of memory, loaded at the first call). With
    ``open_set=True`` (default) the identifier picks among every language it knows and a
    language outside ``languages`` comes back as :data:`OTHER`; with ``open_set=False`` it picks
    among ``languages`` only (the setting of the paper: which of them the output is in; drift
    into a neighbour then counts as the nearest study language).

    Args:
        languages: ISO 639-1 codes of the study's languages.
        backend: ``"py3langid"`` or ``"lingua"``.
        min_chars: Texts with fewer non-space characters get no language (``None``).
        open_set: Choose among all the backend's languages, answering :data:`OTHER` outside
            ``languages`` (True), or among ``languages`` only (False).

    Example:
        >>> lid = LanguageIdentifier(["en", "fr"])
        >>> lid("Le chat dort sur le tapis pendant que la pluie tombe.")
        'fr'
        >>> lid("Il gatto dorme sul tappeto mentre fuori piove.")  # Italian
        'other'
        >>> LanguageIdentifier(["en", "fr"], open_set=False)("Il gatto dorme sul tappeto.")
        'fr'
    """

    def __init__(
        self,
        languages: Sequence[str],
        *,
        backend: str = "py3langid",
        min_chars: int = 3,
        open_set: bool = True,
    ) -> None:
        langs = [str(lang).replace("_", "-").split("-")[0].lower() for lang in languages]
        if not langs:
            raise LapeError("LanguageIdentifier needs at least one language; received none")
        if OTHER in langs:
            raise LapeError(f"{OTHER!r} is the answer outside the study, not a language code")
        self.languages: tuple[str, ...] = tuple(dict.fromkeys(langs))
        self.backend = backend
        self.min_chars = min_chars
        self.open_set = bool(open_set)
        self._classify: Callable[[str], tuple[str | None, float]]
        if backend == "py3langid":
            self._classify = self._make_py3langid()
        elif backend == "lingua":
            self._classify = self._make_lingua()
        else:
            raise LapeError(f"backend must be 'py3langid' or 'lingua'; received {backend!r}")

    def _outside(self, code: str | None) -> str | None:
        """``code`` if it is a study language, else :data:`OTHER` (None stays None)."""
        if code is None:
            return None
        return code if code in self.languages else OTHER

    def _make_py3langid(self) -> Callable[[str], tuple[str | None, float]]:
        try:
            from py3langid.langid import MODEL_FILE
            from py3langid.langid import LanguageIdentifier as _Identifier
        except ImportError as err:
            raise LapeError(
                "LanguageIdentifier(backend='py3langid') needs the optional py3langid package: "
                "pip install 'tl-lape[lid]'"
            ) from err
        identifier = _Identifier.from_model_file(MODEL_FILE, norm_probs=True)
        unknown = sorted(set(self.languages) - set(identifier.nb_classes))
        if unknown:
            raise LapeError(f"py3langid does not know languages {unknown}")
        if not self.open_set:
            identifier.set_languages(list(self.languages))

        def classify(text: str) -> tuple[str | None, float]:
            code, prob = identifier.classify(text)
            return self._outside(str(code)), float(prob)

        return classify

    def _make_lingua(self) -> Callable[[str], tuple[str | None, float]]:
        try:
            import lingua
        except ImportError as err:
            raise LapeError(
                "LanguageIdentifier(backend='lingua') needs the optional "
                "lingua-language-detector package: pip install lingua-language-detector"
            ) from err
        known = {lang.iso_code_639_1.name.lower(): lang for lang in lingua.Language.all()}
        unknown = [lang for lang in self.languages if lang not in known]
        if unknown:
            raise LapeError(f"lingua does not know languages {unknown}; it knows {sorted(known)}")
        to_lingua = {lang: known[lang] for lang in self.languages}
        if not self.open_set and len(to_lingua) == 1:
            only = self.languages[0]
            return lambda text: (only, 1.0)
        builder = (
            lingua.LanguageDetectorBuilder.from_all_languages()
            if self.open_set
            else lingua.LanguageDetectorBuilder.from_languages(*to_lingua.values())
        )
        detector = builder.build()

        def classify(text: str) -> tuple[str | None, float]:
            found = detector.detect_language_of(text)
            if found is None:  # lingua finds no language it can tell apart reliably
                return (OTHER if self.open_set else None), 0.0
            code = found.iso_code_639_1.name.lower()
            return self._outside(code), float(detector.compute_language_confidence(text, found))

        return classify

    def __call__(self, text: str) -> str | None:
        """The language of ``text``: one of :attr:`languages`, :data:`OTHER` (open set only) or
        None if it is too short."""
        return self.identify_scored(text)[0]

    def identify_scored(self, text: str) -> tuple[str | None, float]:
        """The language of ``text`` (as :meth:`__call__`) and the backend's confidence in it
        (a probability in [0, 1]; 0.0 for a text too short to judge)."""
        if sum(not c.isspace() for c in text) < self.min_chars:
            return None, 0.0
        return self._classify(text)

    def identify_many(self, texts: Iterable[str]) -> list[str | None]:
        """:meth:`__call__` for each text."""
        return [self(text) for text in texts]

    def __repr__(self) -> str:
        return (
            f"LanguageIdentifier(languages={list(self.languages)}, backend={self.backend!r}, "
            f"open_set={self.open_set})"
        )


def language_id_accuracy(
    identifier: LanguageIdentifier,
    corpus: Mapping[str, Sequence[str]],
    *,
    max_texts_per_language: int = 200,
    max_chars: int | None = None,
    min_chars: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """Share of a labelled corpus's texts that ``identifier`` assigns to their own language.

    Args:
        identifier: The identifier to measure.
        corpus: ``{language: texts}`` (e.g. held-out handbook paragraphs).
        max_texts_per_language: A seeded random sample of at most this many texts each.
        max_chars: Cut every text to this many characters (short outputs are harder).
        min_chars: Skip texts shorter than this.
        seed: Seed of the sample.

    Returns:
        ``{language: accuracy, ..., "overall": accuracy over all sampled texts}``.

    Example:
        >>> lid = LanguageIdentifier(["en", "fr"])
        >>> language_id_accuracy(lid, {"en": ["The cat sleeps on the mat today."],
        ...                            "fr": ["Le chat dort sur le tapis aujourd'hui."]})
        {'en': 1.0, 'fr': 1.0, 'overall': 1.0}
    """
    generator = torch.Generator().manual_seed(seed)
    result: dict[str, float] = {}
    hits = total = 0
    for lang, texts in corpus.items():
        pool = [t for t in texts if len(t) >= min_chars]
        if not pool:
            raise LapeError(
                f"no text of at least {min_chars} characters for language {lang!r}; pass more "
                "text or a smaller min_chars"
            )
        order = torch.randperm(len(pool), generator=generator)[:max_texts_per_language]
        sample = [pool[int(i)] for i in order]
        if max_chars is not None:
            sample = [t[:max_chars] for t in sample]
        ok = sum(identifier(t) == lang for t in sample)
        result[lang] = ok / len(sample)
        hits += ok
        total += len(sample)
    result["overall"] = hits / total if total else math.nan
    return result
