"""Multilingual text corpora for collecting activation statistics.

LAPE needs some text in every language of interest. This module gets it from four kinds of
source, all returning the same shape, a ``dict`` from language code to a list of texts:

- :func:`load_debian_handbook`: the Debian Administrator's Handbook (Debian package
  ``debian-handbook``, CC-BY-SA 3.0 or GPL-2+), one book translated into 26 languages. It is a
  *parallel* corpus (the same content in every language), which keeps topic out of the
  comparison between languages. Paragraphs left untranslated (identical to an English
  paragraph) are dropped, and whole chapter files are held out for evaluation, the same files
  for every language.
- :func:`load_libreoffice_help`: the LibreOffice Help (Debian packages
  ``libreoffice-help-<locale>``, MPL-2.0), a second parallel corpus from another domain (an
  office suite's user help) in 34 languages, the paper's seven included. Untranslated
  paragraphs are found by their ids, shared by all editions, and dropped; whole help pages are
  held out, the same pages for every language.
- :func:`load_text_files`: plain text files, one per language.
- :func:`load_hf_dataset`: a Hugging Face dataset (e.g. ``wikimedia/wikipedia``, the paper's
  source) streamed up to a character budget per language; needs the optional ``datasets``
  package.

:func:`filter_language` drops lines that a language identifier (the optional ``py3langid``
package) does not assign to the declared language.

Example:
    >>> from tl_lape.sources.corpora import load_debian_handbook
    >>> corpus = load_debian_handbook(["en", "fr"], split="heldout")  # doctest: +SKIP
    >>> sorted(corpus), len(corpus["fr"]) > 0  # doctest: +SKIP
    (['en', 'fr'], True)
"""

import codecs
import gzip
import hashlib
import html.parser
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tl_lape.errors import LapeError
from tl_lape.formats import atomic_path, existing_file, parse_json

__all__ = [
    "HANDBOOK_LOCALES",
    "LIBREOFFICE_HELP_LOCALES",
    "PAPER_LANGUAGES",
    "filter_language",
    "find_debian_handbook",
    "handbook_locale",
    "libreoffice_help_locale",
    "load_corpus",
    "load_debian_handbook",
    "load_handbook_parallel",
    "load_hf_dataset",
    "load_libreoffice_help",
    "load_libreoffice_parallel",
    "load_text_files",
    "tl_lape_cache_dir",
]

logger = logging.getLogger(__name__)

#: The seven languages of Tang et al. (2024), as ISO 639-1 codes.
PAPER_LANGUAGES: tuple[str, ...] = ("en", "zh", "fr", "es", "vi", "id", "ja")

#: The handbook edition (locale directory) used for a bare language code.
HANDBOOK_LOCALES: dict[str, str] = {
    "ar": "ar-MA",
    "ca": "ca-ES",
    "cs": "cs-CZ",
    "da": "da-DK",
    "de": "de-DE",
    "el": "el-GR",
    "en": "en-US",
    "es": "es-ES",
    "fa": "fa-IR",
    "fr": "fr-FR",
    "hr": "hr-HR",
    "id": "id-ID",
    "it": "it-IT",
    "ja": "ja-JP",
    "ko": "ko-KR",
    "nb": "nb-NO",
    "nl": "nl-NL",
    "pl": "pl-PL",
    "pt": "pt-BR",
    "ro": "ro-RO",
    "ru": "ru-RU",
    "sv": "sv-SE",
    "tr": "tr-TR",
    "vi": "vi-VN",
    "zh": "zh-CN",
}

_SYSTEM_HANDBOOK = Path("/usr/share/doc/debian-handbook")
_ENGLISH_LOCALE = "en-US"
# One chapter file in _HELDOUT_MODULUS (about 14% of the text) is held out, chosen by a hash of
# its name, so the split is the same for every language, every machine and every run.
_HELDOUT_MODULUS = 7
_CACHE_FORMAT = 2
# A paragraph whose word characters are at least this share words of the English paragraph at
# the same place is an untranslated one, e.g. English text whose links were translated.
_ALIGNED_ENGLISH_SHARE = 0.7
_WORD = re.compile(r"\w+")
_INSTALL_HINT = (
    "Install it with `sudo apt-get install debian-handbook` (Debian/Ubuntu), or make "
    "`apt-get download debian-handbook` work so tl_lape can fetch it into its cache."
)


def tl_lape_cache_dir() -> Path:
    """Return tl_lape's cache directory (``$TL_LAPE_CACHE``, else ``$XDG_CACHE_HOME/tl_lape``).

    Example:
        >>> tl_lape_cache_dir().name  # doctest: +SKIP
        'tl_lape'
    """
    explicit = os.environ.get("TL_LAPE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "tl_lape"


# --------------------------------------------------------------------------------------------
# The Debian Administrator's Handbook
# --------------------------------------------------------------------------------------------


def handbook_locale(language: str) -> str:
    """Map a language code (``"fr"``) or a handbook locale (``"fr-FR"``) to a locale directory.

    Example:
        >>> handbook_locale("zh"), handbook_locale("zh-TW"), handbook_locale("pt_BR")
        ('zh-CN', 'zh-TW', 'pt-BR')
    """
    if not isinstance(language, str) or not language:
        raise LapeError(f"language must be a non-empty string such as 'fr', got {language!r}.")
    code = language.replace("_", "-")
    if "-" in code:
        head, tail = code.split("-", 1)
        return f"{head.lower()}-{tail.upper()}"
    if code.lower() in HANDBOOK_LOCALES:
        return HANDBOOK_LOCALES[code.lower()]
    raise LapeError(
        f"No Debian Administrator's Handbook edition for language {language!r}. Use one of "
        f"{sorted(HANDBOOK_LOCALES)} or a locale such as 'zh-TW'."
    )


def _handbook_version(doc_dir: Path) -> str:
    changelog = doc_dir / "changelog.gz"
    if changelog.is_file():
        with gzip.open(changelog, "rt", encoding="utf-8", errors="replace") as fh:
            match = re.match(r"\S+ \(([^)]+)\)", fh.readline())
        if match:
            return match.group(1)
    # No changelog: key the cache on the file list and sizes instead.
    digest = hashlib.sha256()
    for path in sorted((doc_dir / "html" / _ENGLISH_LOCALE).glob("*.html")):
        digest.update(f"{path.name}:{path.stat().st_size};".encode())
    return "unknown-" + digest.hexdigest()[:12]


def _fetch_handbook(cache_dir: Path) -> Path:
    """Download the ``debian-handbook`` package with apt (no root) and unpack it into the cache."""
    target = cache_dir / "debian-handbook-pkg"
    doc_dir = target / "usr" / "share" / "doc" / "debian-handbook"
    if (doc_dir / "html" / _ENGLISH_LOCALE).is_dir():
        return doc_dir
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise LapeError(
            "The Debian Administrator's Handbook is not installed "
            f"({_SYSTEM_HANDBOOK} is missing) and apt-get/dpkg-deb are not available to "
            f"fetch it. {_INSTALL_HINT}"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        logger.info("Downloading the debian-handbook package into %s", tmp)
        try:
            subprocess.run(
                ["apt-get", "download", "debian-handbook"],
                cwd=tmp,
                check=True,
                capture_output=True,
                text=True,
            )
            debs = sorted(Path(tmp).glob("debian-handbook_*.deb"))
            if not debs:
                raise LapeError(f"apt-get download produced no .deb file. {_INSTALL_HINT}")
            unpacked = Path(tmp) / "unpacked"
            subprocess.run(
                ["dpkg-deb", "-x", str(debs[0]), str(unpacked)],
                check=True,
                capture_output=True,
                text=True,
            )
        except subprocess.CalledProcessError as err:
            raise LapeError(
                f"Fetching the Debian Administrator's Handbook failed: {' '.join(err.cmd)} "
                f"exited with {err.returncode}: {err.stderr.strip()[:500]}. {_INSTALL_HINT}"
            ) from err
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    return doc_dir


def find_debian_handbook(*, download: bool = True, cache_dir: str | Path | None = None) -> Path:
    """Return the handbook's documentation directory (the one holding ``html/<locale>/``).

    Uses the installed package if there is one, else a copy fetched earlier into the cache,
    else (with ``download=True``) fetches the package with ``apt-get download``.

    Raises:
        LapeError: if the handbook is neither installed nor fetchable.

    Example:
        >>> (find_debian_handbook() / "html" / "en-US").is_dir()  # doctest: +SKIP
        True
    """
    if (_SYSTEM_HANDBOOK / "html" / _ENGLISH_LOCALE).is_dir():
        return _SYSTEM_HANDBOOK
    cache = Path(cache_dir) if cache_dir is not None else tl_lape_cache_dir()
    cached = cache / "debian-handbook-pkg" / "usr" / "share" / "doc" / "debian-handbook"
    if (cached / "html" / _ENGLISH_LOCALE).is_dir():
        return cached
    if not download:
        raise LapeError(
            f"The Debian Administrator's Handbook is not installed ({_SYSTEM_HANDBOOK} is "
            f"missing) and download=False. {_INSTALL_HINT}"
        )
    return _fetch_handbook(cache)


class _ParagraphParser(html.parser.HTMLParser):
    """Collect the text of each outermost ``<div class="para">``, without ``<pre>`` blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._parts: list[str] | None = None
        self._div_depth = 0
        self._pre_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "div":
            if self._parts is not None:
                self._div_depth += 1
            elif "para" in (dict(attrs).get("class") or "").split():
                self._parts = []
                self._div_depth = 1
        elif tag == "pre" and self._parts is not None:
            self._pre_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if self._parts is None:
            return
        if tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
        elif tag == "div":
            self._div_depth -= 1
            if self._div_depth == 0:
                text = " ".join("".join(self._parts).split())
                if text:
                    self.paragraphs.append(text)
                self._parts = None

    def handle_data(self, data: str) -> None:
        if self._parts is not None and not self._pre_depth:
            self._parts.append(data)


def _parse_edition(locale_dir: Path) -> dict[str, list[str]]:
    """Paragraphs of every chapter file of one edition, keyed by file name."""
    chapters = {}
    for path in sorted(locale_dir.glob("*.html")):
        parser = _ParagraphParser()
        parser.feed(path.read_text(encoding="utf-8"))
        parser.close()
        chapters[path.name] = parser.paragraphs
    return chapters


def _is_heldout(chapter_file: str) -> bool:
    digest = hashlib.sha256(chapter_file.encode()).digest()
    return int.from_bytes(digest[:8], "big") % _HELDOUT_MODULUS == 0


def _atomic_write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")


def _english_share(paragraph: str, english: str) -> float:
    """Share of ``paragraph``'s word characters in words that also occur in ``english``."""
    words = _WORD.findall(paragraph.lower())
    total = sum(map(len, words))
    if total == 0:
        return 1.0
    english_words = set(_WORD.findall(english.lower()))
    return sum(len(w) for w in words if w in english_words) / total


def _translated(text: str, english: str, english_set: set[str]) -> bool:
    """Whether ``text`` is a translation of the English paragraph ``english``: not identical to
    any English paragraph (``english_set``) and less than 70% made of ``english``'s words."""
    return text not in english_set and _english_share(text, english) < _ALIGNED_ENGLISH_SHARE


def _drop_untranslated(
    edition: dict[str, list[str]], english: dict[str, list[str]], mode: str
) -> dict[str, list[str]]:
    english_set = {p for paragraphs in english.values() for p in paragraphs}
    kept: dict[str, list[str]] = {}
    for name, paragraphs in edition.items():
        aligned = english.get(name, [])
        # Editions are aligned paragraph by paragraph when a chapter has the same count.
        same_shape = mode == "aligned" and len(aligned) == len(paragraphs)
        kept[name] = [
            p
            for i, p in enumerate(paragraphs)
            if p not in english_set
            and not (same_shape and _english_share(p, aligned[i]) >= _ALIGNED_ENGLISH_SHARE)
        ]
    return kept


def _load_cache(path: Path, version: str) -> dict[str, Any]:
    empty: dict[str, Any] = {"format": _CACHE_FORMAT, "version": version, "editions": {}}
    if not path.is_file():
        return empty
    try:
        payload = parse_json(
            path.read_bytes(), where=f"the handbook cache {str(path)!r}", advice=""
        )
    except (OSError, ValueError):  # a LapeError is a ValueError
        logger.warning("Ignoring unreadable handbook cache %s", path)
        return empty
    if not isinstance(payload, dict):
        return empty
    if payload.get("format") != _CACHE_FORMAT or payload.get("version") != version:
        return empty
    return payload


def _check_split(split: str) -> None:
    if split not in ("train", "heldout", "all"):
        raise LapeError(f"split must be 'train', 'heldout' or 'all', got {split!r}.")


def _check_languages(
    languages: Iterable[str], locale_of: Callable[[str], str] | None = None
) -> dict[str, str]:
    """``{language as given: its locale}`` (``locale_of``, default :func:`handbook_locale`),
    checked (non-empty, no repeats, known)."""
    if isinstance(languages, str):
        languages = [languages]
    languages = list(languages)
    if not languages:
        raise LapeError("languages is empty; pass at least one language code such as 'fr'.")
    if len(set(languages)) != len(languages):
        raise LapeError(f"languages must not repeat, got {languages!r}.")
    locale_of = handbook_locale if locale_of is None else locale_of
    return {lang: locale_of(lang) for lang in languages}


def _load_editions(
    locales: Mapping[str, str], *, download: bool, cache_dir: str | Path | None
) -> dict[str, dict[str, list[str]]]:
    """All paragraphs of English and the ``locales``' editions, by chapter file (cached)."""
    doc_dir = find_debian_handbook(download=download, cache_dir=cache_dir)
    html_dir = doc_dir / "html"
    available = sorted(p.name for p in html_dir.iterdir() if (p / "index.html").is_file())
    for lang, locale in locales.items():
        if locale not in available:
            raise LapeError(
                f"The handbook in {html_dir} has no edition {locale!r} (for language "
                f"{lang!r}); available: {available}."
            )
    version = _handbook_version(doc_dir)
    cache = Path(cache_dir) if cache_dir is not None else tl_lape_cache_dir()
    cache_path = cache / f"debian-handbook-{version}.json"
    payload = _load_cache(cache_path, version)
    editions: dict[str, dict[str, list[str]]] = payload["editions"]
    missing = sorted({_ENGLISH_LOCALE, *locales.values()} - set(editions))
    for locale in missing:
        logger.info("Parsing the %s edition of the handbook", locale)
        editions[locale] = _parse_edition(html_dir / locale)
    if missing:
        _atomic_write_json(cache_path, payload)
    return editions


def load_debian_handbook(
    languages: Iterable[str] = PAPER_LANGUAGES,
    split: str = "train",
    *,
    untranslated: str = "aligned",
    download: bool = True,
    cache_dir: str | Path | None = None,
) -> dict[str, list[str]]:
    """Load translated paragraphs of the Debian Administrator's Handbook per language.

    The book is parsed once per package version and cached as JSON in ``cache_dir``
    (default :func:`tl_lape_cache_dir`). Untranslated paragraphs are dropped from the editions
    other than English: those identical to any English paragraph and, with
    ``untranslated="aligned"``, also those made mostly (70% of their word characters) of the
    words of the English paragraph at the same place of the same chapter: English text left
    in a translation whose links or a few words were translated, or which an English revision
    changed since (about a fifth of the Vietnamese edition, 3-5% of the others). About one
    chapter file in seven is held out, chosen by a hash of its file name, the same files for
    every language.

    Args:
        languages: language codes (``"fr"``) or handbook locales (``"fr-FR"``, ``"zh-TW"``);
            the result is keyed by these strings as given.
        split: ``"train"``, ``"heldout"`` or ``"all"``.
        untranslated: ``"aligned"`` or ``"exact"`` (drop only paragraphs identical to an
            English one; what the demo model was trained on).
        download: fetch the package with ``apt-get download`` if it is not installed.
        cache_dir: where the parsed book (and a fetched package) are kept.

    Returns:
        ``{language: [paragraph, ...]}`` in book order.

    Raises:
        LapeError: for an unknown language or split, or if the book cannot be found.

    Example:
        >>> corpus = load_debian_handbook(["fr", "vi"], split="heldout")  # doctest: +SKIP
        >>> all(len(texts) > 0 for texts in corpus.values())  # doctest: +SKIP
        True
    """
    _check_split(split)
    if untranslated not in ("aligned", "exact"):
        raise LapeError(f"untranslated must be 'aligned' or 'exact', got {untranslated!r}.")
    locales = _check_languages(languages)
    editions = _load_editions(locales, download=download, cache_dir=cache_dir)

    english = editions[_ENGLISH_LOCALE]
    corpus: dict[str, list[str]] = {}
    for lang, locale in locales.items():
        edition = editions[locale]
        if locale != _ENGLISH_LOCALE:
            edition = _drop_untranslated(edition, english, untranslated)
        corpus[lang] = [
            paragraph
            for name, paragraphs in edition.items()
            if split == "all" or (split == "heldout") == _is_heldout(name)
            for paragraph in paragraphs
        ]
    return corpus


def load_handbook_parallel(
    languages: Iterable[str] = PAPER_LANGUAGES,
    split: str = "heldout",
    *,
    min_chars: int = 200,
    download: bool = True,
    cache_dir: str | Path | None = None,
) -> list[dict[str, str]]:
    """Paragraphs of the handbook aligned across languages: the same paragraph in each.

    A chapter file contributes only when every requested edition has exactly as many
    paragraphs as the English one (then the editions are aligned paragraph by paragraph), and
    a paragraph only when, in every non-English edition, it is translated (not identical to an
    English paragraph and less than 70% made of the English paragraph's words), not empty, and
    the English version has at least ``min_chars`` characters (Chinese and Japanese
    translations are about a third as long in characters, so the bar is on English). The
    held-out chapter files are those of :func:`load_debian_handbook`.

    Args:
        languages: Language codes or handbook locales (the keys of each returned item).
        split: ``"train"``, ``"heldout"`` (the default) or ``"all"``.
        min_chars: Shortest English paragraph kept, in characters.
        download: Fetch the package with ``apt-get download`` if it is not installed.
        cache_dir: Where the parsed book is kept.

    Returns:
        ``[{language: paragraph}, ...]`` in book order.

    Example:
        >>> items = load_handbook_parallel(["en", "fr"])  # doctest: +SKIP
        >>> sorted(items[0])  # doctest: +SKIP
        ['en', 'fr']
    """
    _check_split(split)
    if not isinstance(min_chars, int) or min_chars < 0:
        raise LapeError(f"min_chars must be a non-negative integer; received {min_chars!r}")
    locales = _check_languages(languages)
    editions = _load_editions(locales, download=download, cache_dir=cache_dir)
    english = editions[_ENGLISH_LOCALE]
    english_set = {p for paragraphs in english.values() for p in paragraphs}
    items: list[dict[str, str]] = []
    for name, source in english.items():
        if split != "all" and (split == "heldout") != _is_heldout(name):
            continue
        versions = {lang: editions[loc].get(name, []) for lang, loc in locales.items()}
        if any(len(v) != len(source) for v in versions.values()):
            continue
        for i, paragraph in enumerate(source):
            item = {lang: v[i] for lang, v in versions.items()}
            translated = all(
                locales[lang] == _ENGLISH_LOCALE or _translated(text, paragraph, english_set)
                for lang, text in item.items()
            )
            if translated and len(paragraph) >= min_chars and all(t.strip() for t in item.values()):
                items.append(item)
    return items


# --------------------------------------------------------------------------------------------
# LibreOffice Help
# --------------------------------------------------------------------------------------------

#: The LibreOffice Help edition (locale directory) per language code; Debian ships each as the
#: package ``libreoffice-help-<locale in lower case>`` (e.g. ``libreoffice-help-zh-cn``).
LIBREOFFICE_HELP_LOCALES: dict[str, str] = {
    "ca": "ca",
    "cs": "cs",
    "da": "da",
    "de": "de",
    "dz": "dz",
    "el": "el",
    "en": "en-US",
    "en-GB": "en-GB",
    "es": "es",
    "et": "et",
    "eu": "eu",
    "fi": "fi",
    "fr": "fr",
    "gl": "gl",
    "hi": "hi",
    "hu": "hu",
    "id": "id",
    "it": "it",
    "ja": "ja",
    "km": "km",
    "ko": "ko",
    "nl": "nl",
    "om": "om",
    "pl": "pl",
    "pt": "pt",
    "pt-BR": "pt-BR",
    "ru": "ru",
    "sk": "sk",
    "sl": "sl",
    "sv": "sv",
    "tr": "tr",
    "vi": "vi",
    "zh": "zh-CN",
    "zh-TW": "zh-TW",
}

_SYSTEM_LIBREOFFICE_HELP = Path("/usr/share/libreoffice/help")
_HELP_ENGLISH = "en-US"
_HELP_CACHE_FORMAT = 1
_HELP_DEB_DIR = "libreoffice-help-debs"
# The running text of a help page: its paragraphs and list items. Table cells, headings, code,
# icon captions and "related topics" links are left out.
_HELP_TEXT_CLASSES = frozenset({"paragraph", "listitem"})
_HELP_BROKEN_EMBED = re.compile(r"\[text/[^\]]*not found\]")
_VOID_TAGS = frozenset(
    {"area", "br", "col", "embed", "hr", "img", "input", "meta", "source", "wbr"}
)


def libreoffice_help_locale(language: str) -> str:
    """Map a language code (``"zh"``) or a locale (``"zh-TW"``, ``"pt_BR"``) to a help edition.

    Raises:
        LapeError: if LibreOffice Help has no edition for ``language``.

    Example:
        >>> [libreoffice_help_locale(code) for code in ("zh", "en", "pt_BR", "vi")]
        ['zh-CN', 'en-US', 'pt-BR', 'vi']
    """
    if not isinstance(language, str) or not language:
        raise LapeError(f"language must be a non-empty string such as 'fr', got {language!r}.")
    wanted = language.replace("_", "-").lower()
    for code, locale in LIBREOFFICE_HELP_LOCALES.items():
        if wanted in (code.lower(), locale.lower()):
            return locale
    raise LapeError(
        f"LibreOffice Help has no edition for language {language!r}. It covers "
        f"{sorted(LIBREOFFICE_HELP_LOCALES)}; use one of these codes, or another corpus "
        "(load_debian_handbook, load_text_files) for this language."
    )


def _help_package(locale: str) -> str:
    return f"libreoffice-help-{locale.lower()}"


def _help_install_hint(locale: str) -> str:
    package = _help_package(locale)
    return (
        f"Install it with `sudo apt-get install {package}` (Debian/Ubuntu), or make "
        f"`apt-get download {package}` work so tl_lape can fetch it into its cache."
    )


class _HelpParagraphParser(html.parser.HTMLParser):
    """Collect ``(id, text)`` of each ``<p class="paragraph">`` or ``"listitem"`` of a help page.

    Platform and application variants (``<span hidden>`` such as the macOS menu path) are left
    out; the variant whose id starts with ``default`` is kept, once.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[tuple[str, str]] = []
        self._parts: list[str] | None = None
        self._id = ""
        self._hidden_stack: list[bool] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if self._parts is None:
            classes = set((attributes.get("class") or "").split())
            if tag == "p" and classes & _HELP_TEXT_CLASSES:
                self._parts = []
                self._id = attributes.get("id") or f"#{len(self.paragraphs)}"
                self._hidden_stack = []
                self._hidden_depth = 0
            return
        if tag in _VOID_TAGS:
            if tag == "br":
                self._parts.append(" ")
            return
        hidden = "hidden" in attributes and not (attributes.get("id") or "").startswith("default")
        self._hidden_stack.append(hidden)
        self._hidden_depth += hidden

    def handle_endtag(self, tag: str) -> None:
        if self._parts is None or tag in _VOID_TAGS:
            return
        if tag == "p":  # a <p> cannot hold another: this one ends here
            text = " ".join("".join(self._parts).split())
            # "[text/.../x.xhp#id not found]." marks a failed embed (lists of function names)
            if text and not _HELP_BROKEN_EMBED.search(text):
                self.paragraphs.append((self._id, text))
            self._parts = None
        elif self._hidden_stack:
            self._hidden_depth -= self._hidden_stack.pop()

    def handle_data(self, data: str) -> None:
        if self._parts is not None and not self._hidden_depth:
            self._parts.append(data)


def _parse_help(text_dir: Path) -> dict[str, list[list[str]]]:
    """``{page path under text/: [[paragraph id, text], ...]}`` of one help edition."""
    pages: dict[str, list[list[str]]] = {}
    for path in sorted(text_dir.rglob("*.html")):
        parser = _HelpParagraphParser()
        parser.feed(path.read_text(encoding="utf-8"))
        parser.close()
        if parser.paragraphs:
            pages[path.relative_to(text_dir).as_posix()] = [list(p) for p in parser.paragraphs]
    return pages


def _system_help_version(locale: str) -> str:
    changelog = Path("/usr/share/doc") / _help_package(locale) / "changelog.Debian.gz"
    if changelog.is_file():
        with gzip.open(changelog, "rt", encoding="utf-8", errors="replace") as fh:
            match = re.match(r"\S+ \(([^)]+)\)", fh.readline())
        if match:
            return match.group(1)
    digest = hashlib.sha256()
    for path in sorted((_SYSTEM_LIBREOFFICE_HELP / locale / "text").rglob("*.html")):
        digest.update(f"{path}:{path.stat().st_size};".encode())
    return "unknown-" + digest.hexdigest()[:12]


def _fetch_help_deb(locale: str, cache: Path) -> Path:
    """Download ``libreoffice-help-<locale>`` with ``apt-get download`` (no root) into the cache."""
    package = _help_package(locale)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise LapeError(
            f"LibreOffice Help for {locale!r} is not installed "
            f"({_SYSTEM_LIBREOFFICE_HELP / locale} is missing) and apt-get/dpkg-deb are not "
            f"available to fetch it. {_help_install_hint(locale)}"
        )
    deb_dir = cache / _HELP_DEB_DIR
    deb_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=deb_dir) as tmp:
        logger.info("Downloading the %s package into %s", package, tmp)
        try:
            subprocess.run(
                ["apt-get", "download", package],
                cwd=tmp,
                check=True,
                capture_output=True,
                text=True,
            )
        except subprocess.CalledProcessError as err:
            raise LapeError(
                f"Fetching LibreOffice Help for {locale!r} failed: {' '.join(err.cmd)} exited "
                f"with {err.returncode}: {err.stderr.strip()[:500]}. {_help_install_hint(locale)}"
            ) from err
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not debs:
            raise LapeError(
                f"apt-get download {package} produced no .deb file. {_help_install_hint(locale)}"
            )
        target = deb_dir / debs[0].name
        os.replace(debs[0], target)
    return target


def _help_edition(
    locale: str, *, download: bool, cache_dir: str | Path | None
) -> dict[str, list[list[str]]]:
    """The paragraphs of one help edition by page, from the installed or a fetched package."""
    cache = Path(cache_dir) if cache_dir is not None else tl_lape_cache_dir()
    package = _help_package(locale)
    system_dir = _SYSTEM_LIBREOFFICE_HELP / locale / "text"
    deb: Path | None = None
    if system_dir.is_dir():
        version = _system_help_version(locale)
    else:
        cached = sorted((cache / _HELP_DEB_DIR).glob(f"{package}_*.deb"))
        if cached:
            deb = cached[-1]
        elif download:
            deb = _fetch_help_deb(locale, cache)
        else:
            raise LapeError(
                f"LibreOffice Help for {locale!r} is not installed ({system_dir} is missing), "
                f"no copy is in the cache {cache / _HELP_DEB_DIR} and download=False. "
                f"{_help_install_hint(locale)}"
            )
        version = urllib.parse.unquote(deb.name.split("_")[1])
    cache_path = cache / f"{package}-{re.sub(r'[^A-Za-z0-9.+-]', '_', version)}.json"
    if cache_path.is_file():
        try:
            payload = parse_json(cache_path.read_bytes(), where=str(cache_path), advice="")
        except (OSError, ValueError):  # a LapeError is a ValueError
            logger.warning("Ignoring unreadable LibreOffice Help cache %s", cache_path)
        else:
            if (
                isinstance(payload, dict)
                and payload.get("format") == _HELP_CACHE_FORMAT
                and payload.get("version") == version
                and isinstance(payload.get("pages"), dict)
            ):
                pages: dict[str, list[list[str]]] = payload["pages"]
                return pages
    logger.info("Parsing the %s edition of LibreOffice Help", locale)
    if deb is None:
        pages = _parse_help(system_dir)
    else:
        if shutil.which("dpkg-deb") is None:
            raise LapeError(
                f"Unpacking {deb} needs dpkg-deb, which is not available. "
                f"{_help_install_hint(locale)}"
            )
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            try:
                subprocess.run(
                    ["dpkg-deb", "-x", str(deb), tmp], check=True, capture_output=True, text=True
                )
            except subprocess.CalledProcessError as err:
                raise LapeError(
                    f"Unpacking {deb} failed: dpkg-deb exited with {err.returncode}: "
                    f"{err.stderr.strip()[:500]}. Delete the file and try again. "
                    f"{_help_install_hint(locale)}"
                ) from err
            text_dir = Path(tmp) / "usr" / "share" / "libreoffice" / "help" / locale / "text"
            if not text_dir.is_dir():
                raise LapeError(
                    f"The package {deb.name} has no help pages for {locale!r} (no "
                    f"usr/share/libreoffice/help/{locale}/text). Delete it and try again. "
                    f"{_help_install_hint(locale)}"
                )
            pages = _parse_help(text_dir)
    _atomic_write_json(
        cache_path, {"format": _HELP_CACHE_FORMAT, "version": version, "pages": pages}
    )
    return pages


def load_libreoffice_help(
    languages: Iterable[str] = PAPER_LANGUAGES,
    split: str = "train",
    *,
    untranslated: str = "aligned",
    download: bool = True,
    cache_dir: str | Path | None = None,
) -> dict[str, list[str]]:
    """Load translated paragraphs of the LibreOffice Help per language.

    A second source of running text beside :func:`load_debian_handbook`, from another domain
    (an office suite's user help: documents, spreadsheets, formulas, drawing, macros) and
    under another licence (MPL-2.0). It is translated into 34 languages, the paper's seven
    included; each edition is a Debian package, ``libreoffice-help-<locale>``
    (``libreoffice-help-en-us``, ``libreoffice-help-zh-cn``, ``libreoffice-help-fr``, ...).
    The text is the paragraphs and list items of the help pages, without tables, headings,
    code, the macOS variants of menu paths or paragraphs with a failed embed. Paragraphs
    carry the same id in every edition, so untranslated ones are found exactly: a paragraph
    is dropped from an edition other than English if it is identical to any English
    paragraph or (with ``untranslated="aligned"``) if 70% of its word characters are words of
    the English paragraph with the same id. That leaves 41-45% of the English paragraph count
    in Vietnamese and Japanese, 63-68% in Chinese and Indonesian, 82-92% in Spanish and
    French. About one page in seven is held out, chosen by a hash of its path, the same pages
    for every language.

    Each edition is parsed once per package version and cached as JSON in ``cache_dir``
    (default :func:`tl_lape_cache_dir`); a package that is not installed is fetched there with
    ``apt-get download`` (no root needed).

    Args:
        languages: Language codes (``"zh"``) or help locales (``"zh-TW"``, ``"pt-BR"``);
            the result is keyed by these strings as given.
        split: ``"train"``, ``"heldout"`` or ``"all"``.
        untranslated: ``"aligned"`` or ``"exact"`` (drop only paragraphs identical to an
            English one).
        download: Fetch the packages with ``apt-get download`` if they are not installed.
        cache_dir: Where the parsed editions (and fetched packages) are kept.

    Returns:
        ``{language: [paragraph, ...]}``, pages in path order, paragraphs in page order.

    Raises:
        LapeError: for a language LibreOffice Help does not cover, an unknown split, or an
            edition that is neither installed nor fetchable.

    Example:
        >>> corpus = load_libreoffice_help(["vi", "id"], split="heldout")  # doctest: +SKIP
        >>> all(len(texts) > 0 for texts in corpus.values())  # doctest: +SKIP
        True
    """
    _check_split(split)
    if untranslated not in ("aligned", "exact"):
        raise LapeError(f"untranslated must be 'aligned' or 'exact', got {untranslated!r}.")
    locales = _check_languages(languages, libreoffice_help_locale)
    english = _help_edition(_HELP_ENGLISH, download=download, cache_dir=cache_dir)
    english_set = {text for paragraphs in english.values() for _, text in paragraphs}
    corpus: dict[str, list[str]] = {}
    for lang, locale in locales.items():
        edition = (
            english
            if locale == _HELP_ENGLISH
            else _help_edition(locale, download=download, cache_dir=cache_dir)
        )
        texts: list[str] = []
        for page, paragraphs in edition.items():
            if split != "all" and (split == "heldout") != _is_heldout(page):
                continue
            aligned: dict[str, str] = {}
            if untranslated == "aligned":
                for pid, text in english.get(page, []):
                    aligned.setdefault(pid, text)
            for pid, text in paragraphs:
                if locale != _HELP_ENGLISH and not _translated(
                    text, aligned.get(pid, ""), english_set
                ):
                    continue
                texts.append(text)
        corpus[lang] = texts
    return corpus


def load_libreoffice_parallel(
    languages: Iterable[str] = PAPER_LANGUAGES,
    split: str = "heldout",
    *,
    min_chars: int = 200,
    download: bool = True,
    cache_dir: str | Path | None = None,
) -> list[dict[str, str]]:
    """Paragraphs of the LibreOffice Help aligned across languages: the same paragraph in each.

    The second source of :func:`load_handbook_parallel`'s items. Help paragraphs carry the same
    id in every edition, so alignment is exact: a paragraph id of a page contributes when it
    occurs once on the English page, every requested edition has it, and in every non-English
    edition it is translated (not identical to an English paragraph and less than 70% made of
    the English paragraph's words, as :func:`load_libreoffice_help` with
    ``untranslated="aligned"`` decides), and the English version has at least ``min_chars``
    characters. The held-out pages are those of :func:`load_libreoffice_help`; as help pages
    share paragraphs, a held-out item whose English text is on a train page is dropped, and no
    English text is returned twice.

    Args:
        languages: Language codes or help locales (the keys of each returned item).
        split: ``"train"``, ``"heldout"`` (the default) or ``"all"``.
        min_chars: Shortest English paragraph kept, in characters.
        download: Fetch the packages with ``apt-get download`` if they are not installed.
        cache_dir: Where the parsed editions (and fetched packages) are kept.

    Returns:
        ``[{language: paragraph}, ...]``, pages in path order, paragraphs in page order.

    Example:
        >>> items = load_libreoffice_parallel(["en", "fr"])  # doctest: +SKIP
        >>> sorted(items[0])  # doctest: +SKIP
        ['en', 'fr']
    """
    _check_split(split)
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 0:
        raise LapeError(f"min_chars must be a non-negative integer; received {min_chars!r}")
    locales = _check_languages(languages, libreoffice_help_locale)
    english = _help_edition(_HELP_ENGLISH, download=download, cache_dir=cache_dir)
    english_set = {text for paragraphs in english.values() for _, text in paragraphs}
    editions = {
        lang: english
        if locale == _HELP_ENGLISH
        else _help_edition(locale, download=download, cache_dir=cache_dir)
        for lang, locale in locales.items()
    }
    # Help pages share paragraphs: a held-out item may not repeat a train page's text, and no
    # English text comes twice.
    seen = (
        {text for page, ps in english.items() if not _is_heldout(page) for _, text in ps}
        if split == "heldout"
        else set()
    )
    items: list[dict[str, str]] = []
    for page, paragraphs in english.items():
        if split != "all" and (split == "heldout") != _is_heldout(page):
            continue
        counts = Counter(pid for pid, _ in paragraphs)
        by_id = {lang: {pid: text for pid, text in e.get(page, [])} for lang, e in editions.items()}
        for pid, paragraph in paragraphs:
            if counts[pid] > 1 or len(paragraph) < min_chars or paragraph in seen:
                continue
            item = {lang: found.get(pid, "") for lang, found in by_id.items()}
            translated = all(
                locales[lang] == _HELP_ENGLISH
                or (text.strip() and _translated(text, paragraph, english_set))
                for lang, text in item.items()
            )
            if translated:
                items.append(item)
                seen.add(paragraph)
    return items


# --------------------------------------------------------------------------------------------
# Plain text files
# --------------------------------------------------------------------------------------------


def _split_text(text: str, unit: str) -> list[str]:
    if unit == "line":
        pieces = text.splitlines()
    elif unit == "paragraph":
        pieces = re.split(r"\n\s*\n", text)
    else:
        pieces = [text]
    return [p.strip() for p in pieces if p.strip()]


def load_text_files(
    source: str | Path | Mapping[str, str | Path],
    languages: Iterable[str] | None = None,
    *,
    unit: str = "line",
    encoding: str = "utf-8",
) -> dict[str, list[str]]:
    """Load plain text per language from files.

    Args:
        source: a mapping ``{language: path}``, or a directory holding ``<language>.txt`` files.
        languages: the languages to load (default: all in ``source``).
        unit: one text per non-empty ``"line"``, per blank-line separated ``"paragraph"``, or
            per ``"file"``.
        encoding: the files' text encoding.

    Returns:
        ``{language: [text, ...]}``.

    Raises:
        LapeError: if a file or directory is missing, a language is not in ``source``, or a
            file holds no text.

    Example:
        >>> corpus = load_text_files("my_corpus/")  # doctest: +SKIP
        >>> sorted(corpus)  # doctest: +SKIP
        ['en', 'fr']
    """
    if unit not in ("line", "paragraph", "file"):
        raise LapeError(f"unit must be 'line', 'paragraph' or 'file', got {unit!r}.")
    if isinstance(source, Mapping):
        paths = {str(lang): Path(path) for lang, path in source.items()}
    else:
        directory = Path(source)
        if not directory.is_dir():
            raise LapeError(
                f"source must be a directory of <language>.txt files or a mapping "
                f"{{language: path}}, got {str(source)!r}, which is not a directory."
            )
        paths = {p.stem: p for p in sorted(directory.glob("*.txt"))}
        if not paths:
            raise LapeError(f"The directory {str(directory)!r} has no <language>.txt files.")
    wanted = list(paths) if languages is None else list(languages)
    unknown = [lang for lang in wanted if lang not in paths]
    if unknown:
        raise LapeError(
            f"No text file for languages {unknown!r} in source; it has {sorted(paths)!r}."
        )
    corpus: dict[str, list[str]] = {}
    for lang in wanted:
        path = existing_file(paths[lang], f"the text file for language {lang!r}")
        # A byte-order mark is not text: utf-8-sig drops one at the start (and reads the rest
        # as utf-8), so a file saved by an editor that adds one gives the same documents.
        try:
            codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
        except LookupError:
            raise LapeError(
                f"encoding {encoding!r} is not a text encoding Python knows; pass e.g. 'utf-8'"
            ) from None
        try:
            raw = path.read_text(encoding=codec)
        except UnicodeDecodeError as err:
            line = path.read_bytes()[: err.start].count(b"\n") + 1
            raise LapeError(
                f"The text file for language {lang!r} ({str(path)!r}) is not valid {encoding}: "
                f"byte {err.start} (line {line}) cannot be decoded ({err.reason}); convert the "
                f"file to {encoding} (e.g. with iconv) or pass the encoding it is written in."
            ) from None
        texts = _split_text(raw, unit)
        if not texts:
            raise LapeError(f"The text file for language {lang!r} ({str(path)!r}) is empty.")
        corpus[lang] = texts
    return corpus


# --------------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------------


def load_hf_dataset(
    name: str,
    config_template: str | None = "{lang}",
    languages: Iterable[str] = PAPER_LANGUAGES,
    *,
    split: str = "train",
    text_field: str = "text",
    max_chars_per_language: int | None = 2_000_000,
    streaming: bool = True,
    data_files_template: str | None = None,
    **load_kwargs: Any,
) -> dict[str, list[str]]:
    """Stream texts per language from a Hugging Face dataset, up to a character budget.

    Needs the optional ``datasets`` package (``pip install 'tl-lape[datasets]'``).

    Args:
        name: dataset name or builder, e.g. ``"wikimedia/wikipedia"`` or ``"json"``.
        config_template: the configuration per language, ``{lang}`` replaced by the language
            code, e.g. ``"20231101.{lang}"`` for Wikipedia; ``None`` for no configuration.
        languages: language codes.
        split: the dataset split.
        text_field: the column holding the text.
        max_chars_per_language: stop a language once this many characters are collected
            (``None``: no limit; the last text is kept whole).
        streaming: stream instead of downloading the whole dataset first.
        data_files_template: ``data_files`` per language, ``{lang}`` replaced (for local
            builders such as ``"json"`` or ``"parquet"``).
        **load_kwargs: passed on to ``datasets.load_dataset``.

    Returns:
        ``{language: [text, ...]}``.

    Raises:
        LapeError: if ``datasets`` is missing, a dataset cannot be loaded or lacks
            ``text_field``, or a budget is not positive.

    Example:
        >>> corpus = load_hf_dataset(
        ...     "wikimedia/wikipedia", "20231101.{lang}", ["fr", "vi"],
        ...     max_chars_per_language=100_000,
        ... )  # doctest: +SKIP
    """
    try:
        import datasets
    except ImportError as err:
        raise LapeError(
            "load_hf_dataset needs the optional `datasets` package: "
            "pip install 'tl-lape[datasets]'."
        ) from err
    if max_chars_per_language is not None and max_chars_per_language <= 0:
        raise LapeError(
            f"max_chars_per_language must be positive or None, got {max_chars_per_language!r}."
        )
    if isinstance(languages, str):
        languages = [languages]
    corpus: dict[str, list[str]] = {}
    for lang in languages:
        kwargs = dict(load_kwargs)
        if data_files_template is not None:
            kwargs["data_files"] = data_files_template.format(lang=lang)
        config = config_template.format(lang=lang) if config_template is not None else None
        try:
            dataset = datasets.load_dataset(
                name, config, split=split, streaming=streaming, **kwargs
            )
        except Exception as err:
            raise LapeError(
                f"Could not load dataset {name!r} (configuration {config!r}, split {split!r}) "
                f"for language {lang!r}: {type(err).__name__}: {err}. Check the name, the "
                "configuration template and your network or local files."
            ) from err
        texts: list[str] = []
        n_chars = 0
        for row in dataset:
            if text_field not in row:
                raise LapeError(
                    f"Dataset {name!r} has no field {text_field!r} (language {lang!r}); its "
                    f"fields are {sorted(row)!r}. Pass text_field=..."
                )
            text = str(row[text_field]).strip()
            if not text:
                continue
            texts.append(text)
            n_chars += len(text)
            if max_chars_per_language is not None and n_chars >= max_chars_per_language:
                break
        corpus[lang] = texts
    return corpus


# --------------------------------------------------------------------------------------------
# Language identification
# --------------------------------------------------------------------------------------------


def filter_language(
    texts: Iterable[str],
    language: str,
    *,
    candidates: Sequence[str] | None = None,
    min_chars: int = 20,
) -> list[str]:
    """Drop the lines of ``texts`` that a language identifier assigns to another language.

    Each text is split into lines; lines of at least ``min_chars`` characters that
    `py3langid <https://pypi.org/project/py3langid/>`_ does not classify as ``language`` are
    dropped (shorter lines are too short to judge and are kept); texts left empty are dropped.
    Needs the optional ``py3langid`` package (``pip install 'tl-lape[lid]'``).

    Args:
        texts: the texts of one language.
        language: its ISO 639-1 code (``"fr"``; a locale such as ``"fr-FR"`` also works).
        candidates: restrict the identifier to these languages (e.g. the languages of the
            study); default: all ~100 languages py3langid knows.
        min_chars: shorter lines are kept without a judgement.

    Returns:
        The texts with foreign lines removed, in order.

    Raises:
        LapeError: if py3langid is missing or does not know ``language``.

    Example:
        >>> filter_language(["Bonjour à tous, ceci est un texte.\\nThis line is English."], "fr")
        ['Bonjour à tous, ceci est un texte.']
    """
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError as err:
        raise LapeError(
            "filter_language needs the optional `py3langid` package: pip install 'tl-lape[lid]'."
        ) from err
    code = language.replace("_", "-").split("-")[0].lower()
    identifier = LanguageIdentifier.from_model_file(MODEL_FILE)
    known = set(identifier.nb_classes)
    if code not in known:
        raise LapeError(
            f"py3langid does not know language {language!r}; it knows {sorted(known)!r}."
        )
    if candidates is not None:
        wanted = {c.replace("_", "-").split("-")[0].lower() for c in candidates} | {code}
        unknown = sorted(wanted - known)
        if unknown:
            raise LapeError(f"py3langid does not know candidates {unknown!r}.")
        identifier.set_languages(sorted(wanted))
    kept: list[str] = []
    for text in texts:
        lines = [
            line
            for line in text.splitlines()
            if len(line.strip()) < min_chars or identifier.classify(line)[0] == code
        ]
        joined = "\n".join(lines).strip()
        if joined:
            kept.append(joined)
    return kept


def load_corpus(
    source: str,
    *,
    languages: Sequence[str] | None = None,
    split: str = "train",
    hf_config: str = "{lang}",
) -> dict[str, Any]:
    """A corpus named by a source string, as the command line names it.

    Args:
        source: ``"handbook"`` (:func:`load_debian_handbook`, with ``split``),
            ``"libreoffice"`` (:func:`load_libreoffice_help`, with ``split``), ``"text:DIR"``
            (:func:`load_text_files` of ``DIR/<lang>.txt``) or ``"hf:DATASET"``
            (:func:`load_hf_dataset`, with ``hf_config``).
        languages: Language codes (default: :data:`PAPER_LANGUAGES`).
        split: The handbook's or LibreOffice Help's split: ``"train"``, ``"heldout"`` or
            ``"all"``.
        hf_config: The dataset config per language, with ``{lang}``.

    Returns:
        Maps each language to its documents.
    """
    langs = tuple(PAPER_LANGUAGES if languages is None else languages)
    if source == "handbook":
        return dict(load_debian_handbook(languages=langs, split=split))
    if source == "libreoffice":
        return dict(load_libreoffice_help(languages=langs, split=split))
    if source.startswith("text:"):
        if not source[len("text:") :].strip():
            raise LapeError(
                f"the corpus source {source!r} names no folder; write 'text:DIR', DIR holding "
                "<lang>.txt files (e.g. 'text:.' for the working directory)"
            )
        folder = Path(source[len("text:") :])
        return dict(load_text_files({lang: folder / f"{lang}.txt" for lang in langs}))
    if source.startswith("hf:"):
        return dict(load_hf_dataset(source[len("hf:") :], hf_config, langs))
    raise LapeError(
        f"unknown corpus source {source!r}. Use 'handbook', 'libreoffice', 'text:DIR' (with "
        "DIR/<lang>.txt) or 'hf:DATASET'."
    )
