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
    bootstrap_selection,
    collect_shards,
    deal_corpus,
    neuron_card,
    neuron_cards,
    split_corpus,
    split_half_jaccard,
    split_half_stability,
)
from tl_lape.neurons import LanguageNeurons
from tl_lape.selection import identify_language_neurons
from tl_lape.stats import ActivationStats


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


# --------------------------------------------------------------------------- bootstrap stability


def _shards(seed: int, n: int = 6) -> list[ActivationStats]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        counts = torch.randint(0, 40, (2, 40, 3), generator=g)
        counts[0, 5] = torch.tensor([45, 0, 0])  # strongly en-specific in every shard
        out.append(ActivationStats.from_counts(counts, [50] * 3, ["en", "fr", "zh"]))
    return out


def test_deal_corpus_partitions_every_language():
    parts = deal_corpus(CORPUS, 3, seed=1)
    assert len(parts) == 3
    for lang, texts in CORPUS.items():
        dealt = [t for part in parts for t in part[lang]]
        assert sorted(dealt) == sorted(texts) and len(dealt) == len(texts)
    assert deal_corpus(CORPUS, 3, seed=1) == parts
    pieces = deal_corpus({"en": torch.arange(10)}, 3)
    assert torch.equal(torch.cat([p["en"] for p in pieces]), torch.arange(10))
    with pytest.raises(LapeError, match="needs at least 4"):
        deal_corpus({"en": ["a", "b", "c"]}, 4)


def test_bootstrap_selection_identical_shards_are_perfectly_stable():
    shard = _shards(0, n=1)[0]
    stability = bootstrap_selection([shard] * 4, n_boot=6, top_rate=0.05)
    full = identify_language_neurons(shard, top_rate=0.05)  # 4 equal shards: same p
    assert torch.equal(stability.neurons.masks(), full.masks())
    assert torch.equal(stability.frequency, full.masks().to(torch.float64))
    valid = ~torch.isnan(stability.jaccard_to_full)
    assert bool((stability.jaccard_to_full[valid] == 1).all())
    assert stability.self_jaccard.shape == (3, 3)
    assert all(stability.stable()[lang] for lang in ("en",))


def test_bootstrap_selection_frequency_and_report():
    shards = _shards(1)
    stability = bootstrap_selection(shards, n_boot=20, seed=3, top_rate=0.05)
    again = bootstrap_selection(shards, n_boot=20, seed=3, top_rate=0.05)
    assert torch.equal(stability.frequency, again.frequency)  # seeded
    assert float(stability.frequency[0, 0, 5]) == 1.0  # the en-specific neuron, every time
    assert bool(((stability.frequency >= 0) & (stability.frequency <= 1)).all())
    # frequency is the mean of the replicates' masks: its total is the mean replicate size
    assert float(stability.frequency.sum()) == pytest.approx(
        float(stability.sizes.sum(1).to(torch.float64).mean())
    )
    d = stability.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["per_language"]["en"]["neurons"] == stability.neurons.counts()["en"]
    assert [5, 1.0] in [list(p) for p in d["selected_frequency"]["en"]["0"]]
    text = stability.to_markdown()
    assert "| en |" in text and "expected self-Jaccard" in text


def test_bootstrap_selection_refuses_bad_input():
    shards = _shards(0, n=2)
    with pytest.raises(LapeError, match="at least 2 ActivationStats"):
        bootstrap_selection(shards[:1])
    other = ActivationStats.from_counts(
        torch.zeros(2, 40, 2, dtype=torch.long), [5, 5], ["en", "fr"]
    )
    with pytest.raises(LapeError, match="shard 1 has languages"):
        bootstrap_selection([shards[0], other])
    with pytest.raises(LapeError, match=r"n_boot must be an int from 2 to 100000 .*; received 1"):
        bootstrap_selection(shards, n_boot=1)


def test_collect_shards_split_the_budget(llama):
    shards = collect_shards(
        llama.bridge, CORPUS, n_shards=2, max_tokens_per_language=60, seq_len=16, progress=False
    )
    assert len(shards) == 2
    for shard in shards:
        assert bool((shard.n_tokens <= 30).all()) and bool((shard.n_tokens > 0).all())
    with pytest.raises(LapeError, match="gives each of 8 shards no tokens"):
        collect_shards(llama.bridge, CORPUS, n_shards=8, max_tokens_per_language=7)
