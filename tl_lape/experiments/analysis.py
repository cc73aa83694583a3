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
from tl_lape.checks import check_n_boot, check_positive_int, check_seed
from tl_lape.collection.windows import token_windows
from tl_lape.errors import LapeError
from tl_lape.formats import finite_json
from tl_lape.html import bar_chart, colour, escape, fragment, table, text_colour
from tl_lape.neurons import LanguageNeurons
from tl_lape.stats import ActivationStats

__all__ = [
    "STABLE_JACCARD",
    "NeuronCard",
    "SelectionStability",
    "StabilityReport",
    "bootstrap_selection",
    "collect_shards",
    "deal_corpus",
    "neuron_card",
    "neuron_cards",
    "split_corpus",
    "split_half_jaccard",
    "split_half_stability",
]


# ============================================================================ split-half stability


def deal_corpus(
    corpus: Mapping[str, Iterable[str] | Tensor], n_parts: int, *, seed: int = 0
) -> list[dict[str, list[str] | Tensor]]:
    """Deal every language's text into ``n_parts`` disjoint parts.

    Lists of texts are shuffled (seeded) and dealt in turn, so every part covers the whole
    corpus; a 1-D tensor of token ids is cut into ``n_parts`` consecutive pieces.

    Example:
        >>> parts = deal_corpus({"en": ["a", "b", "c", "d", "e", "f"]}, 3, seed=0)
        >>> sorted(t for part in parts for t in part["en"])
        ['a', 'b', 'c', 'd', 'e', 'f']
    """
    check_seed(seed)
    check_positive_int(n_parts, "n_parts", example=8)
    parts: list[dict[str, list[str] | Tensor]] = [{} for _ in range(n_parts)]
    for k, (lang, texts) in enumerate(corpus.items()):
        if isinstance(texts, Tensor):
            for i, piece in enumerate(torch.tensor_split(texts, n_parts)):
                parts[i][lang] = piece
            continue
        if isinstance(texts, str):
            raise LapeError(
                f"corpus[{lang!r}] must be a list of texts, not one string; wrap it in a list"
            )
        items = list(texts)
        if len(items) < n_parts:
            raise LapeError(
                f"corpus[{lang!r}] has {len(items)} text(s); dealing it into {n_parts} parts "
                f"needs at least {n_parts} (split long texts into paragraphs, or use fewer parts)"
            )
        generator = torch.Generator().manual_seed(seed + 7919 * k)
        order = torch.randperm(len(items), generator=generator).tolist()
        for i in range(n_parts):
            parts[i][lang] = [items[j] for j in order[i::n_parts]]
    return parts


def split_corpus(
    corpus: Mapping[str, Iterable[str] | Tensor], *, seed: int = 0
) -> tuple[dict[str, list[str] | Tensor], dict[str, list[str] | Tensor]]:
    """Split every language's text into two disjoint halves (:func:`deal_corpus` in two).

    Example:
        >>> a, b = split_corpus({"en": ["one", "two", "three", "four"]}, seed=0)
        >>> sorted(a["en"] + b["en"])
        ['four', 'one', 'three', 'two']
    """
    half_a, half_b = deal_corpus(corpus, 2, seed=seed)
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
    return _jaccard(a.masks(), b.masks())


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


# ============================================================================ bootstrap stability

#: Expected Jaccard of a language's set to itself (two bootstrap replicates) from which
#: :class:`SelectionStability` calls the set stable.
STABLE_JACCARD = 0.75


@dataclass(frozen=True)
class SelectionStability:
    """How stable a neuron selection is when its statistics are resampled.

    The statistics are collected in shards (disjoint parts of the corpus,
    :func:`collect_shards`); each bootstrap replicate draws, per language, as many shards as
    there are with replacement, adds them up and selects again.

    Attributes:
        neurons: The set selected on all the shards together.
        frequency: ``[lang, n_layers, d_mlp]``: in what fraction of the replicates each neuron
            was selected for each language (float64).
        jaccard_to_full: ``[boot, lang]``: Jaccard of each replicate's set with ``neurons``.
        self_jaccard: ``[pair, lang]``: Jaccard between replicates ``2i`` and ``2i + 1``, whose
            mean estimates the expected Jaccard of the set to itself.
        sizes: ``[boot, lang]``: neurons per language in each replicate.
        metadata: Settings (shards, replicates, seed, thresholds).
    """

    neurons: LanguageNeurons
    frequency: Float[Tensor, "lang n_layers d_mlp"]
    jaccard_to_full: Float[Tensor, "boot lang"]
    self_jaccard: Float[Tensor, "pair lang"]
    sizes: Int[Tensor, "boot lang"]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages."""
        return self.neurons.languages

    def expected_self_jaccard(self) -> Float[Tensor, " lang"]:
        """Per language, the mean Jaccard between two replicates' sets (NaN if never defined)."""
        return torch.nanmean(self.self_jaccard, dim=0)

    def stable(self, threshold: float = STABLE_JACCARD) -> dict[str, bool]:
        """Per language: is the expected Jaccard of the set to itself at least ``threshold``?"""
        expected = self.expected_self_jaccard()
        return {lang: bool(expected[k] >= threshold) for k, lang in enumerate(self.languages)}

    def selected_frequency(self) -> dict[str, dict[int, list[tuple[int, float]]]]:
        """For each language and layer, ``(neuron, frequency)`` of every neuron in the full set."""
        out: dict[str, dict[int, list[tuple[int, float]]]] = {}
        for k, lang in enumerate(self.languages):
            per_layer: dict[int, list[tuple[int, float]]] = {}
            for layer in range(self.neurons.n_layers):
                idx = self.neurons.indices(lang, layer)
                if idx.numel():
                    freq = self.frequency[k, layer, idx]
                    per_layer[layer] = [
                        (int(i), round(float(f), 6)) for i, f in zip(idx, freq, strict=True)
                    ]
            out[lang] = per_layer
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values: per-language summaries, and every selected neuron's frequency.

        Undefined Jaccard values (a language empty in both sets) are None.
        """
        expected = self.expected_self_jaccard()
        to_full = torch.nanmean(self.jaccard_to_full, dim=0)
        stable = self.stable()
        return finite_json(
            {
                "languages": list(self.languages),
                "metadata": dict(self.metadata),
                "per_language": {
                    lang: {
                        "neurons": self.neurons.counts()[lang],
                        "expected_self_jaccard": _nan_none(expected[k]),
                        "mean_jaccard_to_full": _nan_none(to_full[k]),
                        "replicate_sizes_min_max": [
                            int(self.sizes[:, k].min()),
                            int(self.sizes[:, k].max()),
                        ],
                        "share_selected_in_90pct": _nan_none(self._share_at_least(k, 0.9)),
                        "stable": stable[lang],
                    }
                    for k, lang in enumerate(self.languages)
                },
                "jaccard_to_full": self.jaccard_to_full.tolist(),
                "self_jaccard": self.self_jaccard.tolist(),
                "sizes": self.sizes.tolist(),
                "selected_frequency": {
                    lang: {str(layer): pairs for layer, pairs in per_layer.items()}
                    for lang, per_layer in self.selected_frequency().items()
                },
            }
        )

    def _share_at_least(self, k: int, level: float) -> float:
        """Share of language ``k``'s full-set neurons chosen in at least ``level`` of replicates."""
        mask = self.neurons.masks()[k]
        if not bool(mask.any()):
            return math.nan
        return float((self.frequency[k][mask] >= level).to(torch.float64).mean())

    def to_markdown(self) -> str:
        """A Markdown table per language."""
        d = self.to_dict()
        meta = self.metadata
        lines = [
            "### Selection stability (bootstrap over statistics shards)",
            "",
            f"Statistics in {meta.get('n_shards')} shards per language; {meta.get('n_boot')} "
            "replicates, each drawing the shards with replacement per language and selecting "
            f"again (top_rate={meta.get('top_rate')}). Self-Jaccard: mean Jaccard between two "
            f"replicates' sets; a set is called stable at >= {STABLE_JACCARD}.",
            "",
            "| language | neurons | expected self-Jaccard | mean Jaccard to full set | "
            "replicate sizes | selected in >= 90% | stable |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for lang, row in d["per_language"].items():
            lo, hi = row["replicate_sizes_min_max"]
            lines.append(
                f"| {lang} | {row['neurons']} | {_fmt(row['expected_self_jaccard'])} | "
                f"{_fmt(row['mean_jaccard_to_full'])} | {lo}-{hi} | "
                f"{_fmt(row['share_selected_in_90pct'], pct=True)} | "
                f"{'yes' if row['stable'] else 'no'} |"
            )
        return "\n".join(lines) + "\n"


def _nan_none(x: Tensor | float) -> float | None:
    value = float(x)
    return None if math.isnan(value) else value


def _fmt(x: float | None, *, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.0f}%" if pct else f"{x:.3f}"


def collect_shards(
    model: Any,
    corpus: Mapping[str, Iterable[str] | Tensor],
    *,
    n_shards: int = 8,
    seed: int = 0,
    max_tokens_per_language: int | None = None,
    **collect_kwargs: Any,
) -> list[ActivationStats]:
    """Statistics of ``n_shards`` disjoint parts of ``corpus`` (:func:`deal_corpus`).

    Their sum is the corpus' statistics (up to the windows each part's end cuts off); the
    parts are the units :func:`bootstrap_selection` resamples.

    Args:
        model: A TransformerLens model.
        corpus: ``{language: texts}``.
        n_shards: Parts per language.
        seed: Seed of the dealing.
        max_tokens_per_language: Token budget per language over all shards (each shard gets
            ``max_tokens_per_language // n_shards``); None: all the text.
        **collect_kwargs: Passed to :func:`~tl_lape.collection.engine.collect_activation_stats`
            (``seq_len``, ``batch_size``, ``prepend_bos``, ``progress``, ...).
    """
    from tl_lape.collection.engine import collect_activation_stats

    check_positive_int(n_shards, "n_shards", example=8)
    budget = None
    if max_tokens_per_language is not None:
        check_positive_int(max_tokens_per_language, "max_tokens_per_language")
        budget = max_tokens_per_language // n_shards
        if budget < 1:
            raise LapeError(
                f"max_tokens_per_language={max_tokens_per_language} gives each of {n_shards} "
                "shards no tokens; pass a larger budget or fewer shards"
            )
    parts = deal_corpus(corpus, n_shards, seed=seed)
    return [
        collect_activation_stats(model, part, max_tokens_per_language=budget, **collect_kwargs)
        for part in parts
    ]


def bootstrap_selection(
    shards: Sequence[ActivationStats],
    *,
    n_boot: int = 200,
    seed: int = 0,
    top_rate: float = 0.01,
    filter_rate: float = 0.95,
    activation_bar_ratio: float = 0.95,
    method: str = "lape",
) -> SelectionStability:
    """Resample the statistics shards and select again: each neuron's selection frequency.

    Each replicate draws, independently for every language, ``len(shards)`` shards with
    replacement (seeded), sums their counts and token totals, and runs
    :func:`~tl_lape.selection.identify_language_neurons` with the given thresholds. Shards are
    the resampled units, so windows of one shard are drawn together (a conservative, clustered
    bootstrap).

    Args:
        shards: Statistics of disjoint parts of one corpus, same model and languages
            (:func:`collect_shards`); at least 2.
        n_boot: Replicates (at least 2).
        seed: Seed of the draws.
        top_rate: Selection threshold.
        filter_rate: Selection threshold.
        activation_bar_ratio: Selection threshold.
        method: Selector (``"lape"``, ``"lap"`` or ``"lave"``).

    Returns:
        A :class:`SelectionStability`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> shards = [
        ...     ActivationStats.from_counts(
        ...         torch.randint(0, 50, (2, 32, 3), generator=g), [50] * 3, ["en", "fr", "zh"]
        ...     )
        ...     for _ in range(4)
        ... ]
        >>> stability = bootstrap_selection(shards, n_boot=10, top_rate=0.05)
        >>> stability.frequency.shape
        torch.Size([3, 2, 32])
    """
    from tl_lape.selection import identify_language_neurons

    shards = list(shards)
    if len(shards) < 2 or not all(isinstance(x, ActivationStats) for x in shards):
        raise LapeError(
            f"shards must be at least 2 ActivationStats of disjoint parts of one corpus (from "
            f"collect_shards); received {len(shards)} item(s) of types "
            f"{sorted({type(x).__name__ for x in shards})}"
        )
    first = shards[0]
    for i, other in enumerate(shards[1:], start=1):
        if other.languages != first.languages or (other.n_layers, other.d_mlp) != (
            first.n_layers,
            first.d_mlp,
        ):
            raise LapeError(
                f"shard {i} has languages {list(other.languages)} and shape ({other.n_layers}, "
                f"{other.d_mlp}); shard 0 has {list(first.languages)} and ({first.n_layers}, "
                f"{first.d_mlp}); pass shards of one model and one set of languages"
            )
    check_n_boot(n_boot, least=2, example=200)
    check_seed(seed)
    kwargs: dict[str, Any] = {
        "top_rate": top_rate,
        "filter_rate": filter_rate,
        "activation_bar_ratio": activation_bar_ratio,
        "method": method,
    }
    total = sum(shards[1:], start=shards[0])
    full = identify_language_neurons(total, **kwargs)  # checks the thresholds and method first
    counts = torch.stack([x.active_counts for x in shards])  # shard n_layers d_mlp lang
    sums = torch.stack([x.activation_sums for x in shards])
    tokens = torch.stack([x.n_tokens for x in shards])  # shard lang
    n_shards, n_lang = len(shards), first.n_languages
    generator = torch.Generator().manual_seed(seed)
    full_masks = full.masks()  # lang n_layers d_mlp
    hits = torch.zeros(full_masks.shape, dtype=torch.int64)
    to_full = torch.empty(n_boot, n_lang, dtype=torch.float64)
    sizes = torch.empty(n_boot, n_lang, dtype=torch.int64)
    previous: Tensor | None = None
    pairs: list[Tensor] = []
    for b in range(n_boot):
        draws = torch.randint(0, n_shards, (n_shards, n_lang), generator=generator)
        weights = torch.zeros(n_shards, n_lang, dtype=torch.int64)
        weights.scatter_add_(0, draws, torch.ones_like(draws))  # shard lang multiplicities
        replicate = ActivationStats(
            first.languages,
            (weights * tokens).sum(0),
            torch.einsum("sl,snml->nml", weights, counts),
            torch.einsum("sl,snml->nml", weights.to(sums.dtype), sums),
            first.metadata,
        )
        masks = identify_language_neurons(replicate, **kwargs).masks()
        hits += masks
        sizes[b] = masks.flatten(1).sum(-1)
        to_full[b] = _jaccard(masks, full_masks)
        if b % 2 == 1 and previous is not None:
            pairs.append(_jaccard(masks, previous))
        previous = masks
    metadata = {
        "n_shards": n_shards,
        "n_boot": n_boot,
        "seed": seed,
        **kwargs,
        "shard_tokens": tokens.tolist(),
    }
    return SelectionStability(
        full,
        hits.to(torch.float64) / n_boot,
        to_full,
        torch.stack(pairs),
        sizes,
        metadata,
    )


def _jaccard(a: Tensor, b: Tensor) -> Float[Tensor, " lang"]:
    """Per language, ``|A ∩ B| / |A ∪ B|`` of two ``[lang, n_layers, d_mlp]`` masks (NaN: empty)."""
    inter = (a & b).flatten(1).sum(-1).to(torch.float64)
    union = (a | b).flatten(1).sum(-1).to(torch.float64)
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.full_like(inter, math.nan))


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
