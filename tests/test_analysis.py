"""Split-half stability and neuron cards, on tiny models."""

import json

import pytest
import torch
from tiny_models import CORPUS, hf_down_projection, hf_mlp_modules

from tl_lape.collection.engine import collect_activation_stats
from tl_lape.errors import LapeError
from tl_lape.experiments.analysis import (
    NeuronCard,
    StabilityReport,
    neuron_card,
    neuron_cards,
    split_corpus,
    split_half_jaccard,
    split_half_stability,
)
from tl_lape.neurons import LanguageNeurons
from tl_lape.selection import identify_language_neurons


def test_split_corpus_is_a_seeded_partition():
    a, b = split_corpus(CORPUS, seed=3)
    for lang, texts in CORPUS.items():
        assert sorted(a[lang] + b[lang]) == sorted(texts)
        assert abs(len(a[lang]) - len(b[lang])) <= 1
    again = split_corpus(CORPUS, seed=3)
    assert again == (a, b)
    ids = torch.arange(11)
    ta, tb = split_corpus({"en": ids})
    assert torch.equal(torch.cat([ta["en"], tb["en"]]), ids)


def test_split_half_jaccard_matches_set_oracle():
    g = torch.Generator().manual_seed(0)
    ma = torch.rand(3, 2, 16, generator=g) < 0.3
    mb = torch.rand(3, 2, 16, generator=g) < 0.3
    langs = ["a", "b", "c"]
    a, b = LanguageNeurons.from_masks(ma, langs), LanguageNeurons.from_masks(mb, langs)
    jac = split_half_jaccard(a, b)
    for k in range(3):
        sa = {tuple(x) for x in torch.nonzero(ma[k]).tolist()}
        sb = {tuple(x) for x in torch.nonzero(mb[k]).tolist()}
        assert float(jac[k]) == pytest.approx(len(sa & sb) / len(sa | sb))
    assert torch.equal(split_half_jaccard(a, a), torch.ones(3, dtype=torch.float64))
    empty = LanguageNeurons.from_masks(torch.zeros(1, 1, 4, dtype=torch.bool), ["x"])
    assert torch.isnan(split_half_jaccard(empty, empty)).all()


def test_split_half_stability(llama):
    report = split_half_stability(llama.bridge, CORPUS, top_rate=0.1, seq_len=16, progress=False)
    assert isinstance(report, StabilityReport)
    assert report.languages == tuple(CORPUS)
    valid = ~torch.isnan(report.jaccard)
    assert ((report.jaccard[valid] >= 0) & (report.jaccard[valid] <= 1)).all()
    # Recompute by hand from the same split.
    half_a, half_b = split_corpus(CORPUS, seed=0)
    sets = [
        identify_language_neurons(
            collect_activation_stats(llama.bridge, h, seq_len=16, progress=False), top_rate=0.1
        )
        for h in (half_a, half_b)
    ]
    assert torch.allclose(report.jaccard.nan_to_num(-1), split_half_jaccard(*sets).nan_to_num(-1))
    assert report.counts_a.tolist() == list(sets[0].counts().values())
    assert "Jaccard" in report.to_markdown()
    json.dumps(report.to_dict())


def test_neuron_card_oracles(llama, stats):
    hf = llama.hf_model()
    layer, index = 1, 5
    card = neuron_card(llama.bridge, layer, index, stats=stats, corpus=CORPUS, k=4)
    assert isinstance(card, NeuronCard)
    # Promoted tokens: the down-projection column through the unembedding, from the HF weights.
    direction = hf_down_projection(hf_mlp_modules(hf)[layer]).weight[:, index]
    logits = hf.lm_head.weight @ direction  # d_vocab
    expected = torch.topk(logits, 4)
    tok = llama.bridge.tokenizer
    assert [t for t, _ in card.promoted] == [tok.decode([int(i)]) for i in expected.indices]
    assert [v for _, v in card.promoted] == pytest.approx(expected.values.tolist(), abs=1e-5)
    lowest = torch.topk(-logits, 4)
    assert [v for _, v in card.suppressed] == pytest.approx((-lowest.values).tolist(), abs=1e-5)
    # Activation probabilities come from the statistics.
    assert card.probabilities == pytest.approx(
        {
            lang: float(stats.probabilities[layer, index, k])
            for k, lang in enumerate(stats.languages)
        }
    )
    # Top activations: sorted, and the largest equals the maximum of silu(hook_pre) over the corpus.
    values = [v for *_, v in card.top_activations]
    assert values == sorted(values, reverse=True) and len(values) == 4
    from tl_lape.collection.windows import token_windows

    best = -float("inf")
    for texts in CORPUS.values():
        windows = token_windows(llama.bridge, texts, seq_len=128, max_tokens=4096)
        _, cache = llama.bridge.run_with_cache(windows, names_filter=f"blocks.{layer}.mlp.hook_pre")
        acts = torch.nn.functional.silu(cache[f"blocks.{layer}.mlp.hook_pre"][:, 1:, index])
        best = max(best, float(acts.max()))
    assert values[0] == pytest.approx(best, abs=1e-5)
    text = card.to_markdown()
    assert f"Neuron {layer}.{index}" in text and "promotes" in text
    json.dumps(card.to_dict())


def test_neuron_cards_membership(llama, stats):
    neurons = identify_language_neurons(stats, top_rate=0.1)
    lang = next(lang for lang, n in neurons.counts().items() if n > 0)
    layer = next(layer for layer in range(2) if neurons.indices(lang, layer).numel())
    index = int(neurons.indices(lang, layer)[0])
    cards = neuron_cards(llama.bridge, [(layer, index), (0, 0)], neurons=neurons, k=2)
    assert lang in cards[0].member_of
    assert cards[0].top_activations == () and cards[0].probabilities == {}


def test_bad_input(llama, stats):
    with pytest.raises(LapeError, match=r"neuron \(2, 0\) is outside"):
        neuron_card(llama.bridge, 2, 0)
    with pytest.raises(LapeError, match="k must be a positive int"):
        neuron_card(llama.bridge, 0, 0, k=0)
    with pytest.raises(LapeError, match="needs at least 2"):
        split_corpus({"en": ["only one"]})
    with pytest.raises(LapeError, match="not one string"):
        split_corpus({"en": "a string"})
    a = LanguageNeurons.from_indices({"en": {}}, n_layers=1, d_mlp=4)
    b = LanguageNeurons.from_indices({"fr": {}}, n_layers=1, d_mlp=4)
    with pytest.raises(LapeError, match="the two neuron sets differ"):
        split_half_jaccard(a, b)
