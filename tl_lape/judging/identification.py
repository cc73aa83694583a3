"""Which language a text is in: an offline identifier restricted to the languages of a study.

- :class:`LanguageIdentifier`: the language of a text among the studied ones, by
  ``py3langid`` (default; chosen by measured accuracy on held-out handbook paragraphs) or
  ``lingua`` (optional), with no language for texts too short to judge.
- :func:`language_id_accuracy`: how often an identifier is right on a labelled corpus, e.g.
  held-out paragraphs cut to the length of a generated output.

:mod:`tl_lape.experiments.steering` uses these to judge the language of steered outputs.

Example:
    >>> lid = LanguageIdentifier(["en", "fr"])
    >>> lid.identify_many(["The cat sleeps on the mat today.", "Le chat dort sur le tapis."])
    ['en', 'fr']
"""

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch

from tl_lape.errors import LapeError

__all__ = ["LanguageIdentifier", "language_id_accuracy"]

#: The lingua ``Language`` member of each ISO 639-1 code the lingua backend accepts.
_LINGUA_NAMES = {
    "en": "ENGLISH",
    "zh": "CHINESE",
    "fr": "FRENCH",
    "es": "SPANISH",
    "vi": "VIETNAMESE",
    "id": "INDONESIAN",
    "ja": "JAPANESE",
    "de": "GERMAN",
    "ru": "RUSSIAN",
    "it": "ITALIAN",
    "pt": "PORTUGUESE",
    "ko": "KOREAN",
    "ar": "ARABIC",
    "nl": "DUTCH",
}


class LanguageIdentifier:
    """An offline language identifier restricted to the languages of a study.

    Two backends: ``"py3langid"`` (default; a naive-Bayes model over byte n-grams, fast, and
    the more accurate of the two on short handbook snippets in our measurement) and
    ``"lingua"`` (``lingua-language-detector``). Restricting the candidates to the studied
    languages is what the paper's setting calls for: the question is which of them the output
    is in.

    Args:
        languages: ISO 639-1 codes of the candidate languages.
        backend: ``"py3langid"`` or ``"lingua"``.
        min_chars: Texts with fewer non-space characters get no language (``None``).

    Example:
        >>> lid = LanguageIdentifier(["en", "fr"])
        >>> lid("Le chat dort sur le tapis pendant que la pluie tombe.")
        'fr'
    """

    def __init__(
        self,
        languages: Sequence[str],
        *,
        backend: str = "py3langid",
        min_chars: int = 3,
    ) -> None:
        langs = [str(lang).replace("_", "-").split("-")[0].lower() for lang in languages]
        if not langs:
            raise LapeError("LanguageIdentifier needs at least one language; received none")
        self.languages: tuple[str, ...] = tuple(dict.fromkeys(langs))
        self.backend = backend
        self.min_chars = min_chars
        self._classify: Callable[[str], str | None]
        if backend == "py3langid":
            self._classify = self._make_py3langid()
        elif backend == "lingua":
            self._classify = self._make_lingua()
        else:
            raise LapeError(f"backend must be 'py3langid' or 'lingua'; received {backend!r}")

    def _make_py3langid(self) -> Callable[[str], str | None]:
        try:
            from py3langid.langid import MODEL_FILE
            from py3langid.langid import LanguageIdentifier as _Identifier
        except ImportError as err:
            raise LapeError(
                "LanguageIdentifier(backend='py3langid') needs the optional py3langid package: "
                "pip install 'tl-lape[lid]'"
            ) from err
        identifier = _Identifier.from_model_file(MODEL_FILE)
        unknown = sorted(set(self.languages) - set(identifier.nb_classes))
        if unknown:
            raise LapeError(f"py3langid does not know languages {unknown}")
        identifier.set_languages(list(self.languages))

        def classify(text: str) -> str | None:
            return str(identifier.classify(text)[0])

        return classify

    def _make_lingua(self) -> Callable[[str], str | None]:
        try:
            import lingua
        except ImportError as err:
            raise LapeError(
                "LanguageIdentifier(backend='lingua') needs the optional "
                "lingua-language-detector package: pip install lingua-language-detector"
            ) from err
        unknown = [lang for lang in self.languages if lang not in _LINGUA_NAMES]
        if unknown:
            raise LapeError(
                f"the lingua backend maps only {sorted(_LINGUA_NAMES)}; received {unknown}"
            )
        to_lingua = {lang: getattr(lingua.Language, _LINGUA_NAMES[lang]) for lang in self.languages}
        back = {v: k for k, v in to_lingua.items()}
        if len(to_lingua) == 1:
            only = self.languages[0]
            return lambda text: only
        detector = lingua.LanguageDetectorBuilder.from_languages(*to_lingua.values()).build()

        def classify(text: str) -> str | None:
            found = detector.detect_language_of(text)
            return back.get(found) if found is not None else None

        return classify

    def __call__(self, text: str) -> str | None:
        """The language of ``text`` among :attr:`languages`, or None if it is too short."""
        if sum(not c.isspace() for c in text) < self.min_chars:
            return None
        return self._classify(text)

    def identify_many(self, texts: Iterable[str]) -> list[str | None]:
        """:meth:`__call__` for each text."""
        return [self(text) for text in texts]

    def __repr__(self) -> str:
        return f"LanguageIdentifier(languages={list(self.languages)}, backend={self.backend!r})"


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
