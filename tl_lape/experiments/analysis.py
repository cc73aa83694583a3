"""Analysis of language neurons: how stable the selection is, and what a neuron does.

- **Split-half stability** (:func:`split_half_stability`): select the neurons twice, on two
  disjoint halves of the corpus, and measure the Jaccard overlap of each language's two sets.
  A low overlap means the corpus is too small for the selection to be trusted.
- **Neuron cards** (:func:`neuron_card`): for one neuron, the tokens its output direction
  promotes and suppresses through the unembedding (``W_out[layer, neuron] @ W_U``, the
  neuron's direct effect on the logits, without the final normalisation's scale), its
  activation probability per language, and the tokens of a corpus on which it fires most.

Example (on a tiny model and corpus):
    >>> report = split_half_stability(model, corpus, top_rate=0.1, seq_len=16, progress=False)
    >>> print(report.to_markdown())  # doctest: +ELLIPSIS
    ### Split-half stability
    ...
    >>> card = neuron_card(model, 1, 5, stats=stats, corpus=corpus, k=3, seq_len=16)
    >>> print(card.to_markdown())  # doctest: +ELLIPSIS
    #### Neuron 1.5 (no language set given)
    ...
"""

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_lape._adapter import adapt
from tl_lape.checks import check_positive_int, check_seed
from tl_lape.collection.windows import token_windows
from tl_lape.errors import LapeError
from tl_lape.html import bar_chart, colour, escape, fragment, table, text_colour
from tl_lape.neurons import LanguageNeurons
from tl_lape.stats import ActivationStats

__all__ = [
    "NeuronCard",
    "StabilityReport",
    "neuron_card",
    "neuron_cards",
    "split_corpus",
    "split_half_jaccard",
    "split_half_stability",
]


# ============================================================================ split-half stability


def split_corpus(
    corpus: Mapping[str, Iterable[str] | Tensor], *, seed: int = 0
) -> tuple[dict[str, list[str] | Tensor], dict[str, list[str] | Tensor]]:
    """Split every language's text into two disjoint halves.

    Lists of texts are shuffled (seeded) and dealt alternately, so both halves cover the whole
    corpus; a 1-D tensor of token ids is cut in the middle.

    Example:
        >>> a, b = split_corpus({"en": ["one", "two", "three", "four"]}, seed=0)
        >>> sorted(a["en"] + b["en"])
        ['four', 'one', 'three', 'two']
    """
    check_seed(seed)
    half_a: dict[str, list[str] | Tensor] = {}
    half_b: dict[str, list[str] | Tensor] = {}
    for k, (lang, texts) in enumerate(corpus.items()):
        if isinstance(texts, Tensor):
            middle = texts.shape[0] // 2
            half_a[lang], half_b[lang] = texts[:middle], texts[middle:]
            continue
        if isinstance(texts, str):
            raise LapeError(
                f"corpus[{lang!r}] must be a list of texts, not one string; wrap it in a list"
            )
        items = list(texts)
        if len(items) < 2:
            raise LapeError(
                f"corpus[{lang!r}] has {len(items)} text(s); a split in two halves needs at "
                "least 2 (split long texts into paragraphs)"
            )
        generator = torch.Generator().manual_seed(seed + 7919 * k)
        order = torch.randperm(len(items), generator=generator).tolist()
        half_a[lang] = [items[i] for i in order[0::2]]
        half_b[lang] = [items[i] for i in order[1::2]]
    return half_a, half_b


def split_half_jaccard(a: LanguageNeurons, b: LanguageNeurons) -> Float[Tensor, " lang"]:
    """Per language, the Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of two sets' neurons.

    Both sets must have the same languages and shape; a language empty in both gets NaN.

    Example:
        >>> a = LanguageNeurons.from_indices({"en": {0: [1, 2]}}, n_layers=1, d_mlp=4)
        >>> b = LanguageNeurons.from_indices({"en": {0: [2, 3]}}, n_layers=1, d_mlp=4)
        >>> split_half_jaccard(a, b)
        tensor([0.3333], dtype=torch.float64)
    """
    if a.languages != b.languages or (a.n_layers, a.d_mlp) != (b.n_layers, b.d_mlp):
        raise LapeError(
            f"the two neuron sets differ: languages {a.languages} vs {b.languages}, shape "
            f"({a.n_layers}, {a.d_mlp}) vs ({b.n_layers}, {b.d_mlp}); compare sets selected on "
            "the same model and languages"
        )
    ma, mb = a.masks(), b.masks()  # lang n_layers d_mlp
    inter = (ma & mb).flatten(1).sum(-1).to(torch.float64)  # lang
    union = (ma | mb).flatten(1).sum(-1).to(torch.float64)  # lang
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.full_like(inter, math.nan))


@dataclass(frozen=True)
class StabilityReport:
    """Split-half stability of a neuron selection.

    Attributes:
        languages: The languages.
        jaccard: Per language, the Jaccard overlap of the two halves' sets (float64).
        counts_a: Neurons per language selected on half A.
        counts_b: Neurons per language selected on half B.
        metadata: Settings (token budget, thresholds, seed).
    """

    languages: tuple[str, ...]
    jaccard: Float[Tensor, " lang"]
    counts_a: Int[Tensor, " lang"]
    counts_b: Int[Tensor, " lang"]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.languages) != self.jaccard.shape[0]:
            raise LapeError(
                f"StabilityReport: {len(self.languages)} languages but {self.jaccard.shape[0]} "
                "Jaccard values"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values."""
        return {
            "languages": list(self.languages),
            "jaccard": self.jaccard.tolist(),
            "counts_a": self.counts_a.tolist(),
            "counts_b": self.counts_b.tolist(),
            "metadata": dict(self.metadata),
        }

    def to_markdown(self) -> str:
        """A Markdown table of the Jaccard overlap per language."""
        tokens = self.metadata.get("max_tokens_per_language")
        lines = [
            "### Split-half stability",
            "",
            "Neurons selected separately on two disjoint halves of the corpus"
            + (f" (at most {tokens:,} tokens per language per half)" if tokens else "")
            + "; Jaccard overlap of each language's two sets.",
            "",
            "| language | neurons (half A) | neurons (half B) | Jaccard |",
            "| --- | ---: | ---: | ---: |",
        ]
        for k, lang in enumerate(self.languages):
            lines.append(
                f"| {lang} | {int(self.counts_a[k])} | {int(self.counts_b[k])} | "
                f"{float(self.jaccard[k]):.3f} |"
            )
        valid = ~torch.isnan(self.jaccard)
        if valid.any():
            lines += ["", f"Mean Jaccard: {float(self.jaccard[valid].mean()):.3f}."]
        return "\n".join(lines) + "\n"


def split_half_stability(
    model: Any,
    corpus: Mapping[str, Iterable[str] | Tensor],
    *,
    top_rate: float = 0.01,
    filter_rate: float = 0.95,
    activation_bar_ratio: float = 0.95,
    seq_len: int = 256,
    batch_size: int = 8,
    max_tokens_per_language: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> StabilityReport:
    """Select language neurons on two disjoint halves of ``corpus`` and compare the sets.

    Args:
        model: A TransformerLens model.
        corpus: ``{language: texts}`` (the selection corpus, e.g. the train split).
        top_rate: Selection threshold (see :func:`~tl_lape.selection.identify_language_neurons`).
        filter_rate: Selection threshold.
        activation_bar_ratio: Selection threshold.
        seq_len: Window length for the statistics.
        batch_size: Windows (sequences) per forward pass.
        max_tokens_per_language: Token budget per language *per half*.
        seed: Seed of the split (:func:`split_corpus`).
        progress: Show progress bars.

    Returns:
        A :class:`StabilityReport`.
    """
    from tl_lape.collection.engine import collect_activation_stats
    from tl_lape.selection import identify_language_neurons

    half_a, half_b = split_corpus(corpus, seed=seed)
    sets = []
    for half in (half_a, half_b):
        stats = collect_activation_stats(
            model,
            half,
            seq_len=seq_len,
            batch_size=batch_size,
            max_tokens_per_language=max_tokens_per_language,
            progress=progress,
        )
        sets.append(
            identify_language_neurons(
                stats,
                top_rate=top_rate,
                filter_rate=filter_rate,
                activation_bar_ratio=activation_bar_ratio,
            )
        )
    a, b = sets
    counts_a = torch.tensor([a.counts()[lang] for lang in a.languages], dtype=torch.int64)
    counts_b = torch.tensor([b.counts()[lang] for lang in b.languages], dtype=torch.int64)
    metadata = {
        "top_rate": top_rate,
        "filter_rate": filter_rate,
        "activation_bar_ratio": activation_bar_ratio,
        "seq_len": seq_len,
        "max_tokens_per_language": max_tokens_per_language,
        "seed": seed,
        "model_name": adapt(model, validate=False).model_name,
    }
    return StabilityReport(a.languages, split_half_jaccard(a, b), counts_a, counts_b, metadata)


# ============================================================================ neuron cards


@dataclass(frozen=True)
class NeuronCard:
    """What one MLP neuron does.

    Attributes:
        layer: The layer.
        neuron: The neuron's index in the layer.
        member_of: The languages whose neuron set holds it (empty if no set was given).
        promoted: ``(token, logit weight)`` of the tokens its output direction raises most.
        suppressed: The same for the tokens it lowers most.
        probabilities: Its activation probability per language (empty without statistics).
        top_activations: ``(language, context, token, activation)`` of the corpus positions
            where ``act_fn(hook_pre)`` is largest (empty without a corpus).
        top_by_language: Per language of the corpus, ``(context, token, activation)`` of its
            ``k`` positions where ``act_fn(hook_pre)`` is largest (empty without a corpus).
        corpus_rates: Per language of the corpus, the share of its tokens (BOS excluded) on
            which the neuron fires (``hook_pre > 0``, the paper's criterion), measured in the
            same pass (empty without a corpus).

    In a notebook the card shows itself as HTML (:meth:`to_html`): the firing rate per
    language as a bar chart (the statistics' probabilities, else the corpus rates), the
    promoted and suppressed tokens, and the top-activating tokens per language in context.
    """

    layer: int
    neuron: int
    member_of: tuple[str, ...] = ()
    promoted: tuple[tuple[str, float], ...] = ()
    suppressed: tuple[tuple[str, float], ...] = ()
    probabilities: dict[str, float] = field(default_factory=dict)
    top_activations: tuple[tuple[str, str, str, float], ...] = ()
    top_by_language: dict[str, tuple[tuple[str, str, float], ...]] = field(default_factory=dict)
    corpus_rates: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values."""
        return {
            "layer": self.layer,
            "neuron": self.neuron,
            "member_of": list(self.member_of),
            "promoted": [list(p) for p in self.promoted],
            "suppressed": [list(p) for p in self.suppressed],
            "probabilities": dict(self.probabilities),
            "top_activations": [list(t) for t in self.top_activations],
            "top_by_language": {
                lang: [list(t) for t in tops] for lang, tops in self.top_by_language.items()
            },
            "corpus_rates": dict(self.corpus_rates),
        }

    def to_markdown(self) -> str:
        """The card as Markdown."""
        member = ", ".join(self.member_of) or "no language set given"
        lines = [f"#### Neuron {self.layer}.{self.neuron} ({member})", ""]
        if self.probabilities:
            probs = ", ".join(f"{k} {v:.3f}" for k, v in self.probabilities.items())
            lines.append(f"- activation probability: {probs}")
        if self.promoted:
            lines.append("- promotes: " + ", ".join(f"`{_show(t)}`" for t, _ in self.promoted))
        if self.suppressed:
            lines.append("- suppresses: " + ", ".join(f"`{_show(t)}`" for t, _ in self.suppressed))
        if self.top_activations:
            lines.append("- fires most on:")
            for lang, context, token, value in self.top_activations:
                lines.append(f"  - {lang} {value:.2f}: `{_show(context)}[{_show(token)}]`")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """The card as a self-contained HTML fragment (inline SVG and tables, no script)."""
        return _card_html(self)

    def _repr_html_(self) -> str:
        return self.to_html()


def _show(text: str) -> str:
    return text.replace("\n", "\\n").replace("`", "'")


def neuron_card(
    model: Any,
    layer: int,
    neuron: int,
    *,
    stats: ActivationStats | None = None,
    neurons: LanguageNeurons | None = None,
    corpus: Mapping[str, Iterable[str] | Tensor] | None = None,
    k: int = 10,
    seq_len: int = 128,
    max_tokens_per_language: int = 4_096,
    context: int = 8,
    batch_size: int = 8,
    progress: bool = False,
) -> NeuronCard:
    """Describe one neuron: promoted tokens, activation probability per language, top tokens.

    Args:
        model: A TransformerLens model exposing ``W_out`` ``[n_layers, d_mlp, d_model]`` and
            ``W_U`` ``[d_model, d_vocab]`` (TransformerBridge and HookedTransformer do).
        layer: The layer.
        neuron: The neuron.
        stats: :class:`~tl_lape.stats.ActivationStats`, for the activation probabilities.
        neurons: A neuron set, to say which languages hold the neuron.
        corpus: ``{language: texts}`` to search for the positions where it fires most.
        k: Number of tokens in each list.
        seq_len: Window length for the corpus search.
        max_tokens_per_language: Token budget per language for the corpus search.
        context: Tokens of context shown before each top-activating token.
        batch_size: Windows (sequences) per forward pass.
        progress: Show a progress bar.

    Returns:
        A :class:`NeuronCard`.

    Example:
        >>> card = neuron_card(model, 0, 5, k=5)
        >>> len(card.promoted), len(card.suppressed)
        (5, 5)
    """
    return neuron_cards(
        model,
        [(layer, neuron)],
        stats=stats,
        neurons=neurons,
        corpus=corpus,
        k=k,
        seq_len=seq_len,
        max_tokens_per_language=max_tokens_per_language,
        context=context,
        batch_size=batch_size,
        progress=progress,
    )[0]


def neuron_cards(
    model: Any,
    which: Sequence[tuple[int, int]],
    *,
    stats: ActivationStats | None = None,
    neurons: LanguageNeurons | None = None,
    corpus: Mapping[str, Iterable[str] | Tensor] | None = None,
    k: int = 10,
    seq_len: int = 128,
    max_tokens_per_language: int = 4_096,
    context: int = 8,
    batch_size: int = 8,
    progress: bool = False,
) -> list[NeuronCard]:
    """:func:`neuron_card` for several ``(layer, neuron)`` pairs, sharing one corpus pass.

    Example:
        >>> cards = neuron_cards(model, [(0, 1), (1, 3)], stats=stats, neurons=neurons)
        >>> [(c.layer, c.neuron) for c in cards]
        [(0, 1), (1, 3)]
    """
    adapter = adapt(model)
    pairs = []
    for item in which:
        if (
            not isinstance(item, tuple)
            or len(item) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
        ):
            raise LapeError(f"neurons are (layer, neuron) int pairs; received {item!r}")
        layer, index = item
        if not 0 <= layer < adapter.n_layers or not 0 <= index < adapter.d_mlp:
            raise LapeError(
                f"neuron ({layer}, {index}) is outside the model's {adapter.n_layers} layers x "
                f"{adapter.d_mlp} neurons; pass 0 <= layer < {adapter.n_layers} and "
                f"0 <= neuron < {adapter.d_mlp}"
            )
        pairs.append((layer, index))
    check_positive_int(k, "k")
    if stats is not None and (stats.n_layers, stats.d_mlp) != (adapter.n_layers, adapter.d_mlp):
        raise LapeError(
            f"stats are for {stats.n_layers} layers x {stats.d_mlp} neurons but the model has "
            f"{adapter.n_layers} x {adapter.d_mlp}; pass statistics of this model"
        )
    if neurons is not None:
        neurons.check_compatible(adapter.n_layers, adapter.d_mlp)
    tokenizer = adapter.tokenizer
    logit_rows = _logit_weights(adapter, pairs)  # neuron d_vocab
    search = _top_activations(
        model, adapter, pairs, corpus, k, seq_len, max_tokens_per_language, batch_size, progress
    )
    cards = []
    for i, (layer, index) in enumerate(pairs):
        weights = logit_rows[i]
        up = torch.topk(weights, min(k, weights.numel()))
        down = torch.topk(-weights, min(k, weights.numel()))
        promoted = tuple(
            (tokenizer.decode([int(t)]), float(v))
            for v, t in zip(up.values, up.indices, strict=True)
        )
        suppressed = tuple(
            (tokenizer.decode([int(t)]), -float(v))
            for v, t in zip(down.values, down.indices, strict=True)
        )
        probabilities: dict[str, float] = {}
        if stats is not None:
            p = stats.probabilities[layer, index]  # lang
            probabilities = {lang: float(p[j]) for j, lang in enumerate(stats.languages)}
        member_of: tuple[str, ...] = ()
        if neurons is not None:
            member_of = tuple(
                lang
                for lang in neurons.languages
                if bool((neurons.indices(lang, layer) == index).any())
            )
        by_language: dict[str, list[tuple[str, str, float]]] = {}
        for value, lang, window, pos in sorted(search.tops[i], key=lambda e: -e[0]):
            before, token = _split_decode(tokenizer, window[max(0, pos - context) : pos + 1])
            by_language.setdefault(lang, []).append((before, token, float(value)))
        # The overall top k: the best of the per-language top k's.
        merged = sorted(
            ((lang, *entry) for lang, entries in by_language.items() for entry in entries),
            key=lambda e: -e[3],
        )[:k]
        cards.append(
            NeuronCard(
                layer,
                index,
                member_of,
                promoted,
                suppressed,
                probabilities,
                tuple(merged),
                {lang: tuple(entries) for lang, entries in by_language.items()},
                search.rates[i],
            )
        )
    return cards


def _split_decode(tokenizer: Any, ids: Tensor) -> tuple[str, str]:
    """Decode ``ids`` as (text before the last token, the last token's text).

    Decoding the span together keeps characters that a byte-level tokenizer splits over
    several tokens intact where possible.
    """
    before = tokenizer.decode(ids[:-1].tolist(), skip_special_tokens=True)
    full = tokenizer.decode(ids.tolist(), skip_special_tokens=True)
    if full.startswith(before):
        return before.lstrip("\ufffd"), full[len(before) :]
    return before.lstrip("\ufffd"), tokenizer.decode([int(ids[-1])])


def _logit_weights(adapter: Any, pairs: Sequence[tuple[int, int]]) -> Tensor:
    """``W_out[layer, neuron] @ W_U`` for each pair, float32 on the CPU, ``[pairs, d_vocab]``."""
    rows = [adapter.logit_weights(layer, [index])[0] for layer, index in pairs]
    return torch.stack(rows)


def _capture_hook(store: dict[int, Tensor], layer: int) -> Any:
    def hook_fn(act: Tensor, *, hook: Any) -> None:
        store[layer] = act.detach()

    return hook_fn


@dataclass
class _Search:
    """What one corpus pass found, per pair: the top positions of each language (``(value,
    language, window, position)``, ``k`` per language) and the firing rate per language."""

    tops: list[list[tuple[float, str, Tensor, int]]]
    rates: list[dict[str, float]]


def _top_activations(
    model: Any,
    adapter: Any,
    pairs: Sequence[tuple[int, int]],
    corpus: Mapping[str, Iterable[str] | Tensor] | None,
    k: int,
    seq_len: int,
    max_tokens: int,
    batch_size: int,
    progress: bool,
) -> _Search:
    """Per pair and language, the ``k`` corpus positions with the largest ``act_fn(hook_pre)``,
    and the share of the language's tokens with ``hook_pre > 0``."""
    if corpus is None:
        return _Search([[] for _ in pairs], [{} for _ in pairs])
    layers = sorted({layer for layer, _ in pairs})
    act_fn = adapter.act_fn
    tops: list[list[tuple[float, str, Tensor, int]]] = [[] for _ in pairs]
    rates: list[dict[str, float]] = [{} for _ in pairs]
    counter = 0
    for lang, texts in corpus.items():
        heaps: list[list[tuple[float, int, Tensor, int]]] = [[] for _ in pairs]
        fired = [0 for _ in pairs]
        seen = 0
        windows = token_windows(model, texts, seq_len=seq_len, max_tokens=max_tokens)
        for start in tqdm(
            range(0, windows.shape[0], batch_size), desc=f"cards {lang}", disable=not progress
        ):
            batch = windows[start : start + batch_size]
            captured: dict[int, Tensor] = {}
            hooks = [(adapter.hook_pre(layer), _capture_hook(captured, layer)) for layer in layers]
            with torch.inference_mode():
                model.run_with_hooks(
                    batch.to(adapter.device),
                    fwd_hooks=hooks,
                    return_type=None,
                    stop_at_layer=max(layers) + 1,
                )
            skip_bos = bool(batch[0, 0] == adapter.bos_token_id)
            seen += batch.shape[0] * (batch.shape[1] - int(skip_bos))
            for i, (layer, index) in enumerate(pairs):
                pre = captured[layer][..., index].to(torch.float32).cpu()  # batch pos
                values = act_fn(pre)
                if skip_bos:
                    values[:, 0] = -math.inf  # never report the BOS position
                    pre = pre[:, 1:]
                fired[i] += int((pre > 0).sum())
                flat = values.flatten()
                best = torch.topk(flat, min(k, flat.numel()))
                for v, f in zip(best.values.tolist(), best.indices.tolist(), strict=True):
                    row, pos = divmod(int(f), values.shape[1])
                    counter += 1
                    item = (float(v), counter, batch[row], pos)
                    if len(heaps[i]) < k:
                        heapq.heappush(heaps[i], item)
                    elif item[0] > heaps[i][0][0]:
                        heapq.heapreplace(heaps[i], item)
        for i in range(len(pairs)):
            tops[i] += [(v, lang, w, pos) for v, _, w, pos in heaps[i]]
            if seen:
                rates[i][lang] = fired[i] / seen
    return _Search(tops, rates)


# ============================================================================ card as HTML


def _card_html(card: NeuronCard) -> str:
    """The HTML view of a :class:`NeuronCard` (see :meth:`NeuronCard.to_html`)."""
    parts: list[str] = []
    rates, source = card.probabilities, "activation probability (statistics)"
    if not rates:
        rates, source = card.corpus_rates, "firing rate on the corpus (hook_pre > 0)"
    if rates:
        labels = [f"{lang} ★" if lang in card.member_of else lang for lang in rates]
        chart = bar_chart(labels, list(rates.values()), width=380)
        parts.append(f'<div class="block"><div class="sub">{escape(source)}</div>{chart}</div>')
    if card.promoted or card.suppressed:
        scale = max([abs(v) for _, v in (*card.promoted, *card.suppressed)], default=1.0) or 1.0
        columns = []
        for name, entries in (("promotes", card.promoted), ("suppresses", card.suppressed)):
            rows = [[_show(token), f"{value:+.3f}"] for token, value in entries]
            shade = [[None, value] for _, value in entries]
            columns.append(
                f'<div class="block"><div class="sub">{name} (W_out · W_U)</div>'
                + table(
                    ["token", "logit weight"],
                    rows,
                    shade=shade,
                    scale=(-scale, scale),
                    diverging=True,
                )
                + "</div>"
            )
        parts.append(f'<div class="row">{"".join(columns)}</div>')
    if card.top_by_language:
        peak = max(
            (v for entries in card.top_by_language.values() for *_, v in entries if v > 0),
            default=1.0,
        )
        columns = []
        for lang, tops in card.top_by_language.items():
            lines = []
            for before, token, value in tops:
                before = _show(before)
                if len(before) > 48:  # keep the token in sight: cut the context on the left
                    before = "…" + before[-47:]
                bg = colour(value, 0.0, peak)
                lines.append(
                    f'<div class="ctx"><span class="val">{value:.2f}</span> '
                    f'<span class="muted">{escape(before)}</span>'
                    f'<mark style="background:{bg};color:{text_colour(bg)}">'
                    f"{escape(_show(token))}</mark></div>"
                )
            columns.append(
                f'<div class="block"><div class="sub">fires most on: {escape(lang)}</div>'
                + "".join(lines)
                + "</div>"
            )
        parts.append(f'<div class="row">{"".join(columns)}</div>')
    member = ", ".join(card.member_of) or "no language set given"
    note = f"member of: {member}" + ("; ★ marks its languages" if card.member_of else "")
    return fragment(f"Neuron {card.layer}.{card.neuron}", _CARD_STYLE, *parts, note=note)


_CARD_STYLE = (
    "<style>"
    ".tl-lape .row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}"
    ".tl-lape .block{margin:4px 0}"
    ".tl-lape .sub{font-weight:600;margin:6px 0 2px 0}"
    ".tl-lape .ctx{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;"
    "white-space:pre}"
    ".tl-lape .ctx .val{display:inline-block;width:3.5em;text-align:right;color:#656d76}"
    ".tl-lape mark{padding:0 1px;border-radius:2px}"
    "</style>"
)
