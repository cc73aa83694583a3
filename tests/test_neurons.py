"""LanguageNeurons: construction, queries against plain Python sets, files and errors."""

import json
from pathlib import Path

import pytest
import torch

from tl_lape import LanguageNeurons, LapeError

LANGS = ("en", "zh", "fr")


def random_masks(seed: int, n_lang: int = 3, n_layers: int = 4, d_mlp: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_lang, n_layers, d_mlp, generator=g) < 0.3


def as_sets(masks: torch.Tensor) -> list[set[tuple[int, int]]]:
    return [
        {
            (layer, n)
            for layer in range(masks.shape[1])
            for n in range(masks.shape[2])
            if m[layer, n]
        }
        for m in masks
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_queries_match_python_sets(seed: int) -> None:
    masks = random_masks(seed)
    ln = LanguageNeurons.from_masks(masks, LANGS)
    sets = as_sets(masks)
    assert torch.equal(ln.masks(), masks)
    for k, lang in enumerate(LANGS):
        assert torch.equal(ln.mask(lang), masks[k])
        for layer in range(4):
            expected = sorted(n for (lay, n) in sets[k] if lay == layer)
            got = ln.indices(lang, layer)
            assert got.dtype == torch.int64
            assert got.tolist() == expected
    assert ln.counts() == {lang: len(s) for lang, s in zip(LANGS, sets, strict=True)}
    assert ln.total() == sum(len(s) for s in sets)
    per_layer = ln.counts_per_layer()
    for k in range(3):
        for layer in range(4):
            assert int(per_layer[k, layer]) == sum(1 for (lay, _) in sets[k] if lay == layer)
    union = set().union(*sets)
    assert int(ln.union().sum()) == len(union)
    overlap, jaccard = ln.overlap(), ln.jaccard()
    for i in range(3):
        for j in range(3):
            inter = len(sets[i] & sets[j])
            assert int(overlap[i, j]) == inter
            either = len(sets[i] | sets[j])
            assert float(jaccard[i, j]) == pytest.approx(inter / either if either else 0.0)


def test_from_indices_sorts_deduplicates_and_copies() -> None:
    raw = torch.tensor([5, 1, 5, 3])
    ln = LanguageNeurons.from_indices({"en": {0: raw}}, n_layers=2, d_mlp=8)
    assert ln.indices("en", 0).tolist() == [1, 3, 5]
    assert ln.indices("en", 1).tolist() == []
    raw[0] = 7  # the set owns its own copy
    assert ln.indices("en", 0).tolist() == [1, 3, 5]
    got = ln.indices("en", 0)
    got[0] = 0  # and hands out copies
    assert ln.indices("en", 0).tolist() == [1, 3, 5]


def test_select_reorders_and_subsets() -> None:
    ln = LanguageNeurons.from_masks(random_masks(3), LANGS)
    sub = ln.select(["fr", "en"])
    assert sub.languages == ("fr", "en")
    assert torch.equal(sub.mask("fr"), ln.mask("fr"))
    assert torch.equal(sub.masks(), ln.masks()[[2, 0]])
    with pytest.raises(LapeError, match=r"unknown language 'de'.*\['en', 'zh', 'fr'\]"):
        ln.select(["de"])


def test_equality_ignores_metadata_and_repr_is_short() -> None:
    masks = random_masks(4)
    a = LanguageNeurons.from_masks(masks, LANGS, {"model_name": "a"})
    b = LanguageNeurons.from_masks(masks.clone(), LANGS, {"model_name": "b"})
    assert a == b
    masks[0, 0, 0] = not bool(masks[0, 0, 0])
    assert a != LanguageNeurons.from_masks(masks, LANGS)
    text = repr(a)
    assert text.startswith("LanguageNeurons(n_layers=4, d_mlp=16, ")
    for lang, n in a.counts().items():
        assert f"{lang}={n}" in text
    assert "\n" not in text
    summary = a.summary()
    assert summary.splitlines()[0].startswith("LanguageNeurons: 4 layers x 16 neurons")
    assert len(summary.splitlines()) == 1 + len(LANGS)


def test_check_compatible() -> None:
    ln = LanguageNeurons.from_masks(random_masks(5), LANGS, {"model_name": "tiny"})
    ln.check_compatible(4, 16)
    with pytest.raises(LapeError, match=r"\(tiny\) with d_mlp=16, but the model has d_mlp=32"):
        ln.check_compatible(4, 32)
    with pytest.raises(LapeError, match=r"n_layers=4, but the bridge has n_layers=2"):
        ln.check_compatible(2, 16, what="bridge")


def test_json_round_trip_is_readable(tmp_path: Path) -> None:
    ln = LanguageNeurons.from_masks(random_masks(6), LANGS, {"model_name": "tiny", "x": [1, 2]})
    path = tmp_path / "neurons.json"
    ln.save(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "tl_lape.LanguageNeurons"
    assert doc["version"] == 1
    assert doc["languages"] == list(LANGS)
    assert (doc["n_layers"], doc["d_mlp"]) == (4, 16)
    assert doc["neurons"]["zh"].get("1", []) == ln.indices("zh", 1).tolist()
    loaded = LanguageNeurons.load(path)
    assert loaded == ln
    assert loaded.metadata == {"model_name": "tiny", "x": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["neurons.json"]


def test_json_round_trip_with_empty_languages(tmp_path: Path) -> None:
    ln = LanguageNeurons.from_indices({"en": {}, "ja": {2: [0]}}, n_layers=3, d_mlp=2)
    ln.save(tmp_path / "n.json")
    assert LanguageNeurons.load(tmp_path / "n.json") == ln


def test_rucaibox_round_trip(tmp_path: Path) -> None:
    ln = LanguageNeurons.from_masks(random_masks(7), LANGS)
    path = tmp_path / "x.neuron.pth"
    ln.to_rucaibox(path)
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, list)
    assert len(raw) == 3
    assert all(len(per_layer) == 4 for per_layer in raw)
    assert raw[1][2].tolist() == ln.indices("zh", 2).tolist()
    assert LanguageNeurons.from_rucaibox(path, LANGS, d_mlp=16) == ln


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"format": "tl_lape.LanguageNeurons", "vers', "corrupted or truncated"),
        (b"\xff\xfe\x00garbage", "corrupted or truncated"),
        ('{"format": "something else"}', "not a LanguageNeurons file"),
        ('{"format": "tl_lape.LanguageNeurons", "version": 99}', "format version 99"),
        ('{"format": "tl_lape.LanguageNeurons", "version": 1}', "lacks the field"),
        (
            '{"format": "tl_lape.LanguageNeurons", "version": 1, "languages": ["en"], '
            '"n_layers": 1, "d_mlp": 4, "neurons": {"en": {"0": [9]}}}',
            r"invalid content.*index 9, outside 0\.\.3",
        ),
    ],
)
def test_load_rejects_bad_files(tmp_path: Path, content: str | bytes, match: str) -> None:
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(LapeError, match=match) as info:
        LanguageNeurons.load(path)
    assert str(path) in str(info.value)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LapeError, match="no such file"):
        LanguageNeurons.load(tmp_path / "nope.json")


def test_save_into_missing_directory_writes_nothing(tmp_path: Path) -> None:
    ln = LanguageNeurons.from_masks(random_masks(8), LANGS)
    with pytest.raises(LapeError, match="does not exist"):
        ln.save(tmp_path / "missing" / "n.json")
    with pytest.raises(LapeError, match="does not exist"):
        ln.to_rucaibox(tmp_path / "missing" / "n.pth")
    assert list(tmp_path.iterdir()) == []


def test_from_rucaibox_errors(tmp_path: Path) -> None:
    path = tmp_path / "n.pth"
    torch.save([[torch.tensor([1, 30])], [torch.tensor([2])]], path)
    with pytest.raises(LapeError, match=r"holds 2 languages but languages names 3"):
        LanguageNeurons.from_rucaibox(path, LANGS)
    with pytest.raises(LapeError, match=r"neuron index 30, which does not fit d_mlp=16"):
        LanguageNeurons.from_rucaibox(path, ["en", "zh"], d_mlp=16)
    with pytest.raises(LapeError, match=r"has 1 layers but n_layers=2"):
        LanguageNeurons.from_rucaibox(path, ["en", "zh"], n_layers=2)
    ln = LanguageNeurons.from_rucaibox(path, ["en", "zh"])
    assert ln.d_mlp is None  # the file stores no width, and none was given: unknown
    assert ln.metadata["source_format"] == "rucaibox"

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:40])
    with pytest.raises(LapeError, match=r"corrupted, truncated or not a torch file"):
        LanguageNeurons.from_rucaibox(truncated, ["en", "zh"])

    floats = tmp_path / "floats.pth"
    torch.save([[torch.tensor([1.0])]], floats)
    with pytest.raises(LapeError, match=r"must be an integer tensor; found torch.float32"):
        LanguageNeurons.from_rucaibox(floats, ["en"])

    ragged = tmp_path / "ragged.pth"
    torch.save([[torch.tensor([1])], [torch.tensor([1]), torch.tensor([2])]], ragged)
    with pytest.raises(LapeError, match=r"same non-zero number of layer entries"):
        LanguageNeurons.from_rucaibox(ragged, ["en", "zh"])


def test_unknown_width(tmp_path: Path) -> None:
    path = tmp_path / "n.pth"
    empty = torch.tensor([], dtype=torch.long)
    torch.save([[torch.tensor([1, 30]), torch.tensor([4])], [torch.tensor([2]), empty]], path)
    ln = LanguageNeurons.from_rucaibox(path, ["en", "zh"])
    assert ln.d_mlp is None
    assert ln.max_index() == 30
    assert repr(ln) == "LanguageNeurons(n_layers=2, d_mlp=None, en=3, zh=1)"
    assert ln.summary().splitlines()[0] == (
        "LanguageNeurons: 2 layers x an unknown d_mlp, 2 languages, 4 assignments, "
        "4 distinct neurons"
    )
    # Width-free queries work and agree with the same set at any width that fits.
    known = LanguageNeurons.from_rucaibox(path, ["en", "zh"], d_mlp=40)
    assert ln.counts() == known.counts()
    assert torch.equal(ln.counts_per_layer(), known.counts_per_layer())
    assert torch.equal(ln.overlap(), known.overlap())
    assert torch.equal(ln.jaccard(), known.jaccard())
    assert ln.select(["zh"]).d_mlp is None
    # Those that return d_mlp-wide masks say what to do.
    for query in (lambda: ln.mask("en"), ln.masks, ln.union):
        with pytest.raises(LapeError, match=r"needs the MLP width.*d_mlp is unknown.*for_model"):
            query()
    # check_compatible checks the layers and that every index fits.
    ln.check_compatible(2, 31)
    with pytest.raises(LapeError, match=r"neuron indices up to 30, but the model has d_mlp=30"):
        ln.check_compatible(2, 30)
    with pytest.raises(LapeError, match=r"n_layers=2, but the model has n_layers=3"):
        ln.check_compatible(3, 64)
    # JSON keeps the width unknown.
    ln.save(tmp_path / "n.json")
    assert json.loads((tmp_path / "n.json").read_text())["d_mlp"] is None
    assert LanguageNeurons.load(tmp_path / "n.json") == ln
    with pytest.raises(LapeError, match=r"holds neuron index -1; neuron indices must be >= 0"):
        LanguageNeurons.from_indices({"en": {0: [-1]}}, n_layers=1, d_mlp=None)


def test_width_from_the_model(tiny_model, tmp_path: Path) -> None:
    bridge = tiny_model("llama").bridge  # n_layers=2, d_mlp=64
    path = tmp_path / "n.pth"
    torch.save([[torch.tensor([1, 30]), torch.tensor([4])]], path)
    ln = LanguageNeurons.from_rucaibox(path, ["en"], model=bridge)
    assert (ln.n_layers, ln.d_mlp) == (2, 64)
    assert ln == LanguageNeurons.from_rucaibox(path, ["en"], n_layers=2, d_mlp=64)
    assert LanguageNeurons.from_rucaibox(path, ["en"]).for_model(bridge) == ln
    assert ln.for_model(bridge) is ln
    with pytest.raises(LapeError, match=r"d_mlp=32 was given, but the model has d_mlp=64"):
        LanguageNeurons.from_rucaibox(path, ["en"], d_mlp=32, model=bridge)
    with pytest.raises(LapeError, match=r"n_layers=3 was given, but the model has n_layers=2"):
        LanguageNeurons.from_rucaibox(path, ["en"], n_layers=3, model=bridge)
    with pytest.raises(LapeError, match=r"d_mlp must be a positive int; received 0"):
        LanguageNeurons.from_rucaibox(path, ["en"], d_mlp=0)
    narrow = LanguageNeurons.from_indices({"en": {0: [1]}}, n_layers=2, d_mlp=32)
    with pytest.raises(LapeError, match=r"d_mlp=32, but the model has d_mlp=64"):
        narrow.for_model(bridge)
    far = LanguageNeurons.from_indices({"en": {0: [64]}}, n_layers=2, d_mlp=None)
    with pytest.raises(LapeError, match=r"neuron indices up to 64, but the model has d_mlp=64"):
        far.for_model(bridge)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"languages": ("en", "en")}, r"languages must be distinct; \['en'\] repeated"),
        ({"languages": ()}, "at least one language"),
        ({"n_layers": 0}, "n_layers must be a positive int; received 0"),
        ({"d_mlp": 2}, r"index 5, outside 0\.\.1 \(d_mlp=2\)"),
        ({"metadata": {"x": object()}}, "metadata must be JSON-serialisable"),
    ],
)
def test_constructor_validation(kwargs: dict, match: str) -> None:
    args = {
        "languages": ("en",),
        "n_layers": 1,
        "d_mlp": 8,
        "neurons": ((torch.tensor([5]),),),
        "metadata": {},
    }
    args.update(kwargs)
    if "n_layers" in kwargs:
        args["neurons"] = ((),)
    if "languages" in kwargs:
        args["neurons"] = tuple(((torch.tensor([5]),),) * len(kwargs["languages"]))
    with pytest.raises(LapeError, match=match):
        LanguageNeurons(**args)


def test_query_errors() -> None:
    ln = LanguageNeurons.from_masks(random_masks(9), LANGS)
    with pytest.raises(LapeError, match=r"unknown language 'de'"):
        ln.mask("de")
    with pytest.raises(
        LapeError, match=r"layer must be an int in 0\.\.3 \(n_layers=4\); received 4"
    ):
        ln.indices("en", 4)
    with pytest.raises(LapeError, match=r"masks has 2 languages .* names 3"):
        LanguageNeurons.from_masks(random_masks(9, n_lang=2), LANGS)
