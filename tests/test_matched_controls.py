"""Random controls matched on activity: they hit the firing-rate target of the set they match."""

import pytest
import torch

from tl_lape.errors import LapeError
from tl_lape.neurons import activity_gap, random_matched_neurons
from tl_lape.selection import identify_language_neurons
from tl_lape.stats import ActivationStats

#: Stated tolerance: the activity-matched control's mean firing rate on each language lies within
#: this of the set's (the set fires on about 90% of its language's tokens).
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def stats() -> ActivationStats:
    """3 languages, 2 layers x 300 neurons: 30 specialists per language (90% on it, 5% on the
    others), 120 generalists firing on 85-95% of every language, the rest firing rarely."""
    gen = torch.Generator().manual_seed(0)
    n_layers, d_mlp, n_lang = 2, 300, 3
    rate = 0.02 + 0.1 * torch.rand(n_layers, d_mlp, n_lang, generator=gen, dtype=torch.float64)
    for layer in range(n_layers):
        for k in range(n_lang):
            block = slice(30 * k, 30 * (k + 1))
            rate[layer, block, :] = 0.05
            rate[layer, block, k] = 0.88 + 0.04 * torch.rand(30, generator=gen)
        rate[layer, 90:210, :] = 0.85 + 0.1 * torch.rand(120, n_lang, generator=gen)
    n_tokens = torch.full((n_lang,), 10_000)
    counts = (rate * n_tokens).round().long()
    sums = counts.double() * (0.5 + 0.5 * rate)
    return ActivationStats.from_counts(counts, n_tokens, ["en", "fr", "zh"], sums)


def test_activity_matched_controls_hit_the_firing_rate_target(stats: ActivationStats) -> None:
    neurons = identify_language_neurons(stats, top_rate=0.05)
    assert all(n > 0 for n in neurons.counts().values())
    for seed in range(3):
        control = random_matched_neurons(neurons, seed=seed, match="activity", stats=stats)
        assert torch.equal(control.counts_per_layer(), neurons.counts_per_layer())
        assert not bool((control.union() & neurons.union()).any())
        gaps = activity_gap(neurons, control, stats)
        for lang, row in gaps.items():
            assert abs(row["gap"]["firing_rate"]) < TOLERANCE, (lang, row)
    uniform = random_matched_neurons(neurons, seed=0, stats=stats)
    worst = max(
        abs(r["gap"]["firing_rate"]) for r in activity_gap(neurons, uniform, stats).values()
    )
    assert worst > 0.3  # the layer-and-size control fires far less often than the set


def test_activity_matching_is_seeded_and_varies_with_the_seed(stats: ActivationStats) -> None:
    neurons = identify_language_neurons(stats, top_rate=0.05)
    a = random_matched_neurons(neurons, seed=1, match="activity", stats=stats)
    b = random_matched_neurons(neurons, seed=1, match="activity", stats=stats)
    c = random_matched_neurons(neurons, seed=2, match="activity", stats=stats)
    assert torch.equal(a.masks(), b.masks())
    assert not torch.equal(a.masks(), c.masks())
    assert a.metadata["match"] == "activity" and a.metadata["pool"] == 10
    nearest = random_matched_neurons(neurons, seed=1, match="activity", stats=stats, pool=1)
    again = random_matched_neurons(neurons, seed=9, match="activity", stats=stats, pool=1)
    gap_nearest = activity_gap(neurons, nearest, stats)
    gap_pool = activity_gap(neurons, a, stats)
    for lang in neurons.languages:  # pool=1 takes the nearest neurons: at least as close
        assert abs(gap_nearest[lang]["gap"]["firing_rate"]) <= TOLERANCE
        assert abs(gap_pool[lang]["gap"]["firing_rate"]) <= TOLERANCE
    assert again.counts_per_layer().equal(nearest.counts_per_layer())


def test_activity_matching_needs_statistics(stats: ActivationStats) -> None:
    neurons = identify_language_neurons(stats, top_rate=0.05)
    with pytest.raises(LapeError, match="needs the ActivationStats"):
        random_matched_neurons(neurons, match="activity")
    counts_only = ActivationStats.from_counts(stats.active_counts, stats.n_tokens, stats.languages)
    with pytest.raises(LapeError, match="no activation values"):
        random_matched_neurons(neurons, match="activity", stats=counts_only)
