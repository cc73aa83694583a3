"""Selecting language-specific neurons from activation statistics: exact LAPE, and two baselines.

LAPE (Language Activation Probability Entropy; Tang et al., ACL 2024) scores each MLP neuron by
the entropy of its activation probabilities across languages, normalised to a distribution: a
neuron that fires on one language only has entropy 0, one that fires equally on all languages has
entropy ``log(n_lang)``. :func:`identify_language_neurons` reproduces the paper's selection step
by step (see its docstring). This module works on tensors only and never imports
TransformerLens.

Three selectors share the statistics, the thresholds and the output type (``method=``):

* ``"lape"`` (default): the paper's method, on activation probabilities ``p``.
* ``"lave"`` (Language Activation *Value* Entropy, the paper's comparison): the same pipeline with
  the mean activation value ``act_fn(hook_pre)`` per language (negative means, possible with
  SiLU/GELU, clipped to 0) in place of ``p`` everywhere: entropy, filter threshold and bar.
* ``"lap"`` (Language Activation Probability alone): ignores the other languages; for each
  language it takes the neurons with the highest ``p`` on that language, up to
  ``round(top_rate * n_layers * d_mlp / n_lang)`` per language, among those whose ``p`` on that
  language exceeds both the filter threshold and the bar. It shows what the entropy adds: LAP
  picks neurons that fire often on every language.

Numerics: everything is computed in float64 (the paper's script divided int32 counts by token
totals in float32); probabilities are exact ratios, and thresholds, comparisons and the order of
neurons are deterministic on CPU and GPU alike.

Example:
    >>> import torch
    >>> from tl_lape.stats import ActivationStats
    >>> counts = torch.zeros(2, 50, 2, dtype=torch.long)  # n_layers d_mlp lang
    >>> counts[..., 0] = torch.arange(100).reshape(2, 50) % 7   # fires a little on both
    >>> counts[..., 1] = torch.arange(100).reshape(2, 50) % 7
    >>> counts[1, 3] = torch.tensor([90, 0])                      # fires on "en" only
    >>> stats = ActivationStats.from_counts(counts, [100, 100], ["en", "fr"])
    >>> neurons = identify_language_neurons(stats, top_rate=0.01)
    >>> neurons.indices("en", 1)
    tensor([3])
"""

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from tl_lape.checks import check_choice, check_rate
from tl_lape.errors import LapeError
from tl_lape.neurons import LanguageNeurons
from tl_lape.stats import ActivationStats

__all__ = [
    "METHODS",
    "identify_language_neurons",
    "lap_scores",
    "lape_scores",
    "lave_scores",
    "select_at_sizes",
    "select_with",
    "selection_kwargs",
]

logger = logging.getLogger(__name__)

METHODS = ("lape", "lap", "lave")
"""The selectors :func:`identify_language_neurons` accepts as ``method``."""

_TIE_BREAK = "stable: equal scores keep (layer, neuron) order, lower layer then lower index first"


def _as_values(x: Any, *, name: str, kind: str) -> Tensor:
    """Get the ``[n_layers, d_mlp, lang]`` float64 values (probabilities or mean activations)."""
    if isinstance(x, ActivationStats):
        values = x.probabilities if kind == "probabilities" else x.mean_activations
    elif isinstance(x, Tensor):
        if x.ndim != 3 or not x.is_floating_point() or 0 in x.shape:
            raise LapeError(
                f"{name} must be ActivationStats or a non-empty float tensor (n_layers, d_mlp, "
                f"lang); received a {x.dtype} tensor of shape {tuple(x.shape)}"
            )
        values = x.detach().to(torch.float64)
        if not bool(torch.isfinite(values).all()):
            raise LapeError(f"{name} must be finite; received NaN or infinite values")
        if kind == "probabilities" and bool(((values < 0) | (values > 1)).any()):
            raise LapeError(
                f"{name} must be probabilities in [0, 1]; received values from "
                f"{float(values.min())} to {float(values.max())}"
            )
    else:
        raise LapeError(
            f"{name} must be ActivationStats or a (n_layers, d_mlp, lang) tensor; received "
            f"{type(x).__name__}"
        )
    if kind == "mean activations":
        values = values.clamp_min(0.0)  # entropy needs non-negative weights
    return values


def _entropy(values: Float[Tensor, "n_layers d_mlp lang"]) -> Float[Tensor, "n_layers d_mlp"]:
    """Entropy (nats) of each neuron's values normalised over languages; 0 for all-zero rows."""
    total = einops.reduce(values, "n_layers d_mlp lang -> n_layers d_mlp 1", "sum")
    # All-zero rows: 0 / tiny = 0 exactly, so q = 0 and the entropy is 0 (no NaN to patch up).
    q = values / total.clamp_min(torch.finfo(torch.float64).tiny)  # n_layers d_mlp lang
    q = torch.special.xlogy(q, q)  # q log q, with 0 log 0 = 0
    # 0.0 - x rather than -x: a zero entropy comes out as +0.0, not -0.0.
    entropy = 0.0 - einops.reduce(q, "n_layers d_mlp lang -> n_layers d_mlp", "sum")
    # Clamp away rounding noise (e.g. -0.0, or log(n) + 1 ulp for a uniform row).
    return entropy.clamp_(0.0, math.log(values.shape[-1]))


def lape_scores(
    stats_or_probs: ActivationStats | Float[Tensor, "n_layers d_mlp lang"],
) -> Float[Tensor, "n_layers d_mlp"]:
    """LAPE of every neuron: the entropy of its activation probabilities across languages.

    ``q = p / sum_k p`` (``q = 0`` for a neuron that never fires), ``LAPE = -sum_k q log q`` in
    nats, in ``[0, log n_lang]``. Low means language-specific. No filtering is applied here.

    Args:
        stats_or_probs: statistics, or probabilities ``p`` of shape ``(n_layers, d_mlp, lang)``.

    Returns:
        float64 entropies.

    Example:
        >>> import torch
        >>> p = torch.tensor([[[0.5, 0.0], [0.3, 0.3]]], dtype=torch.float64)
        >>> lape_scores(p)
        tensor([[0.0000, 0.6931]], dtype=torch.float64)
    """
    return _entropy(_as_values(stats_or_probs, name="stats_or_probs", kind="probabilities"))


def lave_scores(
    stats_or_means: ActivationStats | Float[Tensor, "n_layers d_mlp lang"],
) -> Float[Tensor, "n_layers d_mlp"]:
    """LAVE of every neuron: entropy of its mean activation values across languages.

    Negative means (possible with SiLU and GELU) are clipped to 0 before normalising.

    Example:
        >>> import torch
        >>> means = torch.tensor([[[2.0, -0.1], [1.0, 1.0]]], dtype=torch.float64)
        >>> lave_scores(means)
        tensor([[0.0000, 0.6931]], dtype=torch.float64)
    """
    return _entropy(_as_values(stats_or_means, name="stats_or_means", kind="mean activations"))


def lap_scores(
    stats_or_probs: ActivationStats | Float[Tensor, "n_layers d_mlp lang"],
) -> Float[Tensor, "n_layers d_mlp lang"]:
    """LAP scores: the activation probability of each neuron on each language (higher = chosen).

    Example:
        >>> import torch
        >>> s = ActivationStats.from_counts(torch.tensor([[[2, 1]]]), [4, 4], ["en", "fr"])
        >>> lap_scores(s)
        tensor([[[0.5000, 0.2500]]], dtype=torch.float64)
    """
    return _as_values(stats_or_probs, name="stats_or_probs", kind="probabilities")


def _kth_smallest(flat: Tensor, rate: float, name: str) -> float:
    """The ``round(rate * N)``-th smallest of ``flat`` (1-indexed, like ``torch.kthvalue``)."""
    n = flat.numel()
    k = round(n * rate)  # Python's round, as the paper's script
    if k < 1:
        raise LapeError(
            f"{name}={rate} picks the {k}-th smallest of only {n} values; use a larger {name} "
            "or statistics of a bigger model"
        )
    return float(torch.kthvalue(flat, k).values)


def _checked_inputs(
    stats: Any,
    method: Any,
    filter_rate: Any,
    activation_bar_ratio: Any,
    *,
    top_rate: Any = None,
) -> tuple[str, float, float, float]:
    """The selectors' shared inputs, checked (``top_rate`` too when given; else 0.0 back)."""
    if not isinstance(stats, ActivationStats):
        raise LapeError(
            f"stats must be ActivationStats (e.g. from collect_activation_stats or "
            f"ActivationStats.from_counts); received {type(stats).__name__}"
        )
    method = check_choice(method, METHODS, "method")
    rate = 0.0 if top_rate is None else check_rate(top_rate, "top_rate")
    filter_rate = check_rate(filter_rate, "filter_rate")
    activation_bar_ratio = check_rate(activation_bar_ratio, "activation_bar_ratio")
    if stats.n_languages < 2:
        raise LapeError(
            f"language-specific neurons need statistics of at least two languages (every "
            f"entropy over one language is 0, so any selection would be by index order); "
            f"received {list(stats.languages)}; collect statistics on two or more languages"
        )
    return method, rate, filter_rate, activation_bar_ratio


def _selection_metadata(
    stats: ActivationStats,
    method: str,
    filter_rate: float,
    activation_bar_ratio: float,
    t: float,
    b: float,
) -> dict[str, Any]:
    """What every selection records: thresholds, tie-break and the statistics' provenance."""
    metadata: dict[str, Any] = {
        "filter_rate": filter_rate,
        "activation_bar_ratio": activation_bar_ratio,
        "filter_threshold": t,
        "activation_bar": b,
        "tie_break": _TIE_BREAK,
        "stats_languages": list(stats.languages),
        "stats_n_tokens": stats.n_tokens.tolist(),
    }
    if "model_name" in stats.metadata:
        metadata["model_name"] = stats.metadata["model_name"]
    return metadata


def _rows_and_thresholds(
    stats: ActivationStats, method: str, filter_rate: float, activation_bar_ratio: float
) -> tuple[Float[Tensor, "neuron lang"], float, float]:
    """The ``(neuron, lang)`` values of ``method`` and its filter threshold and activation bar.

    Rows are neurons flattened in ``(layer, neuron)`` order: row ``i`` is layer ``i // d_mlp``.
    """
    kind = "mean activations" if method == "lave" else "probabilities"
    values = _as_values(stats, name="stats", kind=kind)  # n_layers d_mlp lang, float64
    flat_values = einops.rearrange(values, "n_layers d_mlp lang -> (n_layers d_mlp lang)")
    t = _kth_smallest(flat_values, filter_rate, "filter_rate")
    b = (
        t
        if activation_bar_ratio == filter_rate
        else _kth_smallest(flat_values, activation_bar_ratio, "activation_bar_ratio")
    )
    rows = einops.rearrange(values, "n_layers d_mlp lang -> (n_layers d_mlp) lang")
    return rows, t, b


def identify_language_neurons(
    stats: ActivationStats,
    *,
    top_rate: float = 0.01,
    filter_rate: float = 0.95,
    activation_bar_ratio: float = 0.95,
    method: str = "lape",
) -> LanguageNeurons:
    """Select language-specific neurons exactly as the LAPE paper does.

    With ``N = n_layers * d_mlp * n_lang`` and ``p = stats.probabilities``:

    1. ``p[l, n, k]`` = active_counts / n_tokens.
    2. ``q = p / sum_k p``; a neuron that never fires gets ``q = 0`` (and is removed in step 4).
    3. LAPE = ``-sum_k q log q`` (natural log, ``0 log 0 = 0``), see :func:`lape_scores`.
    4. Filter: ``t`` = the ``round(filter_rate * N)``-th smallest of all ``N`` probabilities
       (1-indexed, ``torch.kthvalue``); a neuron none of whose ``p`` is ``> t`` is excluded.
    5. The ``round(top_rate * n_layers * d_mlp)`` neurons with the lowest LAPE, over all layers
       together, are selected. Ties are broken deterministically by position: lower layer first,
       then lower neuron index (a stable sort of the scores flattened in ``(layer, neuron)``
       order). If fewer neurons pass the filter, only those are selected; the shortfall is
       logged and recorded in ``metadata["shortfall"]``. (The paper's ``topk`` would also have
       taken filtered-out neurons with entropy ``+inf``; with the default equal
       ``filter_rate`` and ``activation_bar_ratio`` those belong to no language, so the result
       is the same.)
    6. Bar: ``b`` = the ``round(activation_bar_ratio * N)``-th smallest probability. A selected
       neuron belongs to every language k with ``p[l, n, k] > b``: possibly several, possibly
       none (counted in ``metadata["n_selected_without_language"]``).

    ``method="lave"`` and ``method="lap"`` run the baselines described in the module docstring.
    All arithmetic is float64.

    Args:
        stats: per-language statistics of one model.
        top_rate: fraction of all neurons to select, in (0, 1).
        filter_rate: quantile of the probabilities a neuron must exceed on some language, in (0, 1).
        activation_bar_ratio: quantile a neuron's probability on a language must exceed to be
            assigned to it, in (0, 1).
        method: ``"lape"``, ``"lave"`` or ``"lap"``.

    Returns:
        The neuron set, with the settings and thresholds in its ``metadata``.

    Raises:
        LapeError: fewer than two languages, a rate outside (0, 1), an unknown method, rates
            that select nothing for so small a model, or ``"lave"`` on statistics without
            activation values.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> counts = torch.randint(0, 100, (4, 64, 3), generator=g)
        >>> stats = ActivationStats.from_counts(counts, [100, 100, 100], ["en", "zh", "fr"])
        >>> neurons = identify_language_neurons(stats, top_rate=0.02)
        >>> neurons.metadata["n_requested"], neurons.metadata["n_selected"]
        (5, 5)
    """
    method, top_rate, filter_rate, activation_bar_ratio = _checked_inputs(
        stats, method, filter_rate, activation_bar_ratio, top_rate=top_rate
    )
    n_layers, d_mlp, n_lang = stats.n_layers, stats.d_mlp, stats.n_languages
    rows, t, b = _rows_and_thresholds(stats, method, filter_rate, activation_bar_ratio)
    metadata = _selection_metadata(stats, method, filter_rate, activation_bar_ratio, t, b)
    metadata = {"method": method, "top_rate": top_rate, **metadata, "compute_dtype": "float64"}

    if method == "lap":
        masks = _select_lap(rows, top_rate, n_layers * d_mlp, max(t, b), metadata)
    else:
        n_requested = round(top_rate * n_layers * d_mlp)
        if n_requested < 1:
            raise LapeError(
                f"top_rate={top_rate} selects round({top_rate} * {n_layers * d_mlp}) = 0 neurons "
                "for a model this small; use a larger top_rate"
            )
        passes = einops.reduce(rows > t, "neuron lang -> neuron", "any")
        candidates = torch.nonzero(passes).flatten()  # ascending (layer, neuron) order
        # Scores of the candidates only (the excluded ones would be +inf): the same per-neuron
        # arithmetic as lape_scores / lave_scores, at a fraction of the cost.
        scores = _entropy(rows[candidates][None])[0]  # candidate
        # A stable sort of the candidates (already in position order) by score: ties keep
        # position order, exactly as a stable sort of all neurons with +inf for the excluded.
        order = torch.sort(scores, stable=True).indices[:n_requested]
        chosen = candidates[order]  # selected neurons, lowest score first
        assigned = rows[chosen] > b  # selected lang
        masks = torch.zeros(n_layers * d_mlp, n_lang, dtype=torch.bool, device=rows.device)
        masks[chosen] = assigned
        n_selected = int(chosen.numel())
        metadata.update(
            n_requested=n_requested,
            n_passing_filter=int(candidates.numel()),
            n_selected=n_selected,
            shortfall=n_requested - n_selected,
            n_selected_without_language=int((~assigned.any(dim=1)).sum()),
            max_selected_score=float(scores[order].max()) if n_selected else None,
        )
        if n_selected < n_requested:
            logger.warning(
                "only %d of %d requested neurons pass the filter (filter_rate=%s); selecting "
                "those %d",
                n_selected,
                n_requested,
                filter_rate,
                n_selected,
            )
    masks_lang = einops.rearrange(
        masks, "(n_layers d_mlp) lang -> lang n_layers d_mlp", n_layers=n_layers
    )
    return LanguageNeurons.from_masks(masks_lang.cpu(), stats.languages, metadata)


def _select_lap(
    rows: Float[Tensor, "neuron lang"],
    top_rate: float,
    n_neurons: int,
    threshold: float,
    metadata: dict[str, Any],
) -> Tensor:
    """LAP: per language, the neurons with the highest probability above ``threshold``."""
    n_lang = rows.shape[1]
    per_language = round(top_rate * n_neurons / n_lang)
    if per_language < 1:
        raise LapeError(
            f"top_rate={top_rate} selects round({top_rate} * {n_neurons} / {n_lang}) = 0 neurons "
            "per language for a model this small; use a larger top_rate"
        )
    masks = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
    selected = []
    for k in range(n_lang):
        candidates = torch.nonzero(rows[:, k] > threshold).flatten()  # position order
        order = torch.sort(-rows[candidates, k], stable=True).indices  # highest p first
        masks[candidates[order[:per_language]], k] = True
        selected.append(min(per_language, int(candidates.numel())))
    metadata.update(
        n_requested=per_language * n_lang,
        n_requested_per_language=per_language,
        n_selected=sum(selected),
        n_selected_per_language=selected,
        shortfall=per_language * n_lang - sum(selected),
    )
    if sum(selected) < per_language * n_lang:
        logger.warning("LAP: fewer neurons above the thresholds than requested: %s", selected)
    return masks


def select_at_sizes(
    stats: ActivationStats,
    sizes: Mapping[str, int],
    *,
    method: str = "lap",
    filter_rate: float = 0.95,
    activation_bar_ratio: float = 0.95,
) -> LanguageNeurons:
    """Select each language's best ``sizes[lang]`` neurons by ``method``: a control of equal size.

    The paper's comparison gives every selector the same total budget, so a selector that spreads
    it differently over the languages is compared on different set sizes. Here each language gets
    exactly the size asked for (e.g. ``sizes=lape_set.counts()``), from the neurons ``method``
    would assign to it:

    * ``"lape"`` / ``"lave"``: neurons that pass the filter and exceed the bar on ``lang``, lowest
      entropy first;
    * ``"lap"``: neurons whose value on ``lang`` exceeds both thresholds, highest first.

    Ties keep ``(layer, neuron)`` order, as in :func:`identify_language_neurons`. With
    ``method="lape"``, the same thresholds and ``sizes`` the counts of a LAPE set, the result is
    that set again (each language's LAPE neurons are its lowest-entropy assigned candidates).
    A language with fewer candidates than asked gets all of them; the shortfall is recorded in
    ``metadata["shortfall_per_language"]`` and logged.

    Args:
        stats: Per-language statistics.
        sizes: ``{language: number of neurons}`` for some or all of ``stats.languages``; the set
            has those languages, in ``stats`` order.
        method: One of :data:`METHODS`.
        filter_rate: As in :func:`identify_language_neurons`.
        activation_bar_ratio: As in :func:`identify_language_neurons`.

    Raises:
        LapeError: Fewer than two languages in ``stats``, a language not in ``stats``, a size
            that is not an int >= 0, or an invalid method or rate.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> counts = torch.randint(0, 100, (4, 64, 3), generator=g)
        >>> stats = ActivationStats.from_counts(counts, [100, 100, 100], ["en", "zh", "fr"])
        >>> lap = select_at_sizes(stats, {"en": 3, "zh": 1, "fr": 2}, method="lap")
        >>> lap.counts()
        {'en': 3, 'zh': 1, 'fr': 2}
    """
    method, _, filter_rate, activation_bar_ratio = _checked_inputs(
        stats, method, filter_rate, activation_bar_ratio
    )
    if not isinstance(sizes, Mapping) or not sizes:
        raise LapeError(
            f"sizes must be a non-empty {{language: int}} mapping, e.g. neurons.counts(); "
            f"received {sizes!r}"
        )
    unknown = [lang for lang in sizes if lang not in stats.languages]
    if unknown:
        raise LapeError(
            f"sizes names languages the statistics lack: {unknown}; the statistics have "
            f"{list(stats.languages)}"
        )
    for lang, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise LapeError(f"sizes[{lang!r}] must be an int >= 0; received {n!r}")
    rows, t, b = _rows_and_thresholds(stats, method, filter_rate, activation_bar_ratio)
    languages = [lang for lang in stats.languages if lang in sizes]
    if method == "lap":
        eligible = rows > max(t, b)  # neuron lang
        score = -rows  # highest value first
    else:
        passes = einops.reduce(rows > t, "neuron lang -> neuron 1", "any")
        eligible = passes & (rows > b)
        score = einops.repeat(_entropy(rows[None])[0], "neuron -> neuron lang", lang=rows.shape[1])
    masks = torch.zeros(len(languages), rows.shape[0], dtype=torch.bool)
    shortfall: dict[str, int] = {}
    for i, lang in enumerate(languages):
        k = stats.languages.index(lang)
        candidates = torch.nonzero(eligible[:, k]).flatten()  # position order
        order = torch.sort(score[candidates, k], stable=True).indices[: sizes[lang]]
        masks[i, candidates[order].cpu()] = True
        shortfall[lang] = sizes[lang] - int(order.numel())
    if any(shortfall.values()):
        logger.warning("%s: fewer candidates than the sizes asked for: %s", method, shortfall)
    metadata = {
        "method": method,
        "sizes": {lang: sizes[lang] for lang in languages},
        **_selection_metadata(stats, method, filter_rate, activation_bar_ratio, t, b),
        "shortfall_per_language": shortfall,
    }
    masks_lang = einops.rearrange(
        masks, "lang (n_layers d_mlp) -> lang n_layers d_mlp", n_layers=stats.n_layers
    )
    return LanguageNeurons.from_masks(masks_lang, languages, metadata)


# ============================================================================ reselection


def selection_kwargs(neurons: LanguageNeurons) -> dict[str, Any]:
    """The thresholds a set was selected with, from its metadata (paper defaults otherwise).

    The numeric ``top_rate``, ``filter_rate`` and ``activation_bar_ratio`` that
    :func:`identify_language_neurons` records in the set's metadata, as floats; a threshold
    that is missing (or not a number) is left out, so its default applies.

    Example:
        >>> ln = LanguageNeurons.from_indices({"en": {0: [1]}}, n_layers=1, d_mlp=2,
        ...                                   metadata={"top_rate": 0.02, "method": "lape"})
        >>> selection_kwargs(ln)
        {'top_rate': 0.02}
    """
    meta = neurons.metadata
    out: dict[str, Any] = {}
    for key in ("top_rate", "filter_rate", "activation_bar_ratio"):
        value = meta.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def select_with(method: str) -> Callable[[ActivationStats, LanguageNeurons], LanguageNeurons]:
    """A selector ``(stats, neurons) -> LanguageNeurons`` that selects again with ``method``.

    It runs :func:`identify_language_neurons` on ``stats`` with ``method`` and the thresholds
    ``neurons`` was selected with (:func:`selection_kwargs`): another selector at the same
    neuron budget, as :func:`~tl_lape.experiments.evaluation.run_evaluation` compares them.

    Args:
        method: One of :data:`METHODS` (checked when the selector runs).
    """

    def select(stats: ActivationStats, neurons: LanguageNeurons) -> LanguageNeurons:
        return identify_language_neurons(stats, **selection_kwargs(neurons), method=method)

    return select
