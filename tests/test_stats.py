"""ActivationStats: construction from counts, validation, merging, files."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tl_lape import ActivationStats, LapeError

LANGS = ("en", "zh", "fr")


def make_stats(seed: int = 0, languages: tuple[str, ...] = LANGS, **metadata) -> ActivationStats:
    g = torch.Generator().manual_seed(seed)
    n_lang = len(languages)
    n_tokens = torch.randint(50, 100, (n_lang,), generator=g)
    counts = (torch.rand(3, 8, n_lang, generator=g) * n_tokens).long()
    sums = torch.randn(3, 8, n_lang, generator=g, dtype=torch.float64)
    return ActivationStats.from_counts(counts, n_tokens, languages, sums, metadata or None)


def test_from_counts_forms_agree() -> None:
    stats = make_stats()
    per_lang = [stats.active_counts[..., k] for k in range(3)]
    sums = [stats.activation_sums[..., k] for k in range(3)]
    from_list = ActivationStats.from_counts(per_lang, stats.n_tokens.tolist(), LANGS, sums)
    from_map = ActivationStats.from_counts(
        dict(zip(LANGS, per_lang, strict=True)),
        dict(zip(LANGS, stats.n_tokens.tolist(), strict=True)),
        activation_sums=dict(zip(LANGS, sums, strict=True)),
    )
    # The paper's scripts keep int32 counts; floats holding whole numbers are accepted too.
    from_int32 = ActivationStats.from_counts(
        [c.to(torch.int32) for c in per_lang], stats.n_tokens.float(), LANGS, sums
    )
    for other in (from_list, from_map, from_int32):
        assert other.languages == LANGS
        assert torch.equal(other.active_counts, stats.active_counts)
        assert other.active_counts.dtype == torch.int64
        assert torch.equal(other.n_tokens, stats.n_tokens)
        assert torch.equal(other.activation_sums, stats.activation_sums)
        assert other.has_activation_sums


def test_mapping_selects_and_orders_languages() -> None:
    counts = {"en": torch.ones(1, 2, dtype=torch.long), "zh": torch.zeros(1, 2, dtype=torch.long)}
    stats = ActivationStats.from_counts(counts, {"en": 2, "zh": 3}, ["zh", "en"])
    assert stats.languages == ("zh", "en")
    assert stats.n_tokens.tolist() == [3, 2]
    assert stats.active_counts[0, 0].tolist() == [0, 1]


def test_probabilities_and_means() -> None:
    stats = make_stats(1)
    for layer in range(3):
        for n in range(8):
            for k in range(3):
                count = int(stats.active_counts[layer, n, k])
                total = int(stats.n_tokens[k])
                assert float(stats.probabilities[layer, n, k]) == count / total
                assert float(stats.mean_activations[layer, n, k]) == pytest.approx(
                    float(stats.activation_sums[layer, n, k]) / total
                )
    assert stats.probabilities.dtype == torch.float64
    assert (stats.n_layers, stats.d_mlp, stats.n_languages) == (3, 8, 3)


def test_counts_only_stats_refuse_mean_activations() -> None:
    stats = ActivationStats.from_counts(torch.ones(1, 2, 1, dtype=torch.long), [4], ["en"])
    assert not stats.has_activation_sums
    assert stats.metadata["has_activation_sums"] is False
    assert float(stats.probabilities[0, 0, 0]) == 0.25
    with pytest.raises(LapeError, match="hold no activation values"):
        _ = stats.mean_activations


def test_merge_adds_counts_and_unites_languages() -> None:
    a = make_stats(2, ("en", "zh"), model_name="m")
    b = make_stats(3, ("fr", "en"), model_name="m")
    merged = a + b
    assert merged.languages == ("en", "zh", "fr")
    assert merged.n_tokens.tolist() == [
        int(a.n_tokens[0] + b.n_tokens[1]),
        int(a.n_tokens[1]),
        int(b.n_tokens[0]),
    ]
    assert torch.equal(
        merged.active_counts[..., 0], a.active_counts[..., 0] + b.active_counts[..., 1]
    )
    assert torch.equal(merged.active_counts[..., 1], a.active_counts[..., 1])
    assert torch.equal(merged.active_counts[..., 2], b.active_counts[..., 0])
    assert torch.equal(
        merged.activation_sums[..., 0], a.activation_sums[..., 0] + b.activation_sums[..., 1]
    )
    assert merged.metadata["model_name"] == "m"
    # Merging is commutative up to the language order.
    other = (b + a).select_languages(merged.languages)
    assert torch.equal(other.active_counts, merged.active_counts)
    assert torch.equal(other.n_tokens, merged.n_tokens)


def test_merge_without_sums_stays_without_sums() -> None:
    a = make_stats(4)
    b = ActivationStats.from_counts(a.active_counts, a.n_tokens, LANGS)
    assert not a.merge(b).has_activation_sums
    assert a.merge(a).has_activation_sums


def test_merge_of_different_models_is_refused() -> None:
    a = make_stats(5, model_name="gpt2")
    b = make_stats(6, model_name="llama")
    with pytest.raises(LapeError, match=r"model_name 'gpt2' vs 'llama'"):
        a.merge(b)
    wide = ActivationStats.from_counts(torch.zeros(3, 16, 1, dtype=torch.long), [5], ["en"])
    with pytest.raises(LapeError, match=r"\(n_layers, d_mlp\) = \(3, 8\) vs \(3, 16\)"):
        a + wide


def test_select_languages() -> None:
    stats = make_stats(7)
    sub = stats.select_languages(["fr", "en"])
    assert sub.languages == ("fr", "en")
    assert torch.equal(sub.active_counts, stats.active_counts[..., [2, 0]])
    assert torch.equal(sub.n_tokens, stats.n_tokens[[2, 0]])
    with pytest.raises(LapeError, match=r"unknown languages \['de'\]"):
        stats.select_languages(["de"])
    with pytest.raises(LapeError, match="distinct"):
        stats.select_languages(["en", "en"])


def test_save_load_round_trip(tmp_path: Path) -> None:
    stats = make_stats(8, ("en", "中文", "fr"), model_name="tiny", seq_len=16)
    path = tmp_path / "stats.safetensors"
    stats.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.safetensors"]
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert header["format"] == "tl_lape.ActivationStats"
    loaded = ActivationStats.load(path)
    assert loaded.languages == stats.languages
    assert loaded.metadata == {"model_name": "tiny", "seq_len": 16}
    for name in ("n_tokens", "active_counts", "activation_sums"):
        assert torch.equal(getattr(loaded, name), getattr(stats, name))
    counts_only = ActivationStats.from_counts(stats.active_counts, stats.n_tokens, stats.languages)
    counts_only.save(path)
    assert not ActivationStats.load(path).has_activation_sums


def test_the_same_statistics_give_byte_identical_files(tmp_path: Path) -> None:
    """safetensors keeps the header's metadata in a hash map whose order changes from one
    write to the next; tl_lape's files must not (issue: the same collection, the same bytes)."""
    stats = make_stats(6, ("en", "zh", "fr"), model_name="tiny", seq_len=16)
    files = []
    for i in range(6):
        path = tmp_path / f"s{i}.safetensors"
        stats.save(path)
        files.append(path.read_bytes())
    assert all(f == files[0] for f in files)
    size = int.from_bytes(files[0][:8], "little")
    assert size % 8 == 0
    keys = list(json.loads(files[0][8 : 8 + size])["__metadata__"])
    assert keys == sorted(keys)
    assert ActivationStats.load(tmp_path / "s5.safetensors").languages == stats.languages


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    make_stats(9).save(good)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 definitely not safetensors")
    for path in (truncated, garbage):
        with pytest.raises(LapeError, match="corrupted or truncated") as info:
            ActivationStats.load(path)
        assert str(path) in str(info.value)

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(LapeError, match="not an ActivationStats file"):
        ActivationStats.load(foreign)

    inconsistent = tmp_path / "inconsistent.safetensors"
    with safe_open(str(good), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["n_tokens"] = torch.zeros_like(tensors["n_tokens"])
    # Without its checksum (as in files written before it existed) the content is validated.
    del header["checksum"]
    save_file(tensors, str(inconsistent), metadata=header)
    with pytest.raises(LapeError, match=r"invalid content: n_tokens must be >= 1"):
        ActivationStats.load(inconsistent)

    with pytest.raises(LapeError, match="no such file"):
        ActivationStats.load(tmp_path / "missing.safetensors")


def test_save_into_missing_directory_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(LapeError, match="does not exist"):
        make_stats(10).save(tmp_path / "nowhere" / "s.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("counts", "n_tokens", "languages", "match"),
    [
        (
            torch.full((2, 3, 2), 5),
            [4, 9],
            LANGS[:2],
            r"active_counts\[0, 0, 0\] = 5 > n_tokens\[0\] = 4",
        ),
        (torch.full((2, 3, 2), -1), [4, 9], LANGS[:2], "active_counts must be >= 0"),
        (torch.zeros(2, 3, 2), [0, 9], LANGS[:2], r"n_tokens must be >= 1.*\['en'\] saw no tokens"),
        (torch.zeros(2, 3, 2), [4, 9], ("en", "en"), r"distinct; \['en'\] repeated"),
        (torch.zeros(2, 3, 2), [4, 9, 1], LANGS[:2], r"n_tokens must hold one number per language"),
        (torch.zeros(2, 3, 3), [4, 9], LANGS[:2], r"shape \(n_layers, d_mlp, lang=2\)"),
        (torch.full((2, 3, 2), 0.5), [4, 9], LANGS[:2], "whole numbers"),
        ([torch.zeros(2, 3), torch.zeros(2, 4)], [4, 9], LANGS[:2], "same .n_layers, d_mlp. shape"),
        ([torch.zeros(2, 3)], [4, 9], LANGS[:2], r"one \[n_layers, d_mlp\] tensor per language"),
        ({"en": torch.zeros(2, 3)}, [4, 9], LANGS[:2], r"no entry for languages \['zh'\]"),
    ],
)
def test_from_counts_validation(counts, n_tokens, languages, match: str) -> None:
    with pytest.raises(LapeError, match=match):
        ActivationStats.from_counts(counts, n_tokens, languages)


def test_constructor_validation_names_field_expected_and_received() -> None:
    good = make_stats(11)
    with pytest.raises(LapeError, match=r"active_counts must be a torch.int64 tensor.*torch.int32"):
        ActivationStats(LANGS, good.n_tokens, good.active_counts.int(), good.activation_sums)
    with pytest.raises(LapeError, match=r"activation_sums must be a torch.float64 tensor"):
        ActivationStats(LANGS, good.n_tokens, good.active_counts, good.activation_sums.float())
    bad_sums = good.activation_sums.clone()
    bad_sums[0, 0, 0] = float("nan")
    with pytest.raises(LapeError, match="activation_sums must be finite"):
        ActivationStats(LANGS, good.n_tokens, good.active_counts, bad_sums)
    with pytest.raises(LapeError, match="metadata must be JSON-serialisable"):
        ActivationStats(LANGS, good.n_tokens, good.active_counts, good.activation_sums, {"f": len})
    with pytest.raises(LapeError, match="languages is required"):
        ActivationStats.from_counts(good.active_counts, good.n_tokens)


def test_stats_are_frozen_and_repr_is_short() -> None:
    stats = make_stats(12)
    with pytest.raises(AttributeError):
        stats.languages = ("x",)  # type: ignore[misc]
    assert repr(stats) == (
        f"ActivationStats(n_layers=3, d_mlp=8, languages=('en', 'zh', 'fr'), "
        f"n_tokens={stats.n_tokens.tolist()})"
    )
