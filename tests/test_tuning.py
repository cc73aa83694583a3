"""Equal tuning budgets by successive halving, without a model."""

import random

import pytest

from tl_lape import LapeError
from tl_lape.experiments.tuning import halving_chunks, sample_configs, successive_halving


def test_chunks_cover_the_prompts_once_each_and_double():
    assert halving_chunks(16, rounds=0) == [slice(0, 16)]
    assert halving_chunks(48, rounds=3) == [slice(0, 6), slice(6, 12), slice(12, 24), slice(24, 48)]
    for n in (8, 13, 16, 48):
        chunks = halving_chunks(n, rounds=2)
        covered = [i for c in chunks for i in range(c.start, c.stop)]
        assert covered == list(range(n))
    with pytest.raises(LapeError, match=r"chunks of \[1, 1, 2\] prompts; each needs at least 2"):
        halving_chunks(4, rounds=2, min_size=2)
    with pytest.raises(LapeError, match="halving_rounds must be an int of at least 0"):
        halving_chunks(4, rounds=-1)


def test_every_method_gets_exactly_the_budget():
    lape = [("lape", i) for i in range(48)]
    diff = [("diffmean", i) for i in range(12)]
    a = sample_configs(lape, 12, method="lape")
    assert len(a) == 12 and len(set(a)) == 12 and a == sorted(a)  # grid order kept
    assert a == sample_configs(lape, 12, method="lape")  # seeded
    assert a != sample_configs(lape, 12, method="lape", seed=1)
    assert sample_configs(diff, 12, method="diffmean") == diff  # the whole grid
    with pytest.raises(LapeError, match=r"the diffmean grid has 12 configurations, fewer than "):
        sample_configs(diff, 13, method="diffmean")


def test_halving_keeps_the_better_half_and_finds_a_clear_best():
    """Scores pooled over the chunks a configuration ran on: a configuration better on every
    chunk is chosen; each method's survivors halve each round; each configuration runs on
    each chunk at most once."""
    rng = random.Random(0)
    quality = {(m, i): rng.random() for m in ("lape", "diffmean") for i in range(12)}
    quality[("lape", 7)] = 2.0
    quality[("diffmean", 3)] = 2.0
    runs: dict[tuple[str, int], list[int]] = {}

    def run_round(alive, k):
        for c in alive:
            runs.setdefault(c, []).append(k)

    def score(c):
        return quality[c] * len(runs[c]) / len(runs[c])  # pooled mean of a constant

    groups = {m: [c for c in quality if c[0] == m] for m in ("lape", "diffmean")}
    chosen, history = successive_halving(groups, run_round, score, rounds=2)
    assert chosen == {"lape": ("lape", 7), "diffmean": ("diffmean", 3)}
    assert [len(h["lape"]) for h in history] == [12, 6, 3]
    assert [len(h["diffmean"]) for h in history] == [12, 6, 3]
    assert all(ks == sorted(set(ks)) for ks in runs.values())
    assert runs[("lape", 7)] == [0, 1, 2]
    worst = min(groups["lape"], key=quality.__getitem__)
    assert runs[worst] == [0]
    plain, hist = successive_halving(groups, lambda alive, k: None, quality.__getitem__, rounds=0)
    assert plain == chosen and len(hist) == 1
