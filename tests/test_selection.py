"""LAPE selection against a plain-Python oracle, invariants, baselines and bad input."""

import logging
import math

import pytest
import torch

from tl_lape import ActivationStats, LanguageNeurons, LapeError
from tl_lape.selection import (
    identify_language_neurons,
    lap_scores,
    lape_scores,
    lave_scores,
    select_at_sizes,
)

LANGS7 = ("en", "zh", "fr", "es", "vi", "id", "ja")

# --------------------------------------------------------------------------- the oracle


def oracle(
    counts: list,
    n_tokens: list[int],
    top_rate: float,
    filter_rate: float,
    bar_ratio: float,
) -> tuple[list[set[tuple[int, int]]], list[tuple[float, int, int]], dict]:
    """The paper's selection written as plain loops over Python floats.

    Returns the per-language sets of (layer, neuron), the sorted candidate list
    (entropy, layer, neuron) and the probability rows by (layer, neuron).
    """
    n_layers, d_mlp, n_lang = len(counts), len(counts[0]), len(n_tokens)
    p = {
        (layer, n): [counts[layer][n][k] / n_tokens[k] for k in range(n_lang)]
        for layer in range(n_layers)
        for n in range(d_mlp)
    }
    everything = sorted(v for row in p.values() for v in row)
    t = everything[round(len(everything) * filter_rate) - 1]
    b = everything[round(len(everything) * bar_ratio) - 1]
    candidates = []
    for (layer, n), row in p.items():
        if not any(v > t for v in row):
            continue
        total = 0.0
        for v in row:
            total += v
        entropy = 0.0
        for v in row:
            q = v / total
            if q > 0:
                entropy -= q * math.log(q)
        candidates.append((entropy, layer, n))
    candidates.sort()  # by entropy, then layer, then neuron: the documented tie-break
    chosen = candidates[: round(top_rate * n_layers * d_mlp)]
    sets: list[set[tuple[int, int]]] = [set() for _ in range(n_lang)]
    for _, layer, n in chosen:
        for k in range(n_lang):
            if p[(layer, n)][k] > b:
                sets[k].add((layer, n))
    return sets, candidates, p


def random_counts(seed: int, n_layers: int, d_mlp: int, n_lang: int) -> tuple[torch.Tensor, list]:
    """Counts with never-firing neurons, one-language neurons and exactly repeated rows."""
    g = torch.Generator().manual_seed(seed)
    n_tokens = torch.randint(200, 400, (n_lang,), generator=g)
    shape = (n_layers, d_mlp, n_lang)
    # Sparse-ish firing: most probabilities small, a few large.
    p = torch.rand(shape, generator=g) ** 3
    p = p * (torch.rand(shape, generator=g) < 0.7)
    counts = (p * n_tokens).long()
    flat = counts.view(-1, n_lang)
    n = flat.shape[0]
    idx = torch.randperm(n, generator=g)
    flat[idx[: n // 10]] = 0  # never fire
    specific = idx[n // 10 : n // 10 + n // 20]
    flat[specific] = 0
    flat[specific, torch.randint(0, n_lang, (specific.numel(),), generator=g)] = n_tokens.min()
    # Exact ties: copy a few rows to other positions.
    src, dst = idx[n // 5 : n // 5 + 5], idx[n // 5 + 5 : n // 5 + 25]
    flat[dst] = flat[src.repeat(4)]
    return counts, n_tokens.tolist()


def assert_matches_oracle(
    neurons: LanguageNeurons,
    counts: torch.Tensor,
    n_tokens: list[int],
    rates: tuple[float, float, float],
) -> None:
    sets, candidates, p = oracle(counts.tolist(), n_tokens, *rates)
    n_req = round(rates[0] * counts.shape[0] * counts.shape[1])
    assert neurons.metadata["n_requested"] == n_req
    assert neurons.metadata["n_passing_filter"] == len(candidates)
    assert neurons.metadata["n_selected"] == min(n_req, len(candidates))
    got = [
        {(layer, n) for layer, n in torch.nonzero(neurons.mask(lang)).tolist()}
        for lang in neurons.languages
    ]
    # Rounding may order neurons with mathematically equal entropies (e.g. permuted rows)
    # differently in the two implementations; only such near-ties at the cut are tolerated.
    # Identical rows and one-language rows (entropy exactly 0 in both) are exact ties: there
    # the documented tie-break must hold exactly.
    if 0 < n_req < len(candidates):
        cut = candidates[n_req - 1][0]
        near = [c for c in candidates if abs(c[0] - cut) < 1e-12]
        inside = {(c[1], c[2]) for c in candidates[:n_req]}
        rows = {tuple(p[(c[1], c[2])]) for c in near}
        straddles = any((c[1], c[2]) not in inside for c in near) and any(
            (c[1], c[2]) in inside for c in near
        )
        if straddles and len(rows) > 1 and cut != 0.0:
            loose = {(c[1], c[2]) for c in near}
            for k in range(len(sets)):
                assert sets[k] - loose == got[k] - loose
            return
    assert got == sets


@pytest.mark.parametrize(
    ("seed", "shape", "rates"),
    [
        (0, (3, 40, 3), (0.05, 0.95, 0.95)),
        (1, (4, 50, 7), (0.01, 0.95, 0.95)),
        (2, (2, 64, 2), (0.1, 0.9, 0.8)),
        (3, (5, 16, 4), (0.2, 0.8, 0.9)),
        (4, (1, 128, 6), (0.03, 0.95, 0.95)),
        (5, (6, 20, 5), (0.5, 0.5, 0.7)),
    ],
)
def test_selection_matches_loop_oracle(seed: int, shape: tuple, rates: tuple) -> None:
    counts, n_tokens = random_counts(seed, *shape)
    langs = LANGS7[: shape[2]]
    stats = ActivationStats.from_counts(counts, n_tokens, langs)
    top_rate, filter_rate, bar = rates
    neurons = identify_language_neurons(
        stats, top_rate=top_rate, filter_rate=filter_rate, activation_bar_ratio=bar
    )
    assert neurons.languages == langs
    assert (neurons.n_layers, neurons.d_mlp) == shape[:2]
    assert_matches_oracle(neurons, counts, n_tokens, rates)


def test_ties_are_broken_by_layer_then_neuron() -> None:
    n_tokens = [100, 100, 100]
    counts = torch.zeros(3, 10, 3, dtype=torch.long)
    counts[..., :] = torch.tensor([20, 20, 20])  # entropy log 3: never among the lowest
    row = torch.tensor([90, 5, 0])  # the same low-entropy row at five places
    places = [(2, 1), (0, 9), (1, 0), (0, 3), (2, 0)]
    for layer, n in places:
        counts[layer, n] = row
    stats = ActivationStats.from_counts(counts, n_tokens, ["en", "zh", "fr"])
    # 30 neurons; top_rate 0.1 -> 3 neurons; the bar (40th of 90 values) is 20.
    neurons = identify_language_neurons(
        stats, top_rate=0.1, filter_rate=0.5, activation_bar_ratio=0.5
    )
    got = {(layer, n) for layer, n in torch.nonzero(neurons.mask("en")).tolist()}
    assert got == {(0, 3), (0, 9), (1, 0)}
    assert neurons.counts() == {"en": 3, "zh": 0, "fr": 0}
    assert "layer" in neurons.metadata["tie_break"]


def test_fewer_passing_than_requested(caplog: pytest.LogCaptureFixture) -> None:
    counts = torch.zeros(2, 50, 2, dtype=torch.long)
    counts[0, 7] = torch.tensor([10, 0])
    counts[1, 2] = torch.tensor([0, 10])
    counts[1, 3] = torch.tensor([10, 10])
    stats = ActivationStats.from_counts(counts, [10, 10], ["en", "fr"])
    with caplog.at_level(logging.WARNING, logger="tl_lape.selection"):
        neurons = identify_language_neurons(stats, top_rate=0.05)  # asks for 5
    assert neurons.metadata["n_requested"] == 5
    assert neurons.metadata["n_passing_filter"] == 3
    assert neurons.metadata["n_selected"] == 3
    assert neurons.metadata["shortfall"] == 2
    assert "only 3 of 5" in caplog.text
    assert neurons.indices("en", 0).tolist() == [7]
    assert neurons.indices("en", 1).tolist() == [3]
    assert neurons.indices("fr", 1).tolist() == [2, 3]


def test_never_firing_neurons_score_zero_but_are_never_selected() -> None:
    counts = torch.zeros(1, 100, 3, dtype=torch.long)
    counts[0, 50:] = torch.randint(1, 50, (50, 3), generator=torch.Generator().manual_seed(0))
    stats = ActivationStats.from_counts(counts, [60, 60, 60], ["en", "zh", "fr"])
    scores = lape_scores(stats)
    assert torch.equal(scores[0, :50], torch.zeros(50, dtype=torch.float64))
    # filter_rate 0.5: the threshold is 0 (half of the values are 0), so every firing neuron
    # passes and the never-firing ones, with the lowest possible entropy, are the only ones out.
    neurons = identify_language_neurons(stats, top_rate=0.3, filter_rate=0.5)
    assert neurons.metadata["filter_threshold"] == 0.0
    assert not bool(neurons.union()[0, :50].any())
    assert neurons.metadata["n_selected"] == 30


# --------------------------------------------------------------------------- invariants


def smooth_stats(seed: int, shape: tuple[int, int, int] = (4, 64, 5)) -> ActivationStats:
    """Counts from a wide range, so that no two entropies are accidentally close."""
    g = torch.Generator().manual_seed(seed)
    n_tokens = torch.randint(10**6, 2 * 10**6, (shape[2],), generator=g)
    counts = (torch.rand(shape, generator=g, dtype=torch.float64) ** 4 * n_tokens).long()
    stats = ActivationStats.from_counts(counts, n_tokens, LANGS7[: shape[2]])
    scores = lape_scores(stats).flatten().sort().values
    assert float((scores[1:] - scores[:-1]).min()) > 1e-12  # precondition: no near-ties
    return stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permuting_languages_permutes_the_result(seed: int) -> None:
    stats = smooth_stats(seed)
    base = identify_language_neurons(stats, top_rate=0.05)
    perm = list(torch.randperm(5, generator=torch.Generator().manual_seed(seed)).tolist())
    permuted = stats.select_languages([stats.languages[i] for i in perm])
    result = identify_language_neurons(permuted, top_rate=0.05)
    assert result.languages == permuted.languages
    assert result.select(stats.languages) == base
    assert torch.allclose(lape_scores(permuted), lape_scores(stats), rtol=0, atol=1e-12)


@pytest.mark.parametrize("factor", [2, 3, 1000])
def test_scaling_counts_and_tokens_changes_nothing(factor: int) -> None:
    stats = smooth_stats(3)
    scaled = ActivationStats.from_counts(
        stats.active_counts * factor, stats.n_tokens * factor, stats.languages
    )
    assert torch.equal(scaled.probabilities, stats.probabilities)
    assert torch.equal(lape_scores(scaled), lape_scores(stats))
    assert identify_language_neurons(scaled) == identify_language_neurons(stats)


@pytest.mark.parametrize("n_lang", [2, 3, 7])
def test_entropies_lie_between_zero_and_log_n(n_lang: int) -> None:
    counts, _ = random_counts(n_lang, 3, 30, n_lang)
    counts[0, 0] = 7  # uniform over languages (equal tokens below): the maximum
    counts[0, 1] = 0
    counts[0, 1, 0] = 5  # one language only: the minimum
    stats = ActivationStats.from_counts(counts, [400] * n_lang, LANGS7[:n_lang])
    scores = lape_scores(stats)
    assert scores.shape == (3, 30)
    assert scores.dtype == torch.float64
    assert bool((scores >= 0).all())
    assert bool((scores <= math.log(n_lang)).all())
    assert float(scores[0, 0]) == pytest.approx(math.log(n_lang), abs=1e-12)
    assert float(scores[0, 1]) == 0.0
    assert torch.equal(lape_scores(stats.probabilities), scores)


def test_selected_neurons_satisfy_the_definition() -> None:
    stats = smooth_stats(4, (3, 100, 4))
    neurons = identify_language_neurons(
        stats, top_rate=0.05, filter_rate=0.9, activation_bar_ratio=0.8
    )
    p = stats.probabilities
    b = neurons.metadata["activation_bar"]
    assert b == float(torch.kthvalue(p.flatten(), round(0.8 * p.numel())).values)
    union = neurons.union()
    scores = lape_scores(stats)
    passes = (p > neurons.metadata["filter_threshold"]).any(dim=-1)
    # Every neuron with a language has p > bar there, and passes the filter.
    for k, lang in enumerate(neurons.languages):
        mask = neurons.mask(lang)
        assert bool((p[..., k][mask] > b).all())
    assert bool(passes[union].all())
    # With the bar below the filter, every selected neuron has a language ...
    assert neurons.metadata["n_selected_without_language"] == 0
    assert int(union.sum()) == neurons.metadata["n_selected"] == 15
    # ... and no passing neuron left out scores lower than the worst selected one.
    worst = neurons.metadata["max_selected_score"]
    assert worst == float(scores[union].max())
    assert bool((scores[passes & ~union] >= worst).all())


def test_result_metadata_is_saved_with_the_set(tmp_path) -> None:
    base = smooth_stats(5)
    stats = ActivationStats.from_counts(
        base.active_counts, base.n_tokens, base.languages, metadata={"model_name": "m"}
    )
    neurons = identify_language_neurons(stats)
    assert neurons.metadata["model_name"] == "m"
    assert neurons.metadata["method"] == "lape"
    neurons.save(tmp_path / "n.json")
    loaded = LanguageNeurons.load(tmp_path / "n.json")
    assert loaded == neurons
    assert loaded.metadata == neurons.metadata


# --------------------------------------------------------------------------- baselines


def test_lave_on_means_equal_to_probabilities_is_lape() -> None:
    stats = smooth_stats(6)
    # Activation sums equal to the counts make the mean activations equal to the probabilities.
    twin = ActivationStats.from_counts(
        stats.active_counts, stats.n_tokens, stats.languages, stats.active_counts.double()
    )
    assert torch.equal(twin.mean_activations, twin.probabilities)
    assert torch.equal(lave_scores(twin), lape_scores(twin))
    lave = identify_language_neurons(twin, method="lave")
    assert lave == identify_language_neurons(twin, method="lape")
    assert lave.metadata["method"] == "lave"


def test_lave_clips_negative_means_and_needs_sums() -> None:
    means = torch.tensor([[[1.0, -2.0, 0.0], [-1.0, -1.0, -1.0]]], dtype=torch.float64)
    scores = lave_scores(means)
    assert scores.tolist() == [[0.0, 0.0]]
    counts_only = ActivationStats.from_counts(
        torch.ones(2, 50, 2, dtype=torch.long), [5, 5], ["a", "b"]
    )
    with pytest.raises(LapeError, match="hold no activation values"):
        identify_language_neurons(counts_only, method="lave")


def test_lap_picks_the_most_active_neurons_per_language() -> None:
    stats = smooth_stats(7, (3, 40, 4))
    neurons = identify_language_neurons(stats, top_rate=0.1, method="lap")
    p = lap_scores(stats)
    assert torch.equal(p, stats.probabilities)
    per_language = round(0.1 * 3 * 40 / 4)
    threshold = max(neurons.metadata["filter_threshold"], neurons.metadata["activation_bar"])
    for k, lang in enumerate(neurons.languages):
        # Highest probability first, ties by (layer, neuron); only those above the thresholds.
        ranked = sorted(
            (-float(p[layer, n, k]), layer, n)
            for layer in range(3)
            for n in range(40)
            if float(p[layer, n, k]) > threshold
        )
        expected = {(layer, n) for _, layer, n in ranked[:per_language]}
        assert neurons.metadata["n_selected_per_language"][k] == len(expected) > 0
        got = {(layer, n) for layer, n in torch.nonzero(neurons.mask(lang)).tolist()}
        assert got == expected


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["top_rate", "filter_rate", "activation_bar_ratio"])
@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_rates_outside_the_open_unit_interval(name: str, value: float) -> None:
    stats = smooth_stats(8)
    with pytest.raises(LapeError, match=rf"{name} must be a number strictly between 0 and 1"):
        identify_language_neurons(stats, **{name: value})


def test_other_bad_input() -> None:
    stats = smooth_stats(9)
    with pytest.raises(
        LapeError, match=r"method must be one of \['lape', 'lap', 'lave'\]; received 'lapee'"
    ):
        identify_language_neurons(stats, method="lapee")
    with pytest.raises(
        LapeError, match=r"top_rate=0.001 selects round\(0.001 \* 256\) = 0 neurons"
    ):
        identify_language_neurons(stats, top_rate=0.001)
    tiny = ActivationStats.from_counts(torch.ones(1, 1, 2, dtype=torch.long), [2, 2], ["en", "fr"])
    with pytest.raises(LapeError, match=r"filter_rate=0.2 picks the 0-th smallest of only 2"):
        identify_language_neurons(tiny, top_rate=0.9, filter_rate=0.2)
    one = ActivationStats.from_counts(torch.ones(1, 1, 1, dtype=torch.long), [2], ["en"])
    with pytest.raises(LapeError, match=r"at least two languages .*; received \['en'\]"):
        identify_language_neurons(one, top_rate=0.9, filter_rate=0.4)
    with pytest.raises(LapeError, match=r"probabilities in \[0, 1\]"):
        lape_scores(torch.full((1, 2, 2), 1.5, dtype=torch.float64))
    with pytest.raises(LapeError, match="must be finite"):
        lape_scores(torch.full((1, 2, 2), float("nan"), dtype=torch.float64))


def test_thresholds_are_keyword_only() -> None:
    stats = ActivationStats.from_counts(torch.ones(1, 8, 2, dtype=torch.long), [2, 2], ["en", "fr"])
    with pytest.raises(TypeError):
        identify_language_neurons(stats, 0.5)  # type: ignore[misc]


# --------------------------------------------------------------------------- equal-size controls


def _random_stats(seed: int, n_lang: int = 4) -> ActivationStats:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 100, (3, 200, n_lang), generator=g)
    counts[0, :20, 0] = torch.randint(80, 100, (20,), generator=g)  # some en-specific neurons
    return ActivationStats.from_counts(counts, [100] * n_lang, list(LANGS7[:n_lang]))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("rate", "threshold"), [(0.05, 0.95), (0.1, 0.9), (0.02, 0.8)])
def test_select_at_sizes_of_lape_is_lape(seed, rate, threshold):
    stats = _random_stats(seed)
    kw = {"filter_rate": threshold, "activation_bar_ratio": threshold}
    lape = identify_language_neurons(stats, top_rate=rate, **kw)
    again = select_at_sizes(stats, lape.counts(), method="lape", **kw)
    assert torch.equal(lape.masks(), again.masks())


def test_select_at_sizes_lap_takes_the_highest_probabilities():
    stats = _random_stats(0)
    sizes = {"en": 7, "fr": 2}
    lap = select_at_sizes(stats, sizes, method="lap")
    assert lap.languages == ("en", "fr") and lap.counts() == sizes
    p = stats.probabilities.flatten(0, 1)  # neuron lang
    bar = lap.metadata["activation_bar"]
    for lang in sizes:
        k = stats.languages.index(lang)
        chosen = lap.masks()[lap.languages.index(lang)].flatten()
        eligible = p[:, k] > bar
        assert bool(eligible[chosen].all())
        # nothing eligible left out scores higher than the lowest chosen
        assert float(p[eligible & ~chosen, k].max()) <= float(p[chosen, k].min())
    assert lap.metadata["shortfall_per_language"] == {"en": 0, "fr": 0}


def test_select_at_sizes_shortfall_and_refusals(caplog):
    stats = _random_stats(1)
    with caplog.at_level(logging.WARNING):
        big = select_at_sizes(stats, {"en": 10_000}, method="lap")
    assert big.metadata["shortfall_per_language"]["en"] > 0 and "fewer candidates" in caplog.text
    with pytest.raises(LapeError, match=r"lack: \['xx'\]"):
        select_at_sizes(stats, {"xx": 1})
    with pytest.raises(LapeError, match=r"sizes\['en'\] must be an int >= 0; received -1"):
        select_at_sizes(stats, {"en": -1})
    with pytest.raises(LapeError, match="non-empty"):
        select_at_sizes(stats, {})
    one = ActivationStats.from_counts(torch.ones(1, 4, 1, dtype=torch.long), [2], ["en"])
    with pytest.raises(LapeError, match="at least two languages"):
        select_at_sizes(one, {"en": 1})
