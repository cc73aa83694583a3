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
    """

    layer: int
    neuron: int
    member_of: tuple[str, ...] = ()
    promoted: tuple[tuple[str, float], ...] = ()
    suppressed: tuple[tuple[str, float], ...] = ()
    probabilities: dict[str, float] = field(default_factory=dict)
    top_activations: tuple[tuple[str, str, str, float], ...] = ()

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
    logit_rows = _logit_weights(model, pairs)  # neuron d_vocab
    top = _top_activations(
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
        entries = []
        for value, lang, window, pos in sorted(top[i], key=lambda e: -e[0]):
            before, token = _split_decode(tokenizer, window[max(0, pos - context) : pos + 1])
            entries.append((lang, before, token, float(value)))
        cards.append(
            NeuronCard(layer, index, member_of, promoted, suppressed, probabilities, tuple(entries))
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


def _logit_weights(model: Any, pairs: Sequence[tuple[int, int]]) -> Tensor:
    """``W_out[layer, neuron] @ W_U`` for each pair, float32 on the CPU, ``[pairs, d_vocab]``."""
    try:
        w_out = model.W_out  # n_layers d_mlp d_model
        w_u = model.W_U  # d_model d_vocab
    except (AttributeError, NotImplementedError) as err:
        raise LapeError(
            f"the model exposes no W_out / W_U ({err}); neuron cards need TransformerLens' "
            "stacked weights"
        ) from err
    with torch.inference_mode():
        rows = torch.stack([w_out[layer, index] for layer, index in pairs])  # pairs d_model
        return (rows.to(torch.float32) @ w_u.to(torch.float32)).cpu()  # pairs d_vocab


def _capture_hook(store: dict[int, Tensor], layer: int) -> Any:
    def hook_fn(act: Tensor, *, hook: Any) -> None:
        store[layer] = act.detach()

    return hook_fn


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
) -> list[list[tuple[float, str, Tensor, int]]]:
    """Per pair, the ``k`` corpus positions with the largest ``act_fn(hook_pre)``."""
    heaps: list[list[tuple[float, int, str, Tensor, int]]] = [[] for _ in pairs]
    if corpus is None:
        return [[] for _ in pairs]
    layers = sorted({layer for layer, _ in pairs})
    act_fn = adapter.act_fn
    counter = 0
    for lang, texts in corpus.items():
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
            for i, (layer, index) in enumerate(pairs):
                values = act_fn(captured[layer][..., index].to(torch.float32)).cpu()  # batch pos
                if batch[0, 0] == adapter.bos_token_id:
                    values[:, 0] = -math.inf  # never report the BOS position
                flat = values.flatten()
                best = torch.topk(flat, min(k, flat.numel()))
                for v, f in zip(best.values.tolist(), best.indices.tolist(), strict=True):
                    row, pos = divmod(int(f), values.shape[1])
                    counter += 1
                    item = (float(v), counter, lang, batch[row], pos)
                    if len(heaps[i]) < k:
                        heapq.heappush(heaps[i], item)
                    elif item[0] > heaps[i][0][0]:
                        heapq.heapreplace(heaps[i], item)
    return [[(v, lang, w, pos) for v, _, lang, w, pos in heap] for heap in heaps]
