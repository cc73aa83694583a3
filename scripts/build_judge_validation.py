"""Build the labelled validation set of the steering judges: ``tests/data/judge_validation.jsonl``.

Short texts, each labelled with the language a judge should give (a study language, or
``"other"``) and whether it is fluent, in eight categories:

- ``on_target``: fluent text in each study language (en zh fr es vi id ja), cut from held-out
  paragraphs of the Debian Administrator's Handbook and of the LibreOffice Help;
- ``neighbour``: fluent text in a language outside the study, close to one inside it (Italian,
  Portuguese, Catalan, Romanian, Dutch, German, Korean from the handbook's held-out chapters;
  Malay from the Debian packages' Malay message catalogues): label ``"other"``;
- ``phrase_loop``: a phrase of a study language repeated, exactly or with a growing tail (as in
  the Gemma study's ``打印出错误。打印出错误的原因是：...``): not fluent;
- ``digits``: digit strings, alone (``"other"``) or after a few words of a study language;
- ``markup_loop``: repeated markup or separators, alone (``"other"``) or around one word;
- ``shuffled``: a passage's words (characters in Chinese and Japanese) in a random order;
- ``code_switch``: the first half of a passage in one study language, the second in another:
  label ``"other"`` (neither language alone), fluent;
- ``gemma_output``: verbatim outputs quoted in the Gemma steering study's summary.

Cut lengths follow the outputs judged: 32 generated tokens are about 60-180 characters of
Latin-script text and 20-70 of Chinese or Japanese. Every choice is drawn from one seeded
``random.Random``, so the same sources give the same file. Each item also gets ``split``
(``"dev"``: thresholds may be tuned on it; ``"test"``: reported) by a hash of its id.

Sources (all on this machine, Debian 12 packages): ``debian-handbook`` (GPL-2+ or
CC-BY-SA-3.0), ``libreoffice-help-*`` (MPL-2.0), and the Malay catalogues of
``gsettings-desktop-schemas``, ``libgtk-3-common`` and ``libglib2.0-data`` (LGPL-2+); each
item's ``source`` names its package and version. The file's first line is a header (format,
seed, languages).

Usage::

    python scripts/build_judge_validation.py [--out tests/data/judge_validation.jsonl]
"""

import argparse
import gettext
import hashlib
import json
import random
import re
import subprocess
from pathlib import Path

from tl_lape.sources.corpora import load_debian_handbook, load_libreoffice_help

STUDY = ("en", "zh", "fr", "es", "vi", "id", "ja")
NEIGHBOURS = ("it", "pt", "ca", "ro", "nl", "de", "ko")
CJK = ("zh", "ja")
MALAY_CATALOGUES = {
    "gsettings-desktop-schemas": "gsettings-desktop-schemas",
    "gtk30-properties": "libgtk-3-common",
    "glib20": "libglib2.0-data",
}
SEED = 20261204

#: Verbatim outputs quoted in benchmarks/results/2026-12-02-gemma-steering/summary.md, labelled
#: by hand: (text, language, fluent).
GEMMA_OUTPUTS = (
    ("打印出错误。打印出错误的原因是：打印机打印出错误的原因", "zh", False),
    ("a plus de 10000000000000000000", "fr", False),
    ("1.1.1.1.1.1.1.1.", "other", False),
    ("库/库/库/库/", "zh", False),
    ("<b><b><b><b><b><b><b><b>", "other", False),
)

_UNIT = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]|[^\W_]+|[^\w\s]", re.UNICODE)


def _clean(text: str) -> str:
    return " ".join(text.split())


def _letter_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in chars) / max(1, len(chars))


def _usable(text: str, lang: str) -> bool:
    """Running prose: mostly letters, long enough, not a command or a path list."""
    text = _clean(text)
    if _letter_share(text) < 0.8:
        return False
    if lang in CJK:
        return len(text) >= 30
    return len(text.split()) >= 12


def _cut(text: str, lang: str, rng: random.Random) -> str:
    """A prefix of ``text`` at the length of a generated output, ending at a word boundary."""
    text = _clean(text)
    if lang in CJK:
        return text[: rng.randint(20, 70)]
    limit = rng.randint(60, 180)
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def _pick(paragraphs: list[str], lang: str, n: int, rng: random.Random) -> list[str]:
    pool = sorted({_clean(p) for p in paragraphs if _usable(p, lang)})
    rng.shuffle(pool)
    return pool[:n]


def _units(text: str) -> list[str]:
    return _UNIT.findall(text)


def _malay(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """Malay sentences from the installed message catalogues: (text, package)."""
    found: list[tuple[str, str]] = []
    for domain, package in MALAY_CATALOGUES.items():
        path = Path(f"/usr/share/locale/ms/LC_MESSAGES/{domain}.mo")
        with path.open("rb") as fh:
            catalog = gettext.GNUTranslations(fh)._catalog  # type: ignore[attr-defined]
        for msgid, msgstr in catalog.items():
            if not isinstance(msgid, str) or not isinstance(msgstr, str) or not msgid:
                continue
            text = _clean(msgstr)
            if (
                text == _clean(msgid)
                or len(text.split()) < 8
                or re.search(r"[%{}<>_=\"`]|\\", text)
                or _letter_share(text) < 0.85
            ):
                continue
            found.append((text, package))
    found = sorted(set(found))
    rng.shuffle(found)
    return found[:n]


def _version(package: str) -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def _phrase_loop(text: str, lang: str, rng: random.Random, exact: bool) -> str:
    units = _units(text) if lang in CJK else text.split()
    sep = "" if lang in CJK else " "
    k = rng.randint(2, 5) if lang in CJK else rng.randint(2, 4)
    phrase = sep.join(units[:k])
    goal = rng.randint(25, 60) if lang in CJK else rng.randint(60, 160)
    pieces: list[str] = []
    grow = k
    while len(sep.join(pieces)) < goal:
        if exact:
            pieces.append(phrase + rng.choice(["", ",", ".", "。" if lang in CJK else ";"]))
        else:  # the phrase again, each time with a little more of the sentence after it
            grow = min(len(units), grow + 1)
            pieces.append(sep.join(units[:grow]) if rng.random() < 0.6 else phrase)
    return sep.join(pieces)


def _shuffled(text: str, lang: str, rng: random.Random) -> str:
    if lang in CJK:
        chars = list(text)
        rng.shuffle(chars)
        return "".join(chars)
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def _digits(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return "1" + "0" * rng.randint(12, 30)
    if kind == 1:
        step = rng.choice(["1.", "2.", "0.", "1.1.", "10."])
        return step * rng.randint(6, 14)
    if kind == 2:
        start = rng.randint(0, 2000)
        return " ".join(str(start + i) for i in range(rng.randint(8, 20)))
    if kind == 3:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(16, 40)))
    return ", ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(8, 20)))


_MARKUP = (
    "<b>",
    "</b>",
    "<br>",
    "</div>",
    "<p>",
    "**",
    "##",
    "|",
    "---",
    "* ",
    "- ",
    "//",
    "[",
    "](",
)


def _markup(rng: random.Random, word: str | None) -> str:
    unit = "".join(rng.choice(_MARKUP) for _ in range(rng.randint(1, 2)))
    if word is not None:
        unit = rng.choice([f"{word}{unit}", f"{unit}{word}", f"<b>{word}</b>", f"{word}/"])
    return unit * max(3, rng.randint(40, 120) // max(1, len(unit)))


def _half(text: str, lang: str) -> str:
    if lang in CJK:
        return text[: len(text) // 2]
    words = text.split()
    return " ".join(words[: len(words) // 2])


def _first_word(text: str, lang: str) -> str:
    units = [u for u in _units(text) if u.isalpha()]
    return "".join(units[:2]) if lang in CJK else units[0]


def build(out: Path) -> int:
    rng = random.Random(SEED)
    handbook = load_debian_handbook((*STUDY, *NEIGHBOURS), split="heldout")
    help_text = load_libreoffice_help(STUDY, split="heldout")
    items: list[dict[str, object]] = []
    hb = f"debian-handbook {_version('debian-handbook')}, held-out chapters"

    def add(category: str, text: str, language: str, fluent: bool, origin: str, source: str):
        items.append(
            {
                "category": category,
                "text": text,
                "language": language,
                "fluent": fluent,
                "origin": origin,
                "source": source,
            }
        )

    snippets: dict[str, list[str]] = {}
    for lang in STUDY:
        from_book = _pick(handbook[lang], lang, 50, rng)
        from_help = _pick(help_text[lang], lang, 8, rng)
        for text in from_book[:10]:
            add("on_target", _cut(text, lang, rng), lang, True, lang, hb)
        for text in from_help:
            add("on_target", _cut(text, lang, rng), lang, True, lang, "libreoffice-help, held out")
        snippets[lang] = from_book[10:]
    for lang in NEIGHBOURS:
        for text in _pick(handbook[lang], lang, 9, rng):
            add("neighbour", _cut(text, lang, rng), "other", True, lang, hb)
    for text, package in _malay(rng, 12):
        source = f"{package} {_version(package)}, Malay message catalogue"
        add("neighbour", _cut(text, "ms", rng), "other", True, "ms", source)
    for lang in STUDY:
        pool = snippets[lang]
        for i in range(5):
            add("phrase_loop", _phrase_loop(pool[i], lang, rng, exact=i < 2), lang, False, lang, hb)
        for i in range(5, 10):
            add("shuffled", _shuffled(_cut(pool[i], lang, rng), lang, rng), lang, False, lang, hb)
        for i in range(10, 12):
            words = _cut(pool[i], lang, rng)
            lead = words[:12] if lang in CJK else " ".join(words.split()[:5])
            add("digits", f"{lead} {_digits(rng)}", lang, False, lang, hb)
        word = _first_word(pool[12], lang)
        add("markup_loop", _markup(rng, word), lang, False, lang, hb)
    for _ in range(10):
        add("digits", _digits(rng), "other", False, "none", "generated")
        add("markup_loop", _markup(rng, None), "other", False, "none", "generated")
    pairs = [(a, b) for a in STUDY for b in STUDY if a != b]
    rng.shuffle(pairs)
    for i, (a, b) in enumerate(pairs[:21]):
        first = _half(_cut(snippets[a][13 + i % 10], a, rng), a)
        second = _half(_cut(snippets[b][24 + i % 10], b, rng), b)
        add("code_switch", f"{first} {second}", "other", True, f"{a}+{b}", hb)
    for text, lang, fluent in GEMMA_OUTPUTS:
        add("gemma_output", text, lang, fluent, lang, "2026-12-02-gemma-steering/summary.md")
    for i, item in enumerate(items):
        item["id"] = f"{item['category']}-{item['origin']}-{i:03d}"
        digest = hashlib.sha256(str(item["id"]).encode()).digest()
        item["split"] = "dev" if digest[0] % 2 == 0 else "test"
    header = {
        "format": "tl_lape judge validation set",
        "version": 1,
        "seed": SEED,
        "built_by": "scripts/build_judge_validation.py",
        "study_languages": list(STUDY),
        "n_items": len(items),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(header, ensure_ascii=False) + "\n")
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    return len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data/judge_validation.jsonl"))
    args = parser.parse_args()
    n = build(args.out)
    print(f"{n} items written to {args.out}")


if __name__ == "__main__":
    main()
