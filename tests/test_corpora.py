"""Tests for tl_lape.sources.corpora: the Debian handbook (the real package), text files,
datasets, LID."""

import json
import re
from pathlib import Path

import pytest

from tl_lape.errors import LapeError
from tl_lape.sources import corpora
from tl_lape.sources.corpora import (
    PAPER_LANGUAGES,
    filter_language,
    find_debian_handbook,
    handbook_locale,
    load_debian_handbook,
    load_hf_dataset,
    load_text_files,
)


@pytest.fixture(scope="session")
def handbook_all(handbook_cache: Path) -> dict[str, list[str]]:
    return load_debian_handbook(PAPER_LANGUAGES, split="all", cache_dir=handbook_cache)


# --------------------------------------------------------------------------------------------
# The Debian handbook
# --------------------------------------------------------------------------------------------


def test_handbook_has_every_paper_language_with_translated_text(
    handbook_all: dict[str, list[str]],
) -> None:
    assert list(handbook_all) == list(PAPER_LANGUAGES)
    english = set(handbook_all["en"])
    # The English edition has about 3,000 paragraphs; every translation has fewer, none of
    # them identical to an English paragraph, and even Vietnamese (the least translated) has
    # hundreds.
    assert 2500 < len(handbook_all["en"]) < 3500
    for lang in PAPER_LANGUAGES[1:]:
        paragraphs = handbook_all[lang]
        assert 400 < len(paragraphs) < len(handbook_all["en"]), lang
        assert not english.intersection(paragraphs), lang
    assert len(handbook_all["vi"]) < min(len(handbook_all[x]) for x in ("zh", "fr", "es", "ja"))
    # Paragraphs are whitespace-normalised text without markup.
    for lang, paragraphs in handbook_all.items():
        for p in paragraphs[:200]:
            assert p == " ".join(p.split()) and p, lang
            assert not re.search(r"</?(div|span|code|a|em|strong)\b[^>]*>", p), lang


def test_aligned_mode_drops_english_left_in_translations(handbook_cache: Path) -> None:
    exact = load_debian_handbook(
        PAPER_LANGUAGES, "all", untranslated="exact", cache_dir=handbook_cache
    )
    aligned = load_debian_handbook(PAPER_LANGUAGES, "all", cache_dir=handbook_cache)
    assert aligned["en"] == exact["en"]
    for lang in PAPER_LANGUAGES[1:]:
        # "aligned" keeps a subsequence of "exact", dropping a few percent (vi: about a fifth).
        kept = iter(exact[lang])
        assert all(p in kept for p in aligned[lang]), lang
        dropped = 1 - len(aligned[lang]) / len(exact[lang])
        assert 0.0 < dropped < (0.3 if lang == "vi" else 0.12), (lang, dropped)
    assert 1 - len(aligned["vi"]) / len(exact["vi"]) > 0.1
    pytest.importorskip("py3langid")
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE)
    identifier.set_languages(list(PAPER_LANGUAGES))
    for lang in ("vi", "fr", "ja"):
        english = [identifier.classify(p)[0] == "en" for p in aligned[lang]]
        english_exact = [identifier.classify(p)[0] == "en" for p in exact[lang]]
        # English paragraphs left in the translation: most are gone.
        assert sum(english) <= 0.02 * len(english), lang
        assert sum(english_exact) > 3 * max(1, sum(english)), lang


def test_handbook_scripts_match_languages(handbook_all: dict[str, list[str]]) -> None:
    def share(texts: list[str], lo: int, hi: int) -> float:
        chars = "".join(texts)
        return sum(lo <= ord(c) <= hi for c in chars) / len(chars)

    assert share(handbook_all["zh"], 0x4E00, 0x9FFF) > 0.3  # CJK ideographs
    assert share(handbook_all["ja"], 0x3040, 0x30FF) > 0.1  # kana
    assert share(handbook_all["en"], 0x4E00, 0x9FFF) == 0.0


def test_handbook_split_partitions_the_book(
    handbook_cache: Path, handbook_all: dict[str, list[str]]
) -> None:
    train = load_debian_handbook(PAPER_LANGUAGES, split="train", cache_dir=handbook_cache)
    heldout = load_debian_handbook(PAPER_LANGUAGES, split="heldout", cache_dir=handbook_cache)
    for lang in PAPER_LANGUAGES:
        assert sorted(train[lang] + heldout[lang]) == sorted(handbook_all[lang]), lang
        share = len(heldout[lang]) / len(handbook_all[lang])
        assert 0.05 < share < 0.25, (lang, share)
    # Held out by chapter file, the same files for every language.
    by_file = corpora._parse_edition(find_debian_handbook() / "html" / "en-US")
    heldout_files = {name for name in by_file if corpora._is_heldout(name)}
    assert 0 < len(heldout_files) < len(by_file) // 3
    expected = [p for name, ps in by_file.items() if name in heldout_files for p in ps]
    assert heldout["en"] == expected


def test_handbook_is_deterministic_and_cached(handbook_cache: Path) -> None:
    cache_files = list(handbook_cache.glob("debian-handbook-*.json"))
    assert len(cache_files) == 1
    payload = json.loads(cache_files[0].read_text(encoding="utf-8"))
    assert payload["version"] in cache_files[0].name
    assert set(payload["editions"]) >= {handbook_locale(lang) for lang in PAPER_LANGUAGES}
    assert not list(handbook_cache.glob("*.tmp"))
    first = load_debian_handbook(["fr"], split="heldout", cache_dir=handbook_cache)
    again = load_debian_handbook(["fr"], split="heldout", cache_dir=handbook_cache)
    assert first == again


def test_handbook_rebuilds_a_corrupt_cache(tmp_path: Path, handbook_cache: Path) -> None:
    reference = load_debian_handbook(["vi"], split="heldout", cache_dir=handbook_cache)
    name = next(handbook_cache.glob("debian-handbook-*.json")).name
    (tmp_path / name).write_text("{not json", encoding="utf-8")
    rebuilt = load_debian_handbook(["vi"], split="heldout", cache_dir=tmp_path)
    assert rebuilt == reference
    assert json.loads((tmp_path / name).read_text(encoding="utf-8"))["editions"]


def test_handbook_accepts_locales_and_keys_by_input(handbook_cache: Path) -> None:
    corpus = load_debian_handbook(["zh-TW", "fr_FR"], split="heldout", cache_dir=handbook_cache)
    assert list(corpus) == ["zh-TW", "fr_FR"]
    assert (
        corpus["fr_FR"] == load_debian_handbook(["fr"], "heldout", cache_dir=handbook_cache)["fr"]
    )
    assert corpus["zh-TW"]
    assert handbook_locale("zh") == "zh-CN" and handbook_locale("pt") == "pt-BR"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"languages": ["xx"]}, "No Debian Administrator's Handbook edition for language 'xx'"),
        ({"languages": ["xx-YY"]}, "has no edition 'xx-YY'"),
        ({"languages": []}, "languages is empty"),
        ({"languages": ["fr", "fr"]}, "must not repeat"),
        ({"split": "test"}, "split must be 'train', 'heldout' or 'all', got 'test'"),
        ({"untranslated": "fuzzy"}, "untranslated must be 'aligned' or 'exact', got 'fuzzy'"),
    ],
)
def test_handbook_rejects_bad_input(handbook_cache: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(LapeError, match=match):
        load_debian_handbook(**{"cache_dir": handbook_cache, **kwargs})


def test_handbook_missing_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine without the package: the system path does not exist and the cache is empty.
    monkeypatch.setattr(corpora, "_SYSTEM_HANDBOOK", tmp_path / "no-such-dir")
    with pytest.raises(LapeError, match=r"sudo apt-get install debian-handbook"):
        load_debian_handbook(["fr"], download=False, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------------------------
# Plain text files
# --------------------------------------------------------------------------------------------


def test_load_text_files_from_directory_and_mapping(tmp_path: Path) -> None:
    (tmp_path / "en.txt").write_text("one line\n\n  second line  \nthird\n", encoding="utf-8")
    (tmp_path / "fr.txt").write_text("une ligne\ndeux\n\ntrois\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert load_text_files(tmp_path) == {
        "en": ["one line", "second line", "third"],
        "fr": ["une ligne", "deux", "trois"],
    }
    assert load_text_files(tmp_path, ["fr"], unit="paragraph") == {
        "fr": ["une ligne\ndeux", "trois"]
    }
    mapping = {"english": tmp_path / "en.txt"}
    assert load_text_files(mapping, unit="file") == {
        "english": ["one line\n\n  second line  \nthird"]
    }


def test_load_text_files_errors(tmp_path: Path) -> None:
    (tmp_path / "en.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(LapeError, match=r"No text file for languages \['de'\]"):
        load_text_files(tmp_path, ["de"])
    with pytest.raises(LapeError, match="is empty"):
        load_text_files(tmp_path)
    with pytest.raises(LapeError, match="is not a directory"):
        load_text_files(tmp_path / "missing")
    with pytest.raises(LapeError, match="no such file"):
        load_text_files({"fr": tmp_path / "fr.txt"})
    with pytest.raises(LapeError, match="unit must be"):
        load_text_files(tmp_path, unit="sentence")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Hugging Face datasets (offline: a local JSON-lines dataset the test writes)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def local_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    rows = {
        "fr": [f"Phrase numéro {i} en français." for i in range(50)],
        "vi": [f"Câu số {i} bằng tiếng Việt." for i in range(50)],
    }
    for lang, texts in rows.items():
        lines = [json.dumps({"content": t, "id": i}) for i, t in enumerate(texts)]
        lines.insert(3, json.dumps({"content": "   ", "id": -1}))  # blank rows are skipped
        (tmp_path / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("streaming", [True, False])
def test_load_hf_dataset_reads_local_files_with_a_budget(
    local_dataset: Path, streaming: bool
) -> None:
    template = str(local_dataset / "{lang}.jsonl")
    corpus = load_hf_dataset(
        "json",
        None,
        ["fr", "vi"],
        text_field="content",
        max_chars_per_language=100,
        streaming=streaming,
        data_files_template=template,
    )
    assert list(corpus) == ["fr", "vi"]
    assert corpus["fr"][0] == "Phrase numéro 0 en français."
    for texts in corpus.values():
        # The budget stops a language at the first text that reaches it.
        assert sum(map(len, texts)) >= 100
        assert sum(map(len, texts[:-1])) < 100
    full = load_hf_dataset(
        "json",
        None,
        ["vi"],
        text_field="content",
        max_chars_per_language=None,
        streaming=streaming,
        data_files_template=template,
    )
    assert len(full["vi"]) == 50


def test_load_hf_dataset_errors(local_dataset: Path) -> None:
    template = str(local_dataset / "{lang}.jsonl")
    with pytest.raises(LapeError, match=r"no field 'text'.*\['content', 'id'\]"):
        load_hf_dataset("json", None, ["fr"], data_files_template=template)
    with pytest.raises(LapeError, match=r"Could not load dataset 'json'.*language 'de'"):
        load_hf_dataset("json", None, ["de"], data_files_template=template, text_field="content")
    with pytest.raises(LapeError, match="max_chars_per_language must be positive"):
        load_hf_dataset("json", None, ["fr"], max_chars_per_language=0)


# --------------------------------------------------------------------------------------------
# Language identification
# --------------------------------------------------------------------------------------------


def test_filter_language_drops_foreign_lines() -> None:
    pytest.importorskip("py3langid")
    texts = [
        "Le paquet est installé sur le système.\nThe package is installed on the system.",
        "This whole paragraph is written in English and nothing else.",
        "ok\nLa configuration du réseau se fait dans ce fichier.",
    ]
    assert filter_language(texts, "fr") == [
        "Le paquet est installé sur le système.",
        "ok\nLa configuration du réseau se fait dans ce fichier.",
    ]
    assert filter_language(texts, "en-US", candidates=["en", "fr"]) == [
        "The package is installed on the system.",
        "This whole paragraph is written in English and nothing else.",
        "ok",
    ]


def test_filter_language_keeps_real_handbook_text(handbook_cache: Path) -> None:
    pytest.importorskip("py3langid")
    corpus = load_debian_handbook(["fr", "id"], split="heldout", cache_dir=handbook_cache)
    for lang, texts in corpus.items():
        kept = filter_language(texts, lang, candidates=PAPER_LANGUAGES)
        assert len(kept) > 0.8 * len(texts), lang
        assert set(kept) <= set(texts), lang


def test_filter_language_errors() -> None:
    pytest.importorskip("py3langid")
    with pytest.raises(LapeError, match="does not know language 'xx'"):
        filter_language(["text"], "xx")
    with pytest.raises(LapeError, match=r"does not know candidates \['qq'\]"):
        filter_language(["text"], "fr", candidates=["qq"])
