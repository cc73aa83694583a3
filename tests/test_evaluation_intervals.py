"""Every effect of the evaluation with its uncertainty: per-window data, paired bootstrap
intervals, p-values against the random draws, and their JSON, on the tiny models."""

import inspect
import json
import math

import pytest
import torch
from tiny_models import CORPUS

from tl_lape.collection.windows import token_windows
from tl_lape.errors import LapeError
from tl_lape.experiments.evaluation import (
    EvaluationReport,
    PerplexityMatrix,
    check_evaluation_options,
    perplexity_matrix,
    run_evaluation,
    selectivity,
)
from tl_lape.intervals import bootstrap_weights, min_p_value, percentile_interval
from tl_lape.interventions.hooks import deactivation_hooks
from tl_lape.judging.nll import window_nll
from tl_lape.neurons import DEFAULT_POOL, LanguageNeurons, activity_gap, random_matched_neurons

SEQ_LEN = 16
BUDGET = 120
N_BOOT = 400


@pytest.fixture(scope="module")
def report(llama, neurons):
    return run_evaluation(
        llama.bridge,
        neurons,
        CORPUS,
        n_random=2,
        seq_len=SEQ_LEN,
        max_tokens_per_language=BUDGET,
        n_boot=N_BOOT,
        progress=False,
    )


def _matrix(model, neurons, corpus=CORPUS, **kwargs):
    return perplexity_matrix(
        model,
        neurons,
        corpus,
        seq_len=SEQ_LEN,
        max_tokens_per_language=BUDGET,
        progress=False,
        **kwargs,
    )


def test_per_window_matrix_equals_the_aggregate_nll(llama, neurons):
    """Oracle: each cell equals window_nll's total / count on the same windows (today's
    computation), within float64 summation order; the per-window data adds up to it."""
    m = _matrix(llama.bridge, neurons, languages=["en", "zh"], deactivate=["en", "fr"])
    assert m.has_windows and m.window_sums is not None and m.window_tokens is not None
    for k, lang in enumerate(m.languages):
        windows = token_windows(llama.bridge, CORPUS[lang], seq_len=SEQ_LEN, max_tokens=BUDGET)
        n = windows.shape[0]
        assert int(m.n_windows[k]) == n and int(m.n_tokens[k]) == windows.numel() - n
        assert m.window_tokens[k, :n].tolist() == [SEQ_LEN - 1] * n
        for row, deact in enumerate([None, *m.deactivated]):
            hooks = (
                [] if deact is None else deactivation_hooks(neurons, [deact], model=llama.bridge)
            )
            total, count = window_nll(llama.bridge, windows, fwd_hooks=hooks)
            assert count == int(m.n_tokens[k])
            assert float(m.nll[row, k]) == pytest.approx(total / count, rel=1e-12, abs=0)
            assert float(m.window_sums[row, k, :n].sum()) == pytest.approx(total, rel=1e-12)


def test_paired_interval_uses_one_set_of_weights_per_language(llama, neurons):
    """Oracle: the rise's replicates are (w @ deactivated sums - w @ clean sums) / (w @ tokens)
    with one weight vector per replicate, clustered by document, resampled per language."""
    m = _matrix(llama.bridge, neurons)
    est = m.intervals(n_boot=N_BOOT, seed=3)
    from tl_lape.experiments.evaluation import _language_seed  # the documented derivation

    assert m.window_sums is not None and m.window_tokens is not None
    assert m.window_clusters is not None
    for k in range(len(m.languages)):
        n = int(m.n_windows[k])
        w = bootstrap_weights(
            n, clusters=m.window_clusters[k, :n], n_boot=N_BOOT, seed=_language_seed(3, k)
        )
        tokens = w @ m.window_tokens[k, :n].double()
        clean = (w @ m.window_sums[0, k, :n]) / tokens
        for i in range(len(m.deactivated)):
            rise = (w @ m.window_sums[1 + i, k, :n]) / tokens - clean
            expected = percentile_interval(
                rise, point=float(m.delta[i, k]), n_units=m.n_clusters()[k]
            )
            got = est.delta[i][k]
            assert got.value == float(m.delta[i, k])
            assert got.low == pytest.approx(expected.low, abs=1e-12)
            assert got.high == pytest.approx(expected.high, abs=1e-12)
    # Selectivity and the own-language test keep the definitions of the point statistics.
    sel = selectivity(m)
    assert [e.value for e in est.selectivity] == pytest.approx(sel.tolist())
    assert est.n_own_largest.value == int(m.own_is_largest().sum())
    assert all(p is None or 0.0 <= p <= 1.0 for p in est.own_largest_probability)


def test_windows_are_clustered_by_the_document_they_start_in(llama, neurons):
    """Oracle: the document of each window's first token, from each text's own length."""
    m = _matrix(llama.bridge, neurons, languages=["en", "fr"])
    assert m.cluster_units == ("document", "document")
    tokenizer = llama.bridge.tokenizer
    separator = [t for t in (tokenizer.eos_token_id, tokenizer.bos_token_id) if t is not None]
    assert m.window_clusters is not None
    for k, lang in enumerate(m.languages):
        starts, position = [], 0
        for d, doc in enumerate(CORPUS[lang]):
            starts.append(position)
            position += len(tokenizer(doc, add_special_tokens=False)["input_ids"])
            position += len(separator) if d + 1 < len(CORPUS[lang]) else 0
        n = int(m.n_windows[k])
        body = SEQ_LEN - 1
        expected = [max(d for d, s in enumerate(starts) if s <= w * body) for w in range(n)]
        # The separator before a document belongs to it.
        expected = [
            d + 1 if d + 1 < len(starts) and w * body >= starts[d + 1] - len(separator) else d
            for w, d in zip(range(n), expected, strict=True)
        ]
        assert m.window_clusters[k, :n].tolist() == expected
        assert m.n_clusters()[k] == len(set(expected))


def test_token_id_corpus_makes_each_window_its_own_cluster(llama, neurons):
    ids = {lang: torch.arange(3, 3 + 4 * (SEQ_LEN - 1)) for lang in ("en", "fr")}
    m = _matrix(llama.bridge, neurons, corpus=ids)
    assert m.cluster_units == ("window", "window")
    assert m.window_clusters is not None
    assert m.window_clusters.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert m.to_dict()["per_window"]["cluster_units"] == ["window", "window"]


def test_one_window_gives_no_interval_never_plus_minus_zero(llama, neurons):
    ids = {lang: torch.arange(3, 3 + SEQ_LEN - 1) for lang in ("en", "fr")}
    report = run_evaluation(
        llama.bridge, neurons, ids, n_random=1, seq_len=SEQ_LEN, n_boot=50, progress=False
    )
    est = report.intervals()
    assert report.lape.n_windows.tolist() == [1, 1]
    assert not any(e.has_interval for row in est.lape.delta for e in row)
    assert not any(e.has_interval for e in est.lape.selectivity)
    assert est.lape.own_largest_probability == (None,) * len(report.lape.deactivated)
    text = report.to_markdown()
    assert "± n/a" in text and "± 0" not in text
    assert "[" not in text.split("| --- |")[1].split("\n\n")[0]  # no interval in the matrix
    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    cell = data["estimates"]["lape"]["delta"][0][0]
    assert cell["low"] is None and cell["high"] is None and "no interval" in cell["reason"]


def test_report_intervals_p_values_and_markdown(report):
    est = report.intervals()
    lape_sel = report.selectivity()
    rand_sel = report.random_selectivity()
    for i in range(len(report.lape.deactivated)):
        # Oracle: the empirical p-value by its definition.
        worse = int((rand_sel[:, i] >= lape_sel[i]).sum())
        assert est.p_values[i] == pytest.approx((1 + worse) / (1 + 2))
        assert est.p_values[i] >= min_p_value(2)
        assert est.random_selectivity is not None
        assert est.random_selectivity[i].value == pytest.approx(float(rand_sel[:, i].mean()))
    assert est.min_p_value == min_p_value(2) == pytest.approx(1 / 3)
    assert est.selectivity_ratio is not None
    assert est.selectivity_ratio.value == pytest.approx(report.selectivity_ratio())
    text = report.to_markdown()
    assert "95% paired bootstrap interval" in text
    assert "p vs random (min 0.33)" in text and "p < 0.05 is not attainable" in text
    # The ratio divides exactly the two numbers printed beside it.
    line = next(li for li in text.splitlines() if li.startswith("LAPE vs random"))
    fraction = line.split("ratio ")[1]
    num, rest = fraction.split(" / ")
    den, shown = rest.split(" = **")
    assert f"{float(num) / float(den):.1f}x" == shown.split("**")[0]


def test_report_json_round_trip_recomputes_every_statistic(report):
    data = report.to_dict()
    text = json.dumps(data, allow_nan=False)
    again = EvaluationReport.from_dict(json.loads(text))
    for a, b in zip((report.lape, *report.random), (again.lape, *again.random), strict=True):
        assert torch.equal(a.nll, b.nll) and torch.equal(a.n_tokens, b.n_tokens)
        assert a.window_sums is not None and b.window_sums is not None
        assert torch.equal(a.window_sums, b.window_sums)
        assert torch.equal(a.window_tokens, b.window_tokens)  # type: ignore[arg-type]
        assert torch.equal(a.window_clusters, b.window_clusters)  # type: ignore[arg-type]
        assert a.cluster_units == b.cluster_units
    assert (again.n_boot, again.seed, again.level) == (N_BOOT, 0, 0.95)
    assert again.intervals() == report.intervals()
    assert again.to_markdown() == report.to_markdown()
    assert json.dumps(again.to_dict(), allow_nan=False) == text


def test_intervals_are_deterministic_under_a_seed(report):
    m = report.lape
    assert m.intervals(n_boot=200, seed=5) == m.intervals(n_boot=200, seed=5)
    assert m.intervals(n_boot=200, seed=5) != m.intervals(n_boot=200, seed=6)
    other = EvaluationReport(
        report.lape, report.random, report.baselines, n_boot=N_BOOT, seed=0, level=0.95
    )
    assert other.intervals() == report.intervals()


def test_p_value_floor_with_one_draw(llama, neurons):
    one = run_evaluation(
        llama.bridge,
        neurons,
        {lang: CORPUS[lang] for lang in ("en", "fr")},
        n_random=1,
        seq_len=SEQ_LEN,
        max_tokens_per_language=60,
        n_boot=50,
        progress=False,
    )
    assert all(p is None or p in (0.5, 1.0) for p in one.p_values())
    assert one.to_dict()["min_p_value"] == 0.5
    assert "the smallest possible is 0.5, so p < 0.05 is not attainable" in one.to_markdown()


def test_no_nan_or_infinity_in_json():
    """A random control whose selectivity is exactly zero makes the ratio infinite: null, and
    the reason; a deactivated language that is not evaluated has a null selectivity."""
    nll = torch.tensor([[1.0, 2.0], [1.5, 2.1], [1.1, 2.0]], dtype=torch.float64)
    sums = torch.stack([nll * 3, nll * 3], dim=2) / 2  # two windows of 3 tokens, equal halves
    tokens = torch.tensor([[3, 3], [3, 3]])
    lape = PerplexityMatrix(
        ("a", "x"), ("a", "b"), nll, tokens.sum(1), window_sums=sums, window_tokens=tokens
    )
    flat = nll[0:1].expand(3, -1).clone()
    control = PerplexityMatrix(
        ("a", "x"),
        ("a", "b"),
        flat,
        tokens.sum(1),
        window_sums=torch.stack([flat * 3, flat * 3], dim=2) / 2,
        window_tokens=tokens,
    )
    report = EvaluationReport(lape, (control,), n_boot=50)
    assert math.isinf(report.selectivity_ratio())
    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["summary"]["selectivity_ratio"] is None
    assert "mean |selectivity| is 0" in data["null_reasons"]["summary.selectivity_ratio"]
    assert data["selectivity"][1] is None and "selectivity[1]" in data["null_reasons"]
    ratio = data["estimates"]["selectivity_ratio"]
    assert ratio["value"] is None and ratio["reason"]
    assert "n/a" in report.to_markdown()


def test_positions_per_window_are_paired(llama):
    """With k scored positions per window, every row scores the same positions: an empty
    neuron set leaves every window's sum unchanged, exactly."""
    empty = LanguageNeurons.from_masks(torch.zeros(2, 2, 64, dtype=torch.bool), ["en", "fr"])
    m = _matrix(llama.bridge, empty, languages=["en", "fr"], positions_per_window=4, seed=2)
    assert m.window_sums is not None and m.window_tokens is not None
    assert torch.equal(m.window_sums[1:], m.window_sums[0:1].expand(2, -1, -1))
    assert set(m.window_tokens[m.window_tokens > 0].tolist()) == {4}
    assert m.metadata["positions_per_window"] == 4


def test_activity_control(llama, neurons, stats):
    report = run_evaluation(
        llama.bridge,
        neurons,
        {lang: CORPUS[lang] for lang in ("en", "fr")},
        stats=stats,
        selectors=(),
        n_random=1,
        control="activity",
        seq_len=SEQ_LEN,
        max_tokens_per_language=45,
        n_boot=50,
        progress=False,
    )
    assert report.metadata["control"] == "activity"
    assert report.metadata["pool"] == DEFAULT_POOL
    assert set(report.metadata["activity_gap"][0]) == set(neurons.languages)
    assert "(activity-matched)" in report.to_markdown()
    json.dumps(report.to_dict(), allow_nan=False)
    # pool=1: the nearest candidate of each neuron, the draw random_matched_neurons gives.
    nearest = random_matched_neurons(neurons, seed=0, match="activity", stats=stats, pool=1)
    report1 = run_evaluation(
        llama.bridge,
        neurons,
        {lang: CORPUS[lang] for lang in ("en", "fr")},
        stats=stats,
        selectors=(),
        n_random=1,
        control="activity",
        pool=1,
        seq_len=SEQ_LEN,
        max_tokens_per_language=45,
        n_boot=50,
        progress=False,
    )
    assert report1.metadata["pool"] == 1
    assert report1.metadata["activity_gap"][0] == activity_gap(neurons, nearest, stats)
    assert inspect.signature(run_evaluation).parameters["pool"].default == DEFAULT_POOL
    with pytest.raises(LapeError, match=r"all 2 random draws would be the same set.*n_random=2"):
        check_evaluation_options(control="activity", stats=stats, pool=1, n_random=2)
    with pytest.raises(LapeError, match=r"pool must be a positive int.*received 0"):
        check_evaluation_options(pool=0)


#: ``run_evaluation`` without the test suite's runtime type checker, as users call it (the
#: checker refuses a str outside the ``Literal`` before the function runs).
unchecked_run_evaluation = inspect.unwrap(run_evaluation)


def test_bad_interval_options(llama, neurons):
    with pytest.raises(
        LapeError, match=r"control must be one of \['layer', 'activity'\]; received 'size'"
    ):
        unchecked_run_evaluation(llama.bridge, neurons, CORPUS, control="size")
    with pytest.raises(LapeError, match=r"control='activity'.*received stats=None"):
        run_evaluation(llama.bridge, neurons, CORPUS, control="activity")
    with pytest.raises(LapeError, match=r"n_boot must be an int from 1 to 100000.*received 0"):
        run_evaluation(llama.bridge, neurons, CORPUS, n_boot=0)
    with pytest.raises(LapeError, match=r"level must be a number strictly between 0 and 1.*1.5"):
        run_evaluation(llama.bridge, neurons, CORPUS, level=1.5)
    with pytest.raises(LapeError, match="positions_per_window must be a positive int or None"):
        run_evaluation(llama.bridge, neurons, CORPUS, positions_per_window=0)
    bare = PerplexityMatrix(
        ("a",), ("a",), torch.zeros(2, 1, dtype=torch.float64), torch.tensor([3])
    )
    with pytest.raises(LapeError, match="no per-window data"):
        bare.intervals()
    with pytest.raises(LapeError, match="window_tokens add up to"):
        PerplexityMatrix(
            ("a",),
            ("a",),
            torch.zeros(2, 1, dtype=torch.float64),
            torch.tensor([3]),
            window_sums=torch.zeros(2, 1, 1, dtype=torch.float64),
            window_tokens=torch.tensor([[2]]),
        )
    with pytest.raises(LapeError, match="a perplexity matrix must be a dict"):
        PerplexityMatrix.from_dict({"nll": []})


def test_late_failures_are_checked_before_any_forward_pass(stats) -> None:
    """The activity control's need for activation values and the seed range of the draws are
    checked with the other options, so the CLI refuses them before loading a model."""
    from tl_lape.experiments.evaluation import check_evaluation_options
    from tl_lape.stats import ActivationStats

    counts_only = ActivationStats.from_counts(stats.active_counts, stats.n_tokens, stats.languages)
    with pytest.raises(LapeError, match="built from counts alone"):
        check_evaluation_options(control="activity", stats=counts_only)
    with pytest.raises(LapeError, match=r"seed=9223372036854775807, n_random=3"):
        check_evaluation_options(seed=2**63 - 1, n_random=3)
    check_evaluation_options(seed=2**63 - 3, n_random=3)  # the last seed is 2**63 - 1


def test_lape_minus_baseline_selectivity_is_paired():
    """LAPE minus another selector's selectivity uses the same replicates for both: a baseline
    whose own-language rise is lower by exactly c in every window differs by exactly c in every
    replicate (a zero-width interval), which an unpaired interval could not give."""
    g = torch.Generator().manual_seed(0)
    n_win, c = 6, 0.25
    tokens = torch.full((2, n_win), 4)
    clean = 1 + torch.rand(2, n_win, generator=g, dtype=torch.float64)  # lang window
    rise = torch.rand(2, 2, n_win, generator=g, dtype=torch.float64)  # deact lang window
    per_token = torch.cat([clean[None], clean[None] + rise])  # row lang window
    sums = per_token * 4
    nll = sums.sum(-1) / tokens.sum(-1)
    kw = {"window_tokens": tokens}
    lape = PerplexityMatrix(("a", "b"), ("a", "b"), nll, tokens.sum(1), window_sums=sums, **kw)
    lower = per_token.clone()
    lower[1, 0] -= c  # a's own rise lower by c in every window
    lower[2, 1] -= c  # b's likewise
    lap = PerplexityMatrix(
        ("a", "b"),
        ("a", "b"),
        (lower * 4).sum(-1) / tokens.sum(-1),
        tokens.sum(1),
        window_sums=lower * 4,
        **kw,
    )
    report = EvaluationReport(lape, (), {"lap": lap, "same": lape}, n_boot=300, seed=1)
    est = report.intervals()
    for e in est.baseline_differences["lap"]:
        assert e.value == pytest.approx(c) and e.low == pytest.approx(c)
        assert e.high == pytest.approx(c)
    point = selectivity(lape) - selectivity(lap)
    assert [e.value for e in est.baseline_differences["lap"]] == pytest.approx(point.tolist())
    assert est.baseline_mean_differences["same"].value == 0.0
    data = json.loads(json.dumps(est.to_dict(), allow_nan=False))
    assert data["baseline_mean_differences"]["lap"]["value"] == pytest.approx(c)
    assert "LAPE minus LAP, paired: mean selectivity +0.2500 [+0.2500, +0.2500]" in (
        report.to_markdown()
    )
    # The same pairing for the random draws: two draws lower by c and by 3c in every window
    # differ from LAPE by 2c on average in every replicate; the ratio is a point only.
    lower3 = per_token.clone()
    lower3[1, 0] -= 3 * c
    lower3[2, 1] -= 3 * c
    lap3 = PerplexityMatrix(
        ("a", "b"),
        ("a", "b"),
        (lower3 * 4).sum(-1) / tokens.sum(-1),
        tokens.sum(1),
        window_sums=lower3 * 4,
        **kw,
    )
    with_random = EvaluationReport(lape, (lap, lap3), n_boot=300, seed=1)
    est = with_random.intervals()
    assert est.random_differences is not None and est.random_difference is not None
    for e in (*est.random_differences, est.random_difference):
        assert e.value == pytest.approx(2 * c) and e.low == pytest.approx(2 * c)
        assert e.high == pytest.approx(2 * c)
    assert est.selectivity_ratio is not None and not est.selectivity_ratio.has_interval
    assert est.selectivity_ratio.value == pytest.approx(with_random.selectivity_ratio())
    data = json.loads(json.dumps(est.to_dict(), allow_nan=False))
    assert "is not valid" in data["selectivity_ratio"]["reason"]
    assert data["random_difference"]["value"] == pytest.approx(2 * c)
    text = with_random.to_markdown()
    assert "LAPE minus random, paired (signed means): +0.5000 [+0.5000, +0.5000] nats" in text


def test_biased_mean_abs_selectivity_is_flagged():
    """Random draws whose selectivity is exactly 0 on the full sample but not in resamples:
    the bootstrap of mean |selectivity| sits above 0, and the report says so."""
    v = torch.tensor([1.0, 0.5, 0.2, -0.3, -0.6, -0.8], dtype=torch.float64)  # sums to 0
    tokens = torch.full((2, 6), 5)
    clean = torch.full((2, 6), 2.0, dtype=torch.float64)

    def matrix(own: torch.Tensor) -> PerplexityMatrix:
        rows = torch.stack([clean, clean.clone(), clean.clone()])  # row lang window
        rows[1, 0] += own
        rows[2, 1] += own
        sums = rows * 5
        return PerplexityMatrix(
            ("a", "b"),
            ("a", "b"),
            sums.sum(-1) / 30,
            tokens.sum(1),
            window_sums=sums,
            window_tokens=tokens,
        )

    lape = matrix(torch.full((6,), 1.0, dtype=torch.float64))
    report = EvaluationReport(lape, (matrix(v),), n_boot=400, seed=0)
    abs_est = report.intervals().random_mean_abs_selectivity
    assert abs_est is not None and abs_est.value == pytest.approx(0.0, abs=1e-12)
    assert abs_est.low is not None and abs_est.low > abs_est.value
    assert "lies outside its own percentile interval" in report.to_markdown()
    assert "lies outside" not in EvaluationReport(lape, (lape,), n_boot=400).to_markdown()
