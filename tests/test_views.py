"""Token views and neuron cards as HTML: the numbers shown are the model's, the HTML is
well-formed and escaped, CircuitsVis is optional, and a browser renders it."""

import html
import sys
import types
from html.parser import HTMLParser

import pytest
import torch
from test_html import well_formed_text
from tiny_models import SENTENCES

from tl_lape._adapter import adapt
from tl_lape.collection.engine import collect_activation_stats
from tl_lape.collection.windows import token_windows
from tl_lape.errors import LapeError
from tl_lape.experiments.analysis import neuron_card
from tl_lape.experiments.views import (
    TokenView,
    TokenViewGrid,
    token_view,
    token_views_side_by_side,
)
from tl_lape.neurons import LanguageNeurons

FR, ZH = SENTENCES["fr"][0], SENTENCES["zh"][0]


def _set(model) -> LanguageNeurons:
    """A hand-made set with many neurons per language (so that some fire on every text)."""
    adapter = adapt(model)
    d = adapter.d_mlp
    return LanguageNeurons.from_indices(
        {
            "fr": {0: list(range(0, d, 3)), adapter.n_layers - 1: list(range(1, d, 5))},
            "zh": {0: list(range(2, d, 4))},
            "en": {},
        },
        n_layers=adapter.n_layers,
        d_mlp=d,
    )


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, tiny_model):
    return tiny_model(request.param).bridge


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("llama").bridge


def _no_circuitsvis(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "circuitsvis", None)
    monkeypatch.setitem(sys.modules, "circuitsvis.tokens", None)


def test_counts_and_activations_equal_a_direct_recomputation(model) -> None:
    neurons = _set(model)
    adapter = adapt(model)
    count = token_view(model, FR, neurons, "fr", backend="html", identify=False)
    act = token_view(model, FR, neurons, "fr", measure="activation", backend="html", identify=False)
    tokens = model.to_tokens(FR)  # BOS + the text
    assert list(count.token_ids) == tokens[0, 1:].tolist()
    assert "".join(count.tokens) == FR
    assert len(count.tokens) == len(count.values) == len(count.top_neurons)
    names = [adapter.hook_pre(layer) for layer in range(adapter.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    for pos in (0, 1, len(count.tokens) // 2, len(count.tokens) - 1):
        n, total, firing = 0, 0.0, []
        for layer in range(adapter.n_layers):
            idx = neurons.indices("fr", layer)
            pre = cache[adapter.hook_pre(layer)][0, pos + 1, idx]  # +1: the BOS
            n += int((pre > 0).sum())
            total += float(adapter.act_fn(pre).sum())
            firing += [
                (float(adapter.act_fn(p)), layer, int(i))
                for p, i in zip(pre, idx, strict=True)
                if p > 0
            ]
        assert count.values[pos] == n
        assert act.values[pos] == pytest.approx(total, abs=1e-4)
        expected = [(layer, i) for _, layer, i in sorted(firing, reverse=True)[:3]]
        assert [(layer, i) for layer, i, _ in count.top_neurons[pos]] == expected
    assert max(count.values) > 0  # the test looks at neurons that do fire


def test_view_html_is_well_formed_escaped_and_scriptless(llama, monkeypatch) -> None:
    _no_circuitsvis(monkeypatch)
    text = 'Le <b>chat</b> & "la" pluie'
    view = token_view(llama, text, _set(llama), "fr", identify=False)
    page = view._repr_html_()
    assert page == view.to_html()
    shown = well_formed_text(page)
    assert "<b>" not in page and "&lt;" in page and "&amp;" in page and "&quot;" in page
    assert "<script" not in page  # the fallback: inline HTML only
    assert page.count('class="tok"') == len(view.tokens)
    assert "Token view: fr neurons firing" in shown
    # Each token's tooltip names the token, its value and the top neurons.
    k = max(range(len(view.values)), key=lambda i: view.values[i])
    layer, index, _ = view.top_neurons[k][0]
    assert f"fr neurons firing: {int(view.values[k])}" in page
    assert f"{layer}.{index} (" in page
    full = view.to_html(standalone=True)
    assert full.startswith("<!DOCTYPE html>")
    well_formed_text(full)


def test_circuitsvis_is_optional(llama, monkeypatch) -> None:
    neurons = _set(llama)
    _no_circuitsvis(monkeypatch)
    view = token_view(llama, FR, neurons, "fr", identify=False)  # backend="auto"
    assert "<script" not in view.to_html()
    with pytest.raises(LapeError, match=r"pip install 'tl-lape\[views\]'"):
        token_view(llama, FR, neurons, "fr", backend="circuitsvis")
    # With CircuitsVis present, "auto" draws with colored_tokens (a stand-in module here).
    calls = []

    def colored_tokens(tokens, values, min_value=None, max_value=None):
        calls.append((tokens, values, min_value, max_value))
        return types.SimpleNamespace(local_src='<div id="cv"></div><script>draw()</script>')

    fake = types.ModuleType("circuitsvis.tokens")
    fake.colored_tokens = colored_tokens  # type: ignore[attr-defined]
    package = types.ModuleType("circuitsvis")
    package.tokens = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "circuitsvis", package)
    monkeypatch.setitem(sys.modules, "circuitsvis.tokens", fake)
    page = view.to_html()
    assert '<div id="cv"></div>' in page
    assert calls == [(list(view.tokens), list(view.values), 0.0, view.color_scale()[1])]
    assert "<script" not in view.to_html(backend="html")


def test_side_by_side_colours_each_text_by_its_language(llama, monkeypatch) -> None:
    _no_circuitsvis(monkeypatch)
    neurons = _set(llama)
    grid = token_views_side_by_side(llama, {"fr": FR, "zh": ZH}, neurons, identify=False)
    assert isinstance(grid, TokenViewGrid) and all(isinstance(v, TokenView) for v in grid.views)
    assert [v.language for v in grid.views] == ["fr", "zh"]
    alone = token_view(llama, ZH, neurons, "zh", identify=False)
    assert grid.views[1].values == alone.values
    text = well_formed_text(grid._repr_html_())
    assert "coloured by zh neurons" in text
    one = token_views_side_by_side(llama, {"fr": FR, "zh": ZH}, neurons, language="fr")
    assert [v.language for v in one.views] == ["fr", "fr"]
    assert one.views[0].color_scale() == one.views[1].color_scale()  # shared by default


def test_bad_inputs_say_what_to_do(llama) -> None:
    neurons = _set(llama)
    with pytest.raises(LapeError, match=r"language 'de' is not in the neuron set; pass one of"):
        token_view(llama, FR, neurons, "de")
    with pytest.raises(LapeError, match=r"measure must be one of .*received 'rate'"):
        token_view(llama, FR, neurons, "fr", measure="rate")
    with pytest.raises(LapeError, match=r"backend must be one of .*received 'svg'"):
        token_view(llama, FR, neurons, "fr", backend="svg")
    with pytest.raises(LapeError, match="text must be a non-empty string; received ''"):
        token_view(llama, "", neurons, "fr")
    with pytest.raises(LapeError, match="texts must be a non-empty mapping"):
        token_views_side_by_side(llama, {}, neurons)
    other = LanguageNeurons.from_indices({"fr": {0: [1]}}, n_layers=7, d_mlp=4)
    with pytest.raises(LapeError):
        token_view(llama, FR, other, "fr")


def test_long_text_is_truncated_and_says_so(llama) -> None:
    view = token_view(llama, FR * 3, _set(llama), "fr", max_tokens=5, identify=False)
    assert len(view.tokens) == 5 and view.truncated
    assert "(truncated)" in view.to_html(backend="html")


def test_neuron_card_promoted_tokens_and_html(llama) -> None:
    corpus = {lang: SENTENCES[lang] * 2 for lang in ("en", "fr", "zh")}
    stats = collect_activation_stats(llama, corpus, seq_len=16, progress=False)
    layer, index = 1, 5
    card = neuron_card(llama, layer, index, stats=stats, corpus=corpus, k=10)
    # Promoted and suppressed: W_out row through W_U, computed directly.
    logits = llama.W_out[layer, index].float() @ llama.W_U.float()
    tok = llama.tokenizer
    up, down = torch.topk(logits, 10), torch.topk(-logits, 10)
    assert [t for t, _ in card.promoted] == [tok.decode([int(i)]) for i in up.indices]
    assert [v for _, v in card.promoted] == pytest.approx(up.values.tolist(), abs=1e-5)
    assert [t for t, _ in card.suppressed] == [tok.decode([int(i)]) for i in down.indices]
    assert [v for _, v in card.suppressed] == pytest.approx((-down.values).tolist(), abs=1e-5)
    # Per language: top activations and the firing rate on the corpus, recomputed.
    adapter = adapt(llama)
    for lang, texts in corpus.items():
        windows = token_windows(llama, texts, seq_len=128, max_tokens=4096)
        _, cache = llama.run_with_cache(windows, names_filter=adapter.hook_pre(layer))
        pre = cache[adapter.hook_pre(layer)][:, 1:, index]
        assert card.corpus_rates[lang] == pytest.approx(float((pre > 0).double().mean()))
        best = float(adapter.act_fn(pre).max())
        assert card.top_by_language[lang][0][2] == pytest.approx(best, abs=1e-5)
    page = card._repr_html_()
    text = well_formed_text(page)
    assert f"Neuron {layer}.{index}" in text and "fires most on: zh" in text
    assert page.count("<svg") == 1 and "<script" not in page  # the per-language bar chart
    for token, _ in (*card.promoted, *card.suppressed):
        shown = html.escape(token.replace("\n", "\\n").replace("`", "'"))
        assert f'<td class="l">{shown}</td>' in page


def test_browser_renders_french_and_chinese_side_by_side(
    llama, tmp_path, monkeypatch, browser
) -> None:
    _no_circuitsvis(monkeypatch)
    grid = token_views_side_by_side(llama, {"fr": FR, "zh": ZH}, _set(llama), identify=False)
    page = tmp_path / "views.html"
    page.write_text(grid.to_html(standalone=True), encoding="utf-8")
    shown_page = browser(page, png=tmp_path / "views.png", size="900,400")
    assert shown_page.console == []

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []

        def handle_data(self, data: str) -> None:
            self.parts.append(data)

    parser = Text()
    parser.feed(shown_page.dom)
    shown = "".join(parser.parts)
    assert FR in shown and ZH in shown  # every token in place, in order
    assert shown_page.dom.count('class="tok"') == sum(len(v.tokens) for v in grid.views)
