"""Perplexity under deactivation, random matched controls and selectivity, on tiny models."""

import json
import math

import pytest
import torch
from matplotlib.figure import Figure
from tiny_models import CORPUS, hf_down_projection, hf_mlp_modules

from tl_lape.collection.windows import token_windows
from tl_lape.errors import LapeError
from tl_lape.experiments.evaluation import (
    NO_INTERVENTION,
    EvaluationReport,
    PerplexityMatrix,
    perplexity_matrix,
    run_evaluation,
    selectivity,
)
from tl_lape.neurons import LanguageNeurons, random_matched_neurons

SEQ_LEN = 16
BUDGET = 120


def _matrix(model, neurons, **kwargs):
    return perplexity_matrix(
        model,
        neurons,
        CORPUS,
        seq_len=SEQ_LEN,
        max_tokens_per_language=BUDGET,
        progress=False,
        **kwargs,
    )


def test_empty_neuron_set_equals_no_intervention_row_exactly(llama):
    empty = LanguageNeurons.from_masks(
        torch.zeros(len(CORPUS), 2, 64, dtype=torch.bool), list(CORPUS)
    )
    m = _matrix(llama.bridge, empty)
    assert m.rows == (NO_INTERVENTION, *CORPUS)
    assert torch.equal(m.nll[1:], m.nll[0:1].expand(len(CORPUS), -1))
    assert torch.equal(m.delta, torch.zeros_like(m.delta))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_deactivation_rows_equal_zeroed_down_projection(tiny_model, arch):
    """Oracle: each row equals the NLL of an HF copy whose down-projection columns are zero."""
    tiny = tiny_model(arch)
    d_mlp = 64
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(2, 2, d_mlp, generator=g) < 0.2
    langs = ["en", "fr"]
    neurons = LanguageNeurons.from_masks(masks, langs)
    m = _matrix(tiny.bridge, neurons, languages=langs)
    assert m.n_tokens.tolist() == [
        token_windows(tiny.bridge, CORPUS[lang], seq_len=SEQ_LEN, max_tokens=BUDGET).numel()
        - token_windows(tiny.bridge, CORPUS[lang], seq_len=SEQ_LEN, max_tokens=BUDGET).shape[0]
        for lang in langs
    ]
    for row, lang in enumerate([None, *langs]):
        hf = tiny.hf_model()
        if lang is not None:
            with torch.no_grad():
                for layer, mlp in enumerate(hf_mlp_modules(hf)):
                    down = hf_down_projection(mlp)
                    cols = neurons.indices(lang, layer)
                    if arch == "gpt2":  # Conv1D: weight is [d_mlp, d_model]
                        down.weight[cols, :] = 0.0
                    else:
                        down.weight[:, cols] = 0.0
        for k, evaluated in enumerate(langs):
            windows = token_windows(
                tiny.bridge, CORPUS[evaluated], seq_len=SEQ_LEN, max_tokens=BUDGET
            )
            with torch.no_grad():
                logits = hf(windows).logits
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)
            )
            assert float(m.nll[row, k]) == pytest.approx(float(nll), abs=1e-4)


def test_matrix_properties_and_markdown(llama, neurons):
    m = _matrix(llama.bridge, neurons, deactivate=["fr", "en"], languages=["en", "fr", "zh"])
    assert m.deactivated == ("fr", "en")
    assert m.nll.shape == (3, 3) and m.nll.dtype == torch.float64
    assert torch.allclose(m.perplexity, torch.exp(m.nll))
    assert torch.allclose(m.delta, m.nll[1:] - m.nll[0])
    own = m.own_rise()
    assert float(own[0]) == float(m.delta[0, 1]) and float(own[1]) == float(m.delta[1, 0])
    text = m.to_markdown()
    assert text.count("\n") == 4 and "**" in text
    json.dumps(m.to_dict())
    assert isinstance(m.plot(), Figure)


def test_selectivity_matches_loop_oracle():
    g = torch.Generator().manual_seed(0)
    langs = ("a", "b", "c", "d")
    nll = torch.rand(1 + 3, 4, generator=g, dtype=torch.float64)
    m = PerplexityMatrix(("c", "a", "d"), langs, nll, torch.tensor([10, 10, 10, 10]))
    sel = selectivity(m)
    for i, lang in enumerate(m.deactivated):
        j = langs.index(lang)
        rises = [float(nll[1 + i, k] - nll[0, k]) for k in range(4)]
        others = [r for k, r in enumerate(rises) if k != j]
        assert float(sel[i]) == pytest.approx(rises[j] - sum(others) / len(others))
    largest = m.own_is_largest()
    for i, lang in enumerate(m.deactivated):
        j = langs.index(lang)
        assert bool(largest[i]) == bool(m.delta[i, j] == m.delta[i].max())


def test_selectivity_nan_for_language_not_evaluated():
    m = PerplexityMatrix(
        ("x",), ("a", "b"), torch.zeros(2, 2, dtype=torch.float64), torch.tensor([1, 1])
    )
    assert math.isnan(float(selectivity(m)[0]))
    assert not bool(m.own_is_largest()[0])


def test_random_sets_match_size_and_layers_exactly(neurons):
    for seed in range(3):
        control = random_matched_neurons(neurons, seed=seed)
        assert control.languages == neurons.languages
        assert torch.equal(control.counts_per_layer(), neurons.counts_per_layer())
        assert not (control.union() & neurons.union()).any()


def test_random_sets_are_seeded(neurons):
    assert random_matched_neurons(neurons, seed=4) == random_matched_neurons(neurons, seed=4)
    assert random_matched_neurons(neurons, seed=4) != random_matched_neurons(neurons, seed=5)


def test_random_sets_without_exclusion_may_reuse_selected():
    ln = LanguageNeurons.from_indices({"en": {0: [0, 1, 2, 3]}}, n_layers=1, d_mlp=4)
    control = random_matched_neurons(ln, exclude_selected=False)
    assert control == ln  # all 4 of 4 neurons: the only possible draw
    with pytest.raises(LapeError, match="cannot draw 4 random neurons"):
        random_matched_neurons(ln)


def test_run_evaluation_report(llama, neurons, stats):
    report = run_evaluation(
        llama.bridge,
        neurons,
        CORPUS,
        stats=stats,
        n_random=2,
        seq_len=SEQ_LEN,
        max_tokens_per_language=BUDGET,
        progress=False,
    )
    assert isinstance(report, EvaluationReport)
    assert len(report.random) == 2 and set(report.baselines) == {"lap", "lave"}
    # All matrices share the no-intervention row and the windows.
    for m in (*report.random, *report.baselines.values()):
        assert torch.equal(m.nll[0], report.lape.nll[0])
        assert torch.equal(m.n_tokens, report.lape.n_tokens)
    # The random draws are those of random_matched_neurons with seeds 0 and 1.
    again = _matrix(llama.bridge, random_matched_neurons(neurons, seed=1))
    assert torch.equal(again.nll, report.random[1].nll)
    summary = report.summary()
    assert 0 <= summary["n_own_largest"] <= len(neurons.languages)
    assert summary["selectivity_ratio"] == pytest.approx(
        float(report.selectivity().mean()) / float(report.random_selectivity().abs().mean())
    )
    text = report.to_markdown()
    assert "LAP selectivity" in text and "ratio" in text  # the label, upper-cased
    assert set(report.neuron_counts) == {"lape", "lap", "lave"}
    # By default the other selectors get LAPE's size per language (where they have candidates).
    for name in ("lap", "lave"):
        for lang, n in report.neuron_counts[name].items():
            assert n <= report.neuron_counts["lape"][lang]
    assert report.neuron_counts["lap"] == report.neuron_counts["lape"]
    assert report.metadata["selector_sizes"] == "language"
    assert "as many neurons per language as LAPE's" in text
    json.dumps(report.to_dict())
    figures = report.figures()
    assert all(isinstance(f, Figure) for f in figures.values())


def test_token_windows_layout(llama):
    w = token_windows(llama.bridge, CORPUS["fr"], seq_len=SEQ_LEN, max_tokens=50)
    bos = llama.bridge.tokenizer.bos_token_id
    assert w.shape[1] == SEQ_LEN and w.dtype == torch.int64
    assert (w[:, 0] == bos).all()
    assert w.shape[0] == max(15, 50) // 15
    ids = torch.arange(3, 100)
    w2 = token_windows(llama.bridge, ids, seq_len=SEQ_LEN)
    assert torch.equal(w2[:, 1:].flatten(), ids[: w2.shape[0] * 15])


def test_bad_input(llama, neurons):
    with pytest.raises(LapeError, match="unknown language"):
        _matrix(llama.bridge, neurons, languages=["en", "xx"])
    with pytest.raises(LapeError, match=r"unknown language\(s\) \['xx'\] in deactivate"):
        _matrix(llama.bridge, neurons, deactivate=["xx"])
    other = LanguageNeurons.from_indices({"en": {0: [1]}}, n_layers=3, d_mlp=64)
    with pytest.raises(LapeError, match="n_layers=3"):
        _matrix(llama.bridge, other)
    with pytest.raises(LapeError, match="less than one window"):
        perplexity_matrix(llama.bridge, neurons, {"en": ["Hi"]}, seq_len=64, progress=False)
    with pytest.raises(LapeError, match="not one string"):
        perplexity_matrix(llama.bridge, neurons, {"en": "Hello there"}, progress=False)
    with pytest.raises(LapeError, match="seq_len must be an int >= 2"):
        token_windows(llama.bridge, CORPUS["en"], seq_len=1)
    with pytest.raises(LapeError, match="n_random must be an int >= 0"):
        run_evaluation(llama.bridge, neurons, CORPUS, n_random=-1)
    with pytest.raises(LapeError, match="unknown selectors"):
        run_evaluation(llama.bridge, neurons, CORPUS, selectors=["XYZ"])
    with pytest.raises(LapeError, match=r"unknown selectors \['LAP'\]; known: \['lap', 'lave'\]"):
        run_evaluation(llama.bridge, neurons, CORPUS, selectors=["LAP"])  # one spelling
    with pytest.raises(LapeError, match="deactivate must be a sequence of language codes"):
        _matrix(llama.bridge, neurons, deactivate="en")  # a sequence or None, never a string
    with pytest.raises(LapeError, match="seed must be an integer"):
        run_evaluation(llama.bridge, neurons, CORPUS, seed=-1)
    with pytest.raises(LapeError, match="shape"):
        PerplexityMatrix(
            ("en",),
            ("en",),
            torch.zeros(3, 1, dtype=torch.float64),
            torch.ones(1, dtype=torch.int64),
        )


def test_one_default_token_budget(capsys):
    """The API and the CLI's evaluate share DEFAULT_MAX_TOKENS_PER_LANGUAGE."""
    import inspect

    from tl_lape.cli import main
    from tl_lape.experiments.evaluation import DEFAULT_MAX_TOKENS_PER_LANGUAGE

    for fn in (run_evaluation, perplexity_matrix):
        default = inspect.signature(fn).parameters["max_tokens_per_language"].default
        assert default == DEFAULT_MAX_TOKENS_PER_LANGUAGE
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DEFAULT_MAX_TOKENS_PER_LANGUAGE})" in help_text


def test_one_progress_bar_for_the_whole_evaluation(llama, neurons, stats, capsys) -> None:
    """One bar over every (row, language) cell, the current cell in its postfix; none at all
    without progress."""
    corpus = {lang: texts for lang, texts in CORPUS.items() if lang in neurons.languages}
    run_evaluation(
        llama.bridge,
        neurons,
        corpus,
        stats=stats,
        n_random=1,
        selectors=(),
        seq_len=SEQ_LEN,
        max_tokens_per_language=64,
        progress=True,
    )
    err = capsys.readouterr().err
    n_langs = len(corpus)
    cells = (1 + 2 * len(neurons.languages)) * n_langs  # (none), LAPE and one random set
    final = [line for line in err.replace("\r", "\n").splitlines() if f"{cells}/{cells}" in line]
    assert final and all(line.startswith("evaluation:") for line in final)
    assert "deactivate random0:" in err  # the postfix names the set and language
    assert not any(line.startswith("deactivate") for line in err.replace("\r", "\n").splitlines())
    run_evaluation(
        llama.bridge,
        neurons,
        corpus,
        stats=stats,
        n_random=1,
        selectors=(),
        seq_len=SEQ_LEN,
        max_tokens_per_language=64,
        progress=False,
    )
    assert capsys.readouterr().err == ""
