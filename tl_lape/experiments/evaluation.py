"""Causal evaluation of language neurons: perplexity under deactivation, with controls.

Finding neurons whose firing is concentrated on one language is half of the LAPE paper; the
other half shows that they matter. The test is the paper's: switch a language's neurons off
(set their activation to zero) and measure the model's next-token loss (NLL, in nats per token)
on held-out text of every language. If the neurons are language-specific, deactivating
language X raises the loss on X much more than on the other languages.

Every number here comes with a control, so a weak result is visible as weak:

- :func:`~tl_lape.neurons.random_matched_neurons` draws random neuron sets of the same size and
  the same distribution over layers as each language's set (several seeded draws;
  ``control="activity"`` also matches their firing rate and mean activation);
- :func:`run_evaluation` also evaluates the paper's alternative selectors on the same statistics
  (activation probability alone, ``"lap"``, and entropy over mean activation values,
  ``"lave"``);
- :func:`selectivity` scores each deactivated language by the rise on its own text minus the
  mean rise on the others.

Every effect also comes with its uncertainty. A :class:`PerplexityMatrix` keeps the NLL sum and
the scored tokens of every window (and the document each window starts in), so
:meth:`PerplexityMatrix.intervals` and :meth:`EvaluationReport.intervals` can compute a *paired*
bootstrap: one set of weights per replicate is shared by the no-intervention row and every
deactivated row (and every neuron set of a report), each language's windows are resampled
within that language, and windows that start in the same document are drawn together. LAPE's
selectivity is also compared with the random draws' by an empirical p-value
(:func:`~tl_lape.intervals.empirical_p_value`), printed next to the smallest p-value the number
of draws allows.

Example (on a tiny model; select on the train split and evaluate on held-out text):
    >>> from tl_lape import identify_language_neurons, collect_activation_stats
    >>> stats = collect_activation_stats(model, corpus, seq_len=16, progress=False)
    >>> neurons = identify_language_neurons(stats, top_rate=0.1)
    >>> report = run_evaluation(model, neurons, corpus, stats=stats, n_random=1, seq_len=8,
    ...                         max_tokens_per_language=32, progress=False)
    >>> print(report.to_markdown())  # doctest: +ELLIPSIS
    ### Perplexity under deactivation
    ...
"""

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from matplotlib.figure import Figure
from torch import Tensor
from tqdm.auto import tqdm

from tl_lape._adapter import ModelAdapter, adapt
from tl_lape.checks import (
    check_choice,
    check_languages,
    check_n_boot,
    check_positive_int,
    check_seed,
)
from tl_lape.collection.windows import document_stream, evaluation_policy, token_windows
from tl_lape.errors import LapeError
from tl_lape.formats import check_size, check_tagged_json, existing_file, parse_json
from tl_lape.intervals import (
    DEFAULT_N_BOOT,
    Estimate,
    bootstrap_weights,
    empirical_p_value,
    min_p_value,
    percentile_interval,
)
from tl_lape.interventions.hooks import deactivation_hooks
from tl_lape.judging.nll import window_nll
from tl_lape.neurons import (
    DEFAULT_POOL,
    MATCH_ON,
    LanguageNeurons,
    MatchOn,
    activity_gap,
    random_matched_neurons,
)
from tl_lape.selection import METHODS, select_at_sizes, select_with, selection_kwargs
from tl_lape.stats import ActivationStats

__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_MAX_TOKENS_PER_LANGUAGE",
    "NO_INTERVENTION",
    "SELECTOR_SIZES",
    "EvaluationReport",
    "MatrixEstimates",
    "PerplexityMatrix",
    "ReportEstimates",
    "check_evaluation_options",
    "perplexity_matrix",
    "run_evaluation",
    "selectivity",
]

logger = logging.getLogger(__name__)

#: Row label of the matrix row computed without any intervention.
NO_INTERVENTION = "(none)"

#: Held-out tokens per evaluated language, by default: of :func:`run_evaluation`,
#: :func:`perplexity_matrix` and the CLI's ``evaluate``.
DEFAULT_MAX_TOKENS_PER_LANGUAGE = 4_096

#: What to do with an evaluation file that cannot be read back.
_REPORT_ADVICE = "write it again with tl-lape evaluate (or write_report)"

#: Coverage of the bootstrap intervals, by default.
DEFAULT_LEVEL = 0.95

#: The name of the evaluated set in a report (the other selectors go by their method names).
EVALUATED = "lape"

#: The other selectors :func:`run_evaluation` can compare, by method name (``selection.METHODS``).
SELECTORS: tuple[str, ...] = tuple(m for m in METHODS if m != EVALUATED)

#: How the other selectors' sets are sized: ``"language"`` (each language gets as many neurons as
#: the evaluated set gives it, :func:`~tl_lape.selection.select_at_sizes`) or ``"budget"`` (the
#: same total budget, split as each selector splits it: the paper's comparison).
SELECTOR_SIZES = ("language", "budget")

#: How windows are grouped for the bootstrap, per language: by the document (one text of the
#: corpus) each window starts in, or each window alone (a corpus given as token ids).
CLUSTER_UNITS = ("document", "window")

Hooks = list[tuple[str, Callable[..., Any]]]


# ============================================================================ results


@dataclass(frozen=True)
class PerplexityMatrix:
    """Mean NLL per token of each evaluated language (columns) under each deactivation (rows).

    Row 0 is the model without intervention (:data:`NO_INTERVENTION`); row ``i > 0`` is the
    model with the neurons of language ``deactivated[i - 1]`` set to zero.

    The per-window data (optional, kept by :func:`perplexity_matrix`) is what the bootstrap
    resamples: language ``k`` has ``n_windows[k]`` windows, stored first along the window axis;
    the rest of the axis is padding (zero sums and zero tokens, cluster ``-1``).

    Attributes:
        deactivated: The languages whose neurons were deactivated, one per row after the first.
        languages: The evaluated languages (columns).
        nll: ``nll[row, k]`` = mean NLL in nats per token of language k's text (float64).
        n_tokens: Number of scored tokens per evaluated language (int64).
        metadata: How the matrix was made (neuron-set provenance, seq_len, budgets, ...).
        window_sums: ``[row, lang, window]`` NLL summed over each window's scored tokens
            (float64), or None.
        window_tokens: ``[lang, window]`` scored tokens of each window (int64; 0 = padding).
        window_clusters: ``[lang, window]`` the cluster (document) of each window; default: each
            window its own cluster.
        cluster_units: Per language, what a cluster is: ``"document"`` (the index of the text
            the window starts in) or ``"window"`` (no document information, e.g. token ids).

    Example:
        >>> import torch
        >>> m = PerplexityMatrix(("en",), ("en", "fr"),
        ...     torch.tensor([[2.0, 3.0], [2.5, 3.1]], dtype=torch.float64),
        ...     torch.tensor([100, 100]))
        >>> m.delta
        tensor([[0.5000, 0.1000]], dtype=torch.float64)
    """

    deactivated: tuple[str, ...]
    languages: tuple[str, ...]
    nll: Float[Tensor, "row lang"]
    n_tokens: Int[Tensor, " lang"]
    metadata: dict[str, Any] = field(default_factory=dict)
    window_sums: Float[Tensor, "row lang window"] | None = None
    window_tokens: Int[Tensor, "lang window"] | None = None
    window_clusters: Int[Tensor, "lang window"] | None = None
    cluster_units: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.deactivated, (tuple, list)) and not self.deactivated):
            object.__setattr__(
                self, "deactivated", check_languages(self.deactivated, "deactivated")
            )
        object.__setattr__(self, "deactivated", tuple(self.deactivated))
        object.__setattr__(self, "languages", check_languages(self.languages, "languages"))
        if tuple(self.nll.shape) != (len(self.deactivated) + 1, len(self.languages)):
            raise LapeError(
                f"PerplexityMatrix.nll must have shape (1 + len(deactivated), len(languages)) = "
                f"({len(self.deactivated) + 1}, {len(self.languages)}); received "
                f"{tuple(self.nll.shape)}"
            )
        self._check_window_data()

    def _check_window_data(self) -> None:
        """Shapes of the per-window data, and its tokens adding up to ``n_tokens``."""
        sums, tokens = self.window_sums, self.window_tokens
        if sums is None and tokens is None:
            if self.window_clusters is not None:
                raise LapeError(
                    "PerplexityMatrix.window_clusters was given without window_sums and "
                    "window_tokens; pass all three, or none"
                )
            return
        if sums is None or tokens is None:
            raise LapeError(
                "PerplexityMatrix needs window_sums and window_tokens together; received only "
                f"{'window_sums' if tokens is None else 'window_tokens'}. Pass both, or neither"
            )
        rows, langs = len(self.deactivated) + 1, len(self.languages)
        if sums.dim() != 3 or tuple(sums.shape[:2]) != (rows, langs):
            raise LapeError(
                f"PerplexityMatrix.window_sums must have shape (rows, languages, windows) = "
                f"({rows}, {langs}, n); received {tuple(sums.shape)}"
            )
        if tuple(tokens.shape) != (langs, sums.shape[2]):
            raise LapeError(
                f"PerplexityMatrix.window_tokens must have shape (languages, windows) = "
                f"({langs}, {sums.shape[2]}); received {tuple(tokens.shape)}"
            )
        if not torch.equal(tokens.sum(dim=1).to(torch.int64), self.n_tokens.to(torch.int64)):
            raise LapeError(
                f"PerplexityMatrix.window_tokens add up to {tokens.sum(dim=1).tolist()} tokens per "
                f"language, but n_tokens is {self.n_tokens.tolist()}; pass the per-window data "
                "of the same windows"
            )
        clusters = self.window_clusters
        if clusters is None:
            index = torch.arange(tokens.shape[1]).expand(langs, -1)
            clusters = torch.where(tokens > 0, index, torch.full_like(index, -1))
            object.__setattr__(self, "window_clusters", clusters)
        elif tuple(clusters.shape) != tuple(tokens.shape):
            raise LapeError(
                f"PerplexityMatrix.window_clusters must have the shape of window_tokens "
                f"{tuple(tokens.shape)}; received {tuple(clusters.shape)}"
            )
        units = self.cluster_units
        if units is None:
            object.__setattr__(self, "cluster_units", ("window",) * langs)
        else:
            units = tuple(units)
            if len(units) != langs or any(u not in CLUSTER_UNITS for u in units):
                raise LapeError(
                    f"PerplexityMatrix.cluster_units must give one of {list(CLUSTER_UNITS)} per "
                    f"language ({langs}); received {units!r}"
                )
            object.__setattr__(self, "cluster_units", units)

    @property
    def rows(self) -> tuple[str, ...]:
        """Row labels: :data:`NO_INTERVENTION` then the deactivated languages."""
        return (NO_INTERVENTION, *self.deactivated)

    @property
    def baseline(self) -> Float[Tensor, " lang"]:
        """The NLL without intervention (row 0)."""
        return self.nll[0]

    @property
    def perplexity(self) -> Float[Tensor, "row lang"]:
        """``exp(nll)``, the perplexity per token."""
        return torch.exp(self.nll)

    @property
    def delta(self) -> Float[Tensor, "deact lang"]:
        """NLL change against the no-intervention row: ``nll[1:] - nll[0]`` (nats per token)."""
        return self.nll[1:] - self.nll[0:1]

    @property
    def perplexity_ratio(self) -> Float[Tensor, "deact lang"]:
        """Perplexity relative to the no-intervention row: ``exp(delta)``."""
        return torch.exp(self.delta)

    @property
    def has_windows(self) -> bool:
        """Whether the per-window data is kept (needed for intervals)."""
        return self.window_sums is not None and self.window_tokens is not None

    @property
    def n_windows(self) -> Int[Tensor, " lang"]:
        """Windows per evaluated language (a LapeError without per-window data)."""
        return (self._windows()[1] > 0).sum(dim=1)

    def n_clusters(self) -> list[int]:
        """Independent units (documents, or windows) per evaluated language."""
        _, tokens, clusters = self._windows()
        return [int(torch.unique(clusters[k][tokens[k] > 0]).numel()) for k in range(len(tokens))]

    def _windows(self) -> tuple[Tensor, Tensor, Tensor]:
        if self.window_sums is None or self.window_tokens is None:
            raise LapeError(
                "this PerplexityMatrix has no per-window data (window_sums, window_tokens), so no "
                "interval can be computed; make it with perplexity_matrix or run_evaluation, or "
                "read it back with from_dict from their to_dict"
            )
        assert self.window_clusters is not None
        return self.window_sums, self.window_tokens, self.window_clusters

    def own_rise(self) -> Float[Tensor, " deact"]:
        """NLL rise of each deactivated language on its own text (NaN if it is not evaluated)."""
        return _own_and_others(self)[0]

    def own_is_largest(self) -> Bool[Tensor, " deact"]:
        """Whether deactivating X raises X's NLL more than any other evaluated language's."""
        delta = self.delta
        out = torch.zeros(len(self.deactivated), dtype=torch.bool)
        for i, lang in enumerate(self.deactivated):
            if lang in self.languages and len(self.languages) > 1:
                j = self.languages.index(lang)
                others = torch.cat([delta[i, :j], delta[i, j + 1 :]])
                out[i] = bool(delta[i, j] > others.max())
        return out

    def intervals(
        self, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = DEFAULT_LEVEL
    ) -> "MatrixEstimates":
        """Paired bootstrap intervals of this matrix's effects (see :class:`MatrixEstimates`).

        Raises:
            LapeError: Without per-window data, or for a bad option.

        Example:
            >>> m = perplexity_matrix(model, neurons, corpus, seq_len=8,
            ...                       max_tokens_per_language=32, progress=False)
            >>> est = m.intervals(n_boot=200, seed=0)
            >>> len(est.delta) == len(m.deactivated), est.n_boot
            (True, 200)
            >>> est.delta[0][0].format(2)  # value [low, high], or value ± n/a  # doctest: +ELLIPSIS
            '...'
        """
        _check_bootstrap_options(n_boot, seed, level)
        weights = _language_weights(self, n_boot, seed)
        return _matrix_estimates(self, weights, self.n_clusters(), n_boot, seed, level)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists, floats; never NaN: null), ready for ``json.dump``.

        ``"per_window"`` holds each language's windows (unpadded): ``sums[row][lang]``,
        ``tokens[lang]``, ``clusters[lang]`` and ``cluster_units``; None without them.
        """
        per_window = None
        if self.has_windows:
            sums, tokens, clusters = self._windows()
            n = self.n_windows.tolist()
            per_window = {
                "sums": [
                    [_finite_list(sums[r, k, : n[k]]) for k in range(len(n))]
                    for r in range(sums.shape[0])
                ],
                "tokens": [tokens[k, : n[k]].tolist() for k in range(len(n))],
                "clusters": [clusters[k, : n[k]].tolist() for k in range(len(n))],
                "cluster_units": list(self.cluster_units or ()),
                "note": (
                    "per language: the NLL sum (nats) and scored tokens of each window, and its "
                    "cluster for the bootstrap: the index of the document (text) the window "
                    "starts in ('document'), or the window's own index ('window': the corpus "
                    "was token ids)"
                ),
            }
        return {
            "deactivated": list(self.deactivated),
            "languages": list(self.languages),
            "nll": [_finite_list(row) for row in self.nll],
            "delta": [_finite_list(row) for row in self.delta],
            "n_tokens": self.n_tokens.tolist(),
            "metadata": _json_safe(dict(self.metadata)),
            "per_window": per_window,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "PerplexityMatrix":
        """The inverse of :meth:`to_dict` (per-window data included when present).

        Example:
            >>> import torch
            >>> m = PerplexityMatrix(("en",), ("en",), torch.ones(2, 1, dtype=torch.float64),
            ...                      torch.tensor([4]))
            >>> PerplexityMatrix.from_dict(m.to_dict()).nll.tolist()
            [[1.0], [1.0]]
        """
        needed = ("deactivated", "languages", "nll", "n_tokens")
        if not isinstance(data, Mapping) or any(key not in data for key in needed):
            raise LapeError(
                f"a perplexity matrix must be a dict with keys {list(needed)} (from "
                f"PerplexityMatrix.to_dict); received {_short(data)}"
            )
        _known_keys(data, _MATRIX_KEYS, "a perplexity matrix")
        languages = _texts(data["languages"], "languages")
        n_tokens = _counts(data["n_tokens"], "n_tokens")
        if len(n_tokens) != len(languages):
            raise LapeError(
                f"n_tokens must give one count per language ({len(languages)}); received "
                f"{_short(n_tokens)}"
            )
        window: dict[str, Any] = {}
        per_window = data.get("per_window")
        if per_window is not None:
            window = _windows_from_dict(per_window, len(languages))
        return cls(
            _texts(data["deactivated"], "deactivated"),
            languages,
            _float_tensor(data["nll"], "nll"),
            torch.tensor(n_tokens, dtype=torch.int64),
            _metadata(data.get("metadata"), "metadata"),
            **window,
        )

    def to_markdown(
        self,
        *,
        value: str = "delta",
        digits: int = 3,
        estimates: "MatrixEstimates | None" = None,
    ) -> str:
        """A Markdown table: rows deactivated, columns evaluated.

        Args:
            value: ``"delta"`` (NLL change, with the no-intervention NLL as the first row),
                ``"nll"`` or ``"perplexity"``.
            digits: Decimal places.
            estimates: Intervals to print with each change (``"delta"`` only) as
                ``value [low, high]`` (``value ± n/a`` where one window gives none). Default:
                :meth:`intervals` with its defaults when the per-window data is kept.
        """
        if value == "delta":
            table = torch.cat([self.nll[0:1], self.delta])
            first = f"{NO_INTERVENTION} NLL"
            if estimates is None and self.has_windows:
                estimates = self.intervals()
        elif value == "nll":
            table, first = self.nll, NO_INTERVENTION
        elif value == "perplexity":
            table, first = self.perplexity, NO_INTERVENTION
        else:
            raise LapeError(f"value must be 'delta', 'nll' or 'perplexity'; received {value!r}")
        header = "| deactivated \\ evaluated | " + " | ".join(self.languages) + " |"
        lines = [header, "| --- |" + " ---: |" * len(self.languages)]
        for r, label in enumerate((first, *self.deactivated)):
            cells = []
            for k, lang in enumerate(self.languages):
                if value == "delta" and r > 0 and estimates is not None:
                    text = _format(estimates.delta[r - 1][k], digits, sign=True)
                else:
                    text = f"{float(table[r, k]):.{digits}f}"
                if value == "delta" and r > 0 and lang == label:
                    text = f"**{text}**"
                cells.append(text)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(
        self, *, title: str | None = None, estimates: "MatrixEstimates | None" = None
    ) -> Figure:
        """Heatmap of :attr:`delta` (a diverging colour scale centred on zero), each cell with
        its interval underneath when the per-window data is kept (or ``estimates`` given)."""
        from tl_lape.plots import plot_matrix

        if estimates is None and self.has_windows:
            estimates = self.intervals()
        labels = None
        if estimates is not None:
            labels = [[_cell_label(e) for e in row] for row in estimates.delta]
        return plot_matrix(
            self.delta,
            rows=list(self.deactivated),
            columns=list(self.languages),
            fmt="{:+.3f}",
            cmap="RdBu_r",
            center=0.0,
            title=title or "NLL change when a language's neurons are deactivated",
            xlabel="evaluated language",
            ylabel="deactivated language",
            colorbar_label="Δ NLL (nats/token)",
            labels=labels,
        )

    def _repr_html_(self) -> str:
        from tl_lape.html import fragment

        estimates = self.intervals() if self.has_windows else None
        note = f"{len(self.deactivated)} deactivated x {len(self.languages)} evaluated languages"
        return fragment(
            "PerplexityMatrix: NLL change (nats/token)", _delta_html(self, estimates), note=note
        )


def _cell_label(e: Estimate) -> str:
    if not math.isfinite(e.value):
        return "n/a"
    if e.low is None or e.high is None:
        return f"{e.value:+.3f}\n± n/a"
    return f"{e.value:+.3f}\n[{e.low:+.2f}, {e.high:+.2f}]"


def _delta_html(matrix: PerplexityMatrix, estimates: "MatrixEstimates | None") -> str:
    """The NLL-change table with a diverging colour scale (white at 0) and the intervals."""
    from tl_lape.html import table

    delta = matrix.delta
    rows: list[list[Any]] = [
        [f"{NO_INTERVENTION} NLL", *(f"{float(v):.3f}" for v in matrix.nll[0])]
    ]
    shade: list[list[float | None]] = [[None] * (1 + len(matrix.languages))]
    for i, lang in enumerate(matrix.deactivated):
        cells = [
            _format(estimates.delta[i][k], 3, sign=True)
            if estimates is not None
            else f"{float(delta[i, k]):+.3f}"
            for k in range(len(matrix.languages))
        ]
        rows.append([lang, *cells])
        shade.append([None, *(float(v) for v in delta[i])])
    finite = delta[torch.isfinite(delta)]
    span = float(finite.abs().max()) if finite.numel() else 1.0
    return table(
        ["deactivated \\ evaluated", *matrix.languages],
        rows,
        shade=shade,
        scale=(-span, span),
        diverging=True,
    )


def selectivity(matrix: PerplexityMatrix) -> Float[Tensor, " deact"]:
    """Per deactivated language X: the NLL rise on X minus the mean rise on the other languages.

    Positive when deactivating X hurts X more than the rest; zero for an intervention that
    hurts every language alike. NaN where X is not among the evaluated languages.

    Example:
        >>> import torch
        >>> m = PerplexityMatrix(("en", "fr"), ("en", "fr"),
        ...     torch.tensor([[2.0, 3.0], [2.5, 3.1], [2.1, 3.4]], dtype=torch.float64),
        ...     torch.tensor([100, 100]))
        >>> selectivity(m)
        tensor([0.4000, 0.3000], dtype=torch.float64)
    """
    own, others = _own_and_others(matrix)
    return own - others


def _own_and_others(matrix: PerplexityMatrix) -> tuple[Tensor, Tensor]:
    delta = matrix.delta  # deact lang
    own = torch.full((len(matrix.deactivated),), math.nan, dtype=torch.float64)
    others = torch.full_like(own, math.nan)
    for i, lang in enumerate(matrix.deactivated):
        if lang not in matrix.languages:
            continue
        j = matrix.languages.index(lang)
        own[i] = delta[i, j]
        rest = torch.cat([delta[i, :j], delta[i, j + 1 :]])
        others[i] = rest.mean() if rest.numel() else 0.0
    return own, others


# ============================================================================ intervals


@dataclass(frozen=True)
class MatrixEstimates:
    """Paired bootstrap intervals of one :class:`PerplexityMatrix`'s effects.

    In each replicate every language's windows are redrawn with replacement (within that
    language, whole documents at a time where windows share one) and the *same* weights are
    applied to the no-intervention row and to every deactivated row, so a rise is measured on
    the same text in both. The point value of each :class:`~tl_lape.intervals.Estimate` is the
    full-sample number (:attr:`PerplexityMatrix.delta`, :func:`selectivity`, ...); its ``n`` is
    the fewest independent units (documents or windows) of any language the statistic uses, and
    fewer than two give no interval (``± n/a``).

    Attributes:
        deactivated: Rows (deactivated languages).
        languages: Columns (evaluated languages).
        delta: ``delta[i][k]``: NLL rise of language k with ``deactivated[i]``'s neurons off.
        perplexity_ratio: ``exp`` of each rise, the perplexity relative to no intervention.
        selectivity: Per deactivated language, :func:`selectivity`.
        own_largest_probability: Per deactivated language, the share of replicates in which
            its own text rises more than any other language's (the definition of
            :meth:`PerplexityMatrix.own_is_largest`); None where it is not evaluated or there is
            no interval.
        n_own_largest: For how many deactivated languages that holds, with an interval of the
            count (limits rounded outwards to whole languages).
        n_boot: Replicates.
        seed: Seed of the replicates.
        level: Coverage of the intervals.
    """

    deactivated: tuple[str, ...]
    languages: tuple[str, ...]
    delta: tuple[tuple[Estimate, ...], ...]
    perplexity_ratio: tuple[tuple[Estimate, ...], ...]
    selectivity: tuple[Estimate, ...]
    own_largest_probability: tuple[float | None, ...]
    n_own_largest: Estimate
    n_boot: int
    seed: int
    level: float

    def to_dict(self) -> dict[str, Any]:
        """Plain values: each estimate as :meth:`~tl_lape.intervals.Estimate.to_dict`, with a
        ``"reason"`` where it has no interval or no value."""
        return {
            "deactivated": list(self.deactivated),
            "languages": list(self.languages),
            "delta": [[_estimate_dict(e) for e in row] for row in self.delta],
            "perplexity_ratio": [[_estimate_dict(e) for e in row] for row in self.perplexity_ratio],
            "selectivity": [_estimate_dict(e) for e in self.selectivity],
            "own_largest_probability": list(self.own_largest_probability),
            "n_own_largest": _estimate_dict(self.n_own_largest),
            "n_boot": self.n_boot,
            "seed": self.seed,
            "level": self.level,
        }


@dataclass(frozen=True)
class ReportEstimates:
    """The intervals and p-values of an :class:`EvaluationReport` (one set of bootstrap weights
    for every matrix, so LAPE, the random draws and the other selectors are paired too).

    Attributes:
        lape: The evaluated set's :class:`MatrixEstimates`.
        baselines: The other selectors' :class:`MatrixEstimates`, by method name.
        random_own_rise: Per deactivated language, the own-language rise averaged over the
            random draws (the interval is over windows, for that average).
        random_selectivity: The same for selectivity.
        p_values: Per deactivated language, :func:`~tl_lape.intervals.empirical_p_value` of
            LAPE's selectivity against the random draws' selectivity for that language
            (``alternative="greater"``); None without draws or where it is not evaluated.
        min_p_value: The smallest p-value the number of draws allows (None without draws).
        mean_selectivity: LAPE's selectivity averaged over the evaluated deactivated languages.
        random_mean_abs_selectivity: The random draws' mean absolute selectivity over the same
            languages (None without draws).
        selectivity_ratio: ``mean_selectivity / random_mean_abs_selectivity`` (None without
            draws); a point estimate only: resampling the windows adds noise that ``|·|`` turns
            into an upward bias of the denominator, so no percentile interval of the ratio is
            valid. :attr:`random_difference` is the comparison with an interval.
        n_boot: Replicates.
        seed: Seed of the replicates.
        level: Coverage of the intervals.
        baseline_differences: By other selector's name, per deactivated language, LAPE's
            selectivity minus that selector's, paired (same windows, same replicates): an
            interval above 0 says LAPE's set is the more selective on this text.
        baseline_mean_differences: The same, averaged over the evaluated deactivated languages.
        random_differences: Per deactivated language, LAPE's selectivity minus the random
            draws' mean (signed) selectivity, paired (None without draws).
        random_difference: The same, averaged over the evaluated deactivated languages: the
            interval of "LAPE beats the matched random sets" on this text (None without draws).
    """

    lape: MatrixEstimates
    baselines: dict[str, MatrixEstimates]
    random_own_rise: tuple[Estimate, ...] | None
    random_selectivity: tuple[Estimate, ...] | None
    p_values: tuple[float | None, ...]
    min_p_value: float | None
    mean_selectivity: Estimate
    random_mean_abs_selectivity: Estimate | None
    selectivity_ratio: Estimate | None
    n_boot: int
    seed: int
    level: float
    baseline_differences: dict[str, tuple[Estimate, ...]] = field(default_factory=dict)
    baseline_mean_differences: dict[str, Estimate] = field(default_factory=dict)
    random_differences: tuple[Estimate, ...] | None = None
    random_difference: Estimate | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values; every missing number is null with a ``"reason"`` beside it."""
        no_draws = "no random draws (n_random=0)"

        def ests(values: tuple[Estimate, ...] | None) -> Any:
            return None if values is None else [_estimate_dict(e) for e in values]

        out: dict[str, Any] = {
            "lape": self.lape.to_dict(),
            "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
            "random_own_rise": ests(self.random_own_rise),
            "random_selectivity": ests(self.random_selectivity),
            "p_values": list(self.p_values),
            "min_p_value": self.min_p_value,
            "mean_selectivity": _estimate_dict(self.mean_selectivity),
            "random_mean_abs_selectivity": (
                None
                if self.random_mean_abs_selectivity is None
                else _estimate_dict(self.random_mean_abs_selectivity)
            ),
            "selectivity_ratio": (
                None
                if self.selectivity_ratio is None
                else _estimate_dict(
                    self.selectivity_ratio,
                    undefined="the random draws' mean |selectivity| is 0",
                    no_interval=_NO_RATIO_INTERVAL,
                )
            ),
            "random_differences": ests(self.random_differences),
            "random_difference": (
                None if self.random_difference is None else _estimate_dict(self.random_difference)
            ),
            "baseline_differences": {
                name: [_estimate_dict(e) for e in values]
                for name, values in self.baseline_differences.items()
            },
            "baseline_mean_differences": {
                name: _estimate_dict(e) for name, e in self.baseline_mean_differences.items()
            },
            "n_boot": self.n_boot,
            "seed": self.seed,
            "level": self.level,
            "method": (
                "paired expanded percentile bootstrap: the same weights for the no-intervention "
                "row and every deactivated row of every neuron set; each language's windows "
                "resampled within that language, a document's windows together; the tails "
                "widened for the number of documents (tl_lape.intervals.expanded_tail); p-values: "
                "(1 + #random draws with selectivity >= LAPE's) / (1 + n draws)"
            ),
        }
        if self.min_p_value is None:
            out["p_values_reason"] = no_draws
        else:
            missing = [
                lang
                for lang, p in zip(self.lape.deactivated, self.p_values, strict=True)
                if p is None
            ]
            if missing:
                out["p_values_reason"] = f"not evaluated: {missing}"
        if self.random_own_rise is None:
            out["random_reason"] = no_draws
        return out


def _check_bootstrap_options(n_boot: Any, seed: Any, level: Any) -> None:
    """The bootstrap's options, checked before any model work."""
    check_n_boot(n_boot, example=DEFAULT_N_BOOT)
    check_seed(seed)
    ok = isinstance(level, (int, float)) and not isinstance(level, bool) and 0 < level < 1
    if not ok:
        raise LapeError(
            f"level must be a number strictly between 0 and 1 (the intervals' coverage); "
            f"received {level!r}; pass e.g. level={DEFAULT_LEVEL}"
        )


def _language_seed(seed: int, k: int) -> int:
    """The bootstrap seed of evaluated language ``k``: independent draws per language."""
    return (seed * 1_000_003 + 7_919 * (k + 1)) % (2**63)


def _language_weights(matrix: PerplexityMatrix, n_boot: int, seed: int) -> list[Tensor]:
    """Per evaluated language, ``[n_boot, n_windows]`` bootstrap weights over its windows."""
    _, tokens, clusters = matrix._windows()
    weights = []
    for k in range(tokens.shape[0]):
        valid = tokens[k] > 0
        weights.append(
            bootstrap_weights(
                int(valid.sum()),
                clusters=clusters[k][valid],
                n_boot=n_boot,
                seed=_language_seed(seed, k),
            )
        )
    return weights


def _nll_replicates(matrix: PerplexityMatrix, weights: Sequence[Tensor]) -> Tensor:
    """``[boot, row, lang]``: the mean NLL per token of each row and language per replicate."""
    sums, tokens, _ = matrix._windows()
    if tokens.shape[0] != len(weights) or any(
        w.shape[1] != int((tokens[k] > 0).sum()) for k, w in enumerate(weights)
    ):
        raise LapeError(
            "the matrices of one report must share their windows to be paired; received "
            f"windows per language {matrix.n_windows.tolist()} against "
            f"{[w.shape[1] for w in weights]}"
        )
    columns = []
    for k, w in enumerate(weights):
        n = w.shape[1]
        total = w @ sums[:, k, :n].to(torch.float64).T  # boot row
        count = w @ tokens[k, :n].to(torch.float64)  # boot
        columns.append(total / count[:, None])
    return torch.stack(columns, dim=2)  # boot row lang


def _batched_selectivity(
    delta: Tensor, deactivated: Sequence[str], languages: Sequence[str]
) -> Tensor:
    """:func:`selectivity` of each replicate: ``delta [boot, deact, lang]`` -> ``[boot, deact]``."""
    out = torch.full(delta.shape[:2], math.nan, dtype=torch.float64)
    for i, lang in enumerate(deactivated):
        if lang not in languages:
            continue
        j = languages.index(lang)
        rest = torch.cat([delta[:, i, :j], delta[:, i, j + 1 :]], dim=1)
        others = rest.mean(dim=1) if rest.shape[1] else torch.zeros(delta.shape[0])
        out[:, i] = delta[:, i, j] - others
    return out


def _batched_own_largest(
    delta: Tensor, deactivated: Sequence[str], languages: Sequence[str]
) -> Tensor:
    """:meth:`PerplexityMatrix.own_is_largest` of each replicate: ``[boot, deact]`` bools."""
    out = torch.zeros(delta.shape[:2], dtype=torch.bool)
    for i, lang in enumerate(deactivated):
        if lang in languages and len(languages) > 1:
            j = languages.index(lang)
            rest = torch.cat([delta[:, i, :j], delta[:, i, j + 1 :]], dim=1)
            out[:, i] = delta[:, i, j] > rest.max(dim=1).values
    return out


def _matrix_estimates(
    matrix: PerplexityMatrix,
    weights: Sequence[Tensor],
    units: Sequence[int],
    n_boot: int,
    seed: int,
    level: float,
) -> MatrixEstimates:
    reps = _nll_replicates(matrix, weights)  # boot row lang
    rep_delta = reps[:, 1:] - reps[:, 0:1]  # boot deact lang
    langs, deact = matrix.languages, matrix.deactivated
    fewest = min(units)

    def est(values: Tensor, point: float, n: int) -> Estimate:
        return percentile_interval(values, point=point, n_units=n, level=level)

    delta = tuple(
        tuple(
            est(rep_delta[:, i, k], float(matrix.delta[i, k]), units[k]) for k in range(len(langs))
        )
        for i in range(len(deact))
    )
    ratio = tuple(
        tuple(
            est(torch.exp(rep_delta[:, i, k]), float(matrix.perplexity_ratio[i, k]), units[k])
            for k in range(len(langs))
        )
        for i in range(len(deact))
    )
    rep_sel = _batched_selectivity(rep_delta, deact, langs)
    point_sel = selectivity(matrix)
    sel = tuple(
        est(rep_sel[:, i], float(point_sel[i]), fewest)
        if lang in langs
        else _undefined(fewest, level)
        for i, lang in enumerate(deact)
    )
    rep_largest = _batched_own_largest(rep_delta, deact, langs)  # boot deact
    probability = tuple(
        float(rep_largest[:, i].double().mean()) if lang in langs and fewest >= 2 else None
        for i, lang in enumerate(deact)
    )
    count = est(rep_largest.sum(dim=1).double(), float(matrix.own_is_largest().sum()), fewest)
    if count.low is not None and count.high is not None:
        low, high = float(math.floor(count.low)), float(math.ceil(count.high))
        count = Estimate(count.value, low, high, count.n, level)
    return MatrixEstimates(deact, langs, delta, ratio, sel, probability, count, n_boot, seed, level)


def _undefined(n: int, level: float) -> Estimate:
    return Estimate(math.nan, None, None, n=n, level=level)


_NO_RATIO_INTERVAL = (
    "no interval: the denominator is a mean of |selectivity| near 0, which resampling biases "
    "upward, so a percentile interval of the ratio is not valid; random_difference is the "
    "paired comparison with an interval"
)


def _estimate_dict(
    e: Estimate,
    *,
    undefined: str = "the language is not evaluated",
    no_interval: str | None = None,
) -> dict[str, Any]:
    """:meth:`Estimate.to_dict` with the reason for each null (``no_interval``: the reason
    when the statistic has no valid interval by construction)."""
    out = e.to_dict()
    if out["value"] is None:
        out["reason"] = undefined
    elif not e.has_interval:
        if no_interval is not None:
            out["reason"] = no_interval
        elif e.n < 2:
            out["reason"] = (
                f"no interval: {e.n} independent unit(s) (windows or documents) in the "
                "fewest-covered language; at least 2 are needed"
            )
        else:
            out["reason"] = "no interval: the bootstrap replicates are not all finite"
    return out


def _format(e: Estimate, digits: int, *, sign: bool = False) -> str:
    """``"+0.123 [+0.100, +0.150]"``, ``"+0.123 ± n/a"`` without an interval, ``"n/a"`` without
    a value (:meth:`Estimate.format`, with an optional sign)."""
    if not math.isfinite(e.value):
        return "n/a"
    spec = f"{'+' if sign else ''}.{digits}f"
    point = format(e.value, spec)
    if e.low is None or e.high is None:
        return f"{point} ± n/a"
    return f"{point} [{format(e.low, spec)}, {format(e.high, spec)}]"


# ============================================================================ JSON helpers


def _finite_list(values: Tensor) -> list[float | None]:
    """A 1-D tensor as floats, NaN and infinities as None."""
    return [v if math.isfinite(v) else None for v in values.to(torch.float64).tolist()]


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Tensor):
        return _json_safe(value.tolist())
    return value


def _short(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 80 else text[:77] + "..."


def _float_tensor(rows: Any, what: str) -> Tensor:
    if not isinstance(rows, list) or not all(
        isinstance(row, list) and all(_is_number(v) for v in row) for row in rows
    ):
        raise LapeError(
            f"{what} must be a list of rows of numbers (null for a missing one); received "
            f"{_short(rows)}"
        )
    try:
        return torch.tensor(
            [[math.nan if v is None else float(v) for v in row] for row in rows],
            dtype=torch.float64,
        )
    except (TypeError, ValueError, OverflowError) as err:  # rows of different lengths
        raise LapeError(
            f"{what} must be a list of rows of numbers (null for a missing one), all rows of "
            f"one length; received {_short(rows)} ({err})"
        ) from None


#: The keys :meth:`PerplexityMatrix.to_dict` and :meth:`EvaluationReport.to_dict` write (the
#: derived numbers among them are recomputed on reading, not read).
_MATRIX_KEYS = ("deactivated", "languages", "nll", "delta", "n_tokens", "metadata", "per_window")
_REPORT_KEYS = (
    *("lape", "random", "baselines", "neuron_counts", "selectivity", "random_selectivity"),
    *("p_values", "min_p_value", "summary", "bootstrap", "estimates", "null_reasons", "metadata"),
)
_WINDOW_KEYS = ("sums", "tokens", "clusters", "cluster_units", "note")
#: Most cells (rows x languages x windows of the longest language) the per-window data of a
#: matrix read back may make :func:`_windows_from_dict` allocate (2**27 float64: 1 GiB).
_MAX_WINDOW_CELLS = 1 << 27


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _known_keys(data: Mapping[str, Any], known: Sequence[str], what: str) -> None:
    unknown = sorted((k for k in data if k not in known), key=str)
    if unknown:
        raise LapeError(
            f"{what} has the keys {_short(unknown)}, which no tl_lape writes (it writes "
            f"{list(known)})"
        )


def _texts(value: Any, what: str) -> tuple[str, ...]:
    """A list of strings read back (a string is not a list of its letters)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LapeError(f"{what} must be a list of strings; received {_short(value)}")
    return tuple(value)


def _counts(value: Any, what: str, *, least: int = 0) -> list[int]:
    """A list of whole numbers >= ``least`` read back (3.7 or true is not a count)."""
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= least for v in value
    ):
        raise LapeError(
            f"{what} must be a list of whole numbers >= {least}; received {_short(value)}"
        )
    return value


def _metadata(value: Any, what: str) -> dict[str, Any]:
    if value is not None and not isinstance(value, Mapping):
        raise LapeError(f"{what} must be an object (or null); received {_short(value)}")
    return dict(value or {})


def _windows_from_dict(data: Any, n_langs: int) -> dict[str, Any]:
    """The per-window fields of :class:`PerplexityMatrix` from its ``to_dict()["per_window"]``."""
    keys = ("sums", "tokens", "clusters")
    if not isinstance(data, Mapping) or any(k not in data for k in keys):
        raise LapeError(
            f"per_window must be a dict with {list(keys)} (from PerplexityMatrix.to_dict); "
            f"received {_short(data)}"
        )
    _known_keys(data, _WINDOW_KEYS, "per_window")
    tokens_in, clusters_in, sums_in = data["tokens"], data["clusters"], data["sums"]
    for name, value in (("tokens", tokens_in), ("clusters", clusters_in)):
        if not isinstance(value, list) or not all(isinstance(v, list) for v in value):
            raise LapeError(
                f"per_window[{name!r}] must be a list (one per language) of lists; received "
                f"{_short(value)}"
            )
    if not isinstance(sums_in, list) or not all(
        isinstance(row, list) and all(isinstance(s, list) for s in row) for row in sums_in
    ):
        raise LapeError(
            "per_window['sums'] must be a list (one per row) of lists (one per language) of "
            f"lists; received {_short(sums_in)}"
        )
    lengths = [len(t) for t in tokens_in]
    if (
        len(lengths) != n_langs
        or [len(c) for c in clusters_in] != lengths
        or any([len(s) for s in row] != lengths for row in sums_in)
    ):
        raise LapeError(
            f"per_window must hold, for each of the {n_langs} languages, as many sums (per row), "
            f"tokens and clusters as it has windows; received window counts {lengths}"
        )
    width = max(lengths, default=0)
    check_size(
        max(1, len(sums_in) * n_langs * width), "per_window's padded cells", _MAX_WINDOW_CELLS
    )
    for k in range(n_langs):
        _counts(tokens_in[k], f"per_window['tokens'][{k}]")
        _counts(clusters_in[k], f"per_window['clusters'][{k}]")
        for r, row in enumerate(sums_in):
            if not all(_is_number(v) for v in row[k]):
                raise LapeError(
                    f"per_window['sums'][{r}][{k}] must be numbers (null for a missing one); "
                    f"received {_short(row[k])}"
                )
    sums = torch.zeros(len(sums_in), n_langs, width, dtype=torch.float64)
    tokens = torch.zeros(n_langs, width, dtype=torch.int64)
    clusters = torch.full((n_langs, width), -1, dtype=torch.int64)
    for k, n in enumerate(lengths):
        tokens[k, :n] = torch.tensor(tokens_in[k], dtype=torch.int64)
        clusters[k, :n] = torch.tensor(clusters_in[k], dtype=torch.int64)
        for r, row in enumerate(sums_in):
            sums[r, k, :n] = torch.tensor(
                [math.nan if v is None else float(v) for v in row[k]], dtype=torch.float64
            )
    units = data.get("cluster_units")
    if units is not None:
        units = _texts(units, "per_window['cluster_units']")
    return {
        "window_sums": sums,
        "window_tokens": tokens,
        "window_clusters": clusters,
        "cluster_units": tuple(units) if units is not None else None,
    }


# ============================================================================ perplexity matrix


def perplexity_matrix(
    model: Any,
    neurons: LanguageNeurons,
    corpus: Mapping[str, Iterable[str] | Tensor],
    *,
    languages: Sequence[str] | None = None,
    deactivate: Sequence[str] | None = None,
    seq_len: int = 256,
    batch_size: int = 8,
    max_tokens_per_language: int | None = DEFAULT_MAX_TOKENS_PER_LANGUAGE,
    positions_per_window: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> PerplexityMatrix:
    """Mean NLL of each language's text with each language's neurons deactivated in turn.

    Row 0 has no intervention; row ``i`` sets the activation of ``deactivate[i-1]``'s neurons
    to zero at every position (:func:`~tl_lape.interventions.hooks.deactivation_hooks`). All rows
    see exactly the same token windows (and, with ``positions_per_window``, the same scored
    positions). The matrix keeps each window's NLL sum and scored tokens, and the document each
    window starts in, for :meth:`PerplexityMatrix.intervals`.

    Args:
        model: A TransformerLens model (``TransformerBridge`` or ``HookedTransformer``).
        neurons: The language neurons, made for this model.
        corpus: ``{language: texts}`` (held-out text: not the text the neurons were selected
            on), or ``{language: 1-D tensor of token ids}`` (then each window is its own
            bootstrap cluster).
        languages: Evaluated languages (columns; default: every language of ``corpus``).
        deactivate: A sequence of language codes whose neurons are deactivated, one row each
            (default None: every language of ``neurons``).
        seq_len: Tokens per window.
        batch_size: Windows (sequences) per forward pass.
        max_tokens_per_language: Token budget per evaluated language (None: all the text;
            default :data:`DEFAULT_MAX_TOKENS_PER_LANGUAGE`).
        positions_per_window: None (default): score every position. An int ``k``: score ``k``
            seeded positions per window, the same in every row
            (:func:`~tl_lape.judging.nll.window_nll`).
        seed: Seed of the scored positions (only with ``positions_per_window``).
        progress: Show progress bars.

    Returns:
        A :class:`PerplexityMatrix` with its per-window data.

    Raises:
        LapeError: If a language is unknown, a corpus is too short, an option is invalid, or
            the neuron set does not fit the model.

    Example:
        >>> m = perplexity_matrix(model, neurons, corpus, deactivate=["fr", "zh"], seq_len=8,
        ...                       max_tokens_per_language=32, progress=False)
        >>> m.rows, m.own_is_largest().shape
        (('(none)', 'fr', 'zh'), torch.Size([2]))
    """
    scoring = _Scoring.checked(batch_size, positions_per_window, seed, progress)
    windows = _prepare(model, neurons, corpus, languages, seq_len, max_tokens_per_language)
    rows = _resolve_rows(deactivate, neurons)
    scoring = scoring.with_bar((1 + len(rows)) * len(windows.languages))
    try:
        baseline = _window_row(model, windows, [], scoring, NO_INTERVENTION)
        return _deactivation_matrix(
            model,
            neurons,
            rows,
            windows,
            baseline,
            scoring,
            seq_len=seq_len,
            max_tokens_per_language=max_tokens_per_language,
            name=None,
        )
    finally:
        scoring.close()


@dataclass(frozen=True)
class _Scoring:
    """How each window is scored: batch size, positions, their seed, progress bars."""

    batch_size: int
    positions_per_window: int | None
    seed: int
    progress: bool
    #: The one progress bar of the whole evaluation: one step per (row, language) cell, the
    #: current set and language in its postfix (tqdm's notebook form in Jupyter).
    bar: Any = field(default=None, compare=False)

    def with_bar(self, cells: int) -> "_Scoring":
        """A copy whose cells advance one bar of ``cells`` steps (none without ``progress``)."""
        bar = tqdm(total=cells, desc="evaluation", unit="cell", disable=not self.progress)
        return dataclasses.replace(self, bar=bar)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    @classmethod
    def checked(
        cls, batch_size: Any, positions_per_window: Any, seed: Any, progress: bool
    ) -> "_Scoring":
        check_positive_int(batch_size, "batch_size")
        if positions_per_window is not None and (
            isinstance(positions_per_window, bool)
            or not isinstance(positions_per_window, int)
            or positions_per_window < 1
        ):
            raise LapeError(
                f"positions_per_window must be a positive int or None; received "
                f"{positions_per_window!r}; pass e.g. 32, or None to score every position"
            )
        check_seed(seed)
        return cls(batch_size, positions_per_window, seed, progress)


@dataclass(frozen=True)
class _Windows:
    """The evaluated languages' token windows and the cluster (document) of each window."""

    adapter: ModelAdapter
    languages: tuple[str, ...]
    tokens: dict[str, Tensor]
    clusters: dict[str, Tensor]
    units: dict[str, str]


def _prepare(
    model: Any,
    neurons: LanguageNeurons,
    corpus: Mapping[str, Iterable[str] | Tensor],
    languages: Sequence[str] | None,
    seq_len: int,
    max_tokens_per_language: int | None,
) -> _Windows:
    """Check the neuron set against the model and cut each evaluated language into windows."""
    adapter = adapt(model)
    neurons.check_compatible(adapter.n_layers, adapter.d_mlp)
    evaluated = _resolve_languages(languages, corpus, "corpus")
    tokens, clusters, units = {}, {}, {}
    for lang in evaluated:
        tokens[lang], found = _windows_and_documents(
            model, adapter, corpus[lang], seq_len, max_tokens_per_language
        )
        n = tokens[lang].shape[0]
        clusters[lang] = found if found is not None else torch.arange(n)
        units[lang] = "document" if found is not None else "window"
    return _Windows(adapter, evaluated, tokens, clusters, units)


class _Recorder:
    """An iterator over texts that keeps the texts it has handed out."""

    def __init__(self, texts: Iterable[Any]) -> None:
        self._it = iter(texts)
        self.seen: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        item = next(self._it)
        self.seen.append(item)
        return item


def _windows_and_documents(
    model: Any,
    adapter: ModelAdapter,
    source: Any,
    seq_len: int,
    max_tokens: int | None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`token_windows` of ``source``, and the index of the document (text) each window
    starts in; None for a token-id tensor (or if the documents cannot be told apart)."""
    if isinstance(source, (str, bytes, Tensor)) or not isinstance(source, Iterable):
        given: Any = source  # token_windows says what is wrong with anything else
        return token_windows(model, given, seq_len=seq_len, max_tokens=max_tokens), None
    recorder = _Recorder(source)  # token_windows reads the texts once; keep what it read
    windows = token_windows(model, recorder, seq_len=seq_len, max_tokens=max_tokens)
    prepend_bos = bool(getattr(getattr(model, "cfg", None), "default_prepend_bos", True))
    policy = evaluation_policy(prepend_bos)
    has_bos = policy.prepend_bos and adapter.bos_token_id is not None
    body = seq_len - 1 if has_bos else seq_len
    alternate = bool(policy.separator_ids(adapter))  # chunks: doc, separator, doc, ...
    owner: list[Tensor] = []
    stream: list[Tensor] = []
    doc = -1
    for index, chunk in enumerate(document_stream(adapter, recorder.seen, policy)):
        if not alternate or index % 2 == 0:
            doc += 1  # a separator belongs to the document after it
        stream.append(chunk)
        owner.append(torch.full((chunk.numel(),), doc, dtype=torch.int64))
    needed = windows.shape[0] * body
    flat = torch.cat(stream)[:needed] if stream else torch.zeros(0, dtype=torch.long)
    content = windows[:, 1:] if has_bos else windows
    if flat.numel() != needed or not torch.equal(flat, content.reshape(-1)):
        logger.warning(
            "could not tell the windows' documents apart; each window is its own cluster"
        )
        return windows, None
    documents = torch.cat(owner)[:needed]
    return windows, documents[::body].clone()  # the document of each window's first token


def _deactivation_matrix(
    model: Any,
    neuron_set: LanguageNeurons,
    rows: tuple[str, ...],
    windows: _Windows,
    baseline: tuple[list[Tensor], list[Tensor]],
    scoring: _Scoring,
    *,
    seq_len: int,
    max_tokens_per_language: int | None,
    name: str | None,
) -> PerplexityMatrix:
    """The no-intervention row ``baseline`` plus one row per deactivated language of ``rows``."""
    base_sums, counts = baseline
    sums_rows = [base_sums]
    for lang in rows:
        hooks = deactivation_hooks(neuron_set, [lang], model=model)
        label = lang if name is None else f"{name}:{lang}"
        sums_rows.append(_window_row(model, windows, hooks, scoring, label)[0])
    n_langs = len(windows.languages)
    width = max(c.numel() for c in counts)
    window_sums = torch.zeros(len(sums_rows), n_langs, width, dtype=torch.float64)
    window_tokens = torch.zeros(n_langs, width, dtype=torch.int64)
    window_clusters = torch.full((n_langs, width), -1, dtype=torch.int64)
    nll = torch.zeros(len(sums_rows), n_langs, dtype=torch.float64)
    for k, lang in enumerate(windows.languages):
        n = counts[k].numel()
        window_tokens[k, :n] = counts[k]
        window_clusters[k, :n] = windows.clusters[lang]
        for r, sums in enumerate(sums_rows):
            window_sums[r, k, :n] = sums[k]
            nll[r, k] = sums[k].sum() / counts[k].sum()
    metadata = _matrix_metadata(windows.adapter, neuron_set, seq_len, max_tokens_per_language)
    metadata["positions_per_window"] = scoring.positions_per_window
    if scoring.positions_per_window is not None:
        metadata["positions_seed"] = scoring.seed
    if name is not None:
        metadata["set"] = name
    return PerplexityMatrix(
        rows,
        windows.languages,
        nll,
        window_tokens.sum(dim=1),
        metadata,
        window_sums=window_sums,
        window_tokens=window_tokens,
        window_clusters=window_clusters,
        cluster_units=tuple(windows.units[lang] for lang in windows.languages),
    )


def _window_row(
    model: Any, windows: _Windows, hooks: Hooks, scoring: _Scoring, label: str
) -> tuple[list[Tensor], list[Tensor]]:
    """Per evaluated language, the NLL sum and scored tokens of each window under ``hooks``."""
    sums, counts = [], []
    for lang in windows.languages:
        if scoring.bar is not None:
            scoring.bar.set_postfix_str(f"deactivate {label} / eval {lang}", refresh=False)
        s, c = window_nll(
            model,
            windows.tokens[lang],
            fwd_hooks=hooks,
            batch_size=scoring.batch_size,
            progress=scoring.progress and scoring.bar is None,
            desc=f"deactivate {label} / eval {lang}",
            positions_per_window=scoring.positions_per_window,
            seed=scoring.seed,
            per_window=True,
        )
        sums.append(s)
        counts.append(c)
        if scoring.bar is not None:
            scoring.bar.update(1)
    return sums, counts


def _matrix_metadata(
    adapter: ModelAdapter,
    neurons: LanguageNeurons,
    seq_len: int,
    max_tokens: int | None,
) -> dict[str, Any]:
    return {
        "model_name": adapter.model_name,
        "seq_len": seq_len,
        "max_tokens_per_language": max_tokens,
        "neurons": dict(neurons.metadata),
        "neuron_counts": neurons.counts(),
    }


# ============================================================================ full evaluation


@dataclass(frozen=True)
class EvaluationReport:
    """Perplexity under deactivation for LAPE's neurons, random controls and other selectors.

    Attributes:
        lape: The matrix for the evaluated neuron set.
        random: One matrix per seeded random draw matched to the set
            (:func:`random_matched_neurons`).
        baselines: Matrices for other selectors on the same statistics, by method name
            (``"lap"``, ``"lave"``; reports label them ``LAP``, ``LAVE``); empty when no
            statistics were given.
        neuron_counts: Neurons per language of each evaluated set, by set name (``"lape"`` for
            the evaluated set, then the method names of the other selectors).
        metadata: Settings of the run.
        n_boot: Bootstrap replicates of :meth:`intervals`.
        seed: Seed of the bootstrap.
        level: Coverage of the intervals.
    """

    lape: PerplexityMatrix
    random: tuple[PerplexityMatrix, ...] = ()
    baselines: dict[str, PerplexityMatrix] = field(default_factory=dict)
    neuron_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    n_boot: int = DEFAULT_N_BOOT
    seed: int = 0
    level: float = DEFAULT_LEVEL
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_bootstrap_options(self.n_boot, self.seed, self.level)
        shape = (self.lape.deactivated, self.lape.languages)
        named = [(f"random[{i}]", m) for i, m in enumerate(self.random)]
        named += [(f"baselines[{k!r}]", m) for k, m in self.baselines.items()]
        for name, m in named:
            if not isinstance(m, PerplexityMatrix):
                raise LapeError(
                    f"EvaluationReport.{name} must be a PerplexityMatrix; received "
                    f"{type(m).__name__}"
                )
            if (m.deactivated, m.languages) != shape:
                raise LapeError(
                    f"EvaluationReport.{name} has deactivated {list(m.deactivated)} and "
                    f"languages {list(m.languages)}, but lape has {list(shape[0])} and "
                    f"{list(shape[1])}; every matrix of a report must cover the same table"
                )

    # ------------------------------------------------------------------ derived numbers

    def selectivity(self) -> Float[Tensor, " deact"]:
        """LAPE's per-language selectivity (:func:`selectivity`)."""
        return selectivity(self.lape)

    def random_selectivity(self) -> Float[Tensor, "draw deact"]:
        """Selectivity of each random draw, ``[n_draws, n_deactivated]``."""
        if not self.random:
            return torch.zeros(0, len(self.lape.deactivated), dtype=torch.float64)
        return torch.stack([selectivity(m) for m in self.random])

    def random_own_rise(self) -> Float[Tensor, "draw deact"]:
        """Own-language NLL rise of each random draw, ``[n_draws, n_deactivated]``."""
        if not self.random:
            return torch.zeros(0, len(self.lape.deactivated), dtype=torch.float64)
        return torch.stack([m.own_rise() for m in self.random])

    def selectivity_ratio(self) -> float:
        """Mean LAPE selectivity over the mean absolute selectivity of the random draws.

        The random draws' selectivity is near zero and of either sign, so the denominator uses
        its absolute value (the conservative choice); NaN without random draws. Languages not
        evaluated are skipped.
        """
        lape = self.selectivity()
        rand = self.random_selectivity()
        if rand.numel() == 0:
            return math.nan
        valid = ~torch.isnan(lape)
        denominator = float(rand[:, valid].abs().mean())
        numerator = float(lape[valid].mean())
        if denominator > 0:
            return numerator / denominator
        return math.copysign(math.inf, numerator) if numerator != 0 else math.nan

    def n_own_largest(self) -> int:
        """For how many deactivated languages their own NLL rises more than any other's."""
        return int(self.lape.own_is_largest().sum())

    def p_values(self) -> list[float | None]:
        """Per deactivated language: the empirical p-value of LAPE's selectivity against the
        random draws' selectivity for that language (None without draws or if not evaluated).

        ``(1 + #{draws with selectivity >= LAPE's}) / (1 + n_draws)``; never below
        :func:`~tl_lape.intervals.min_p_value` of the number of draws.
        """
        lape, rand = self.selectivity(), self.random_selectivity()
        return [
            None if math.isnan(float(lape[i])) else empirical_p_value(float(lape[i]), rand[:, i])
            for i in range(len(self.lape.deactivated))
        ]

    def has_windows(self) -> bool:
        """Whether every matrix keeps its per-window data (needed for :meth:`intervals`)."""
        return all(m.has_windows for m in (self.lape, *self.random, *self.baselines.values()))

    def intervals(self) -> ReportEstimates:
        """The paired bootstrap intervals and p-values of the report (computed once).

        Raises:
            LapeError: If a matrix has no per-window data.
        """
        if "estimates" not in self._cache:
            self._cache["estimates"] = _report_estimates(self)
        estimates: ReportEstimates = self._cache["estimates"]
        return estimates

    def summary(self) -> dict[str, Any]:
        """The headline numbers as plain values (non-finite ones may be NaN or inf here;
        :meth:`to_dict` turns them into null with a reason)."""
        lape_sel = self.selectivity()
        valid = ~torch.isnan(lape_sel)
        out: dict[str, Any] = {
            "n_own_largest": self.n_own_largest(),
            "n_deactivated": len(self.lape.deactivated),
            "mean_own_rise": float(self.lape.own_rise()[valid].mean()) if valid.any() else None,
            "mean_selectivity": float(lape_sel[valid].mean()) if valid.any() else None,
        }
        if self.random:
            rand = self.random_selectivity()
            out["random_mean_selectivity"] = float(rand[:, valid].mean())
            out["random_mean_abs_selectivity"] = float(rand[:, valid].abs().mean())
            out["random_mean_own_rise"] = float(self.random_own_rise()[:, valid].mean())
            out["selectivity_ratio"] = self.selectivity_ratio()
        for name, matrix in self.baselines.items():
            sel = selectivity(matrix)
            ok = ~torch.isnan(sel)
            out[f"{name}_mean_selectivity"] = float(sel[ok].mean()) if ok.any() else None
            out[f"{name}_n_own_largest"] = int(matrix.own_is_largest().sum())
        return out

    # ------------------------------------------------------------------ output

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values, ready for ``json.dump`` (no NaN or infinity: null, and the
        reason under ``"null_reasons"``). Holds every matrix with its per-window data, so
        :meth:`from_dict` gives back a report whose every statistic can be recomputed."""
        summary = self.summary()
        reasons: dict[str, str] = {}
        for key, value in summary.items():
            if isinstance(value, float) and not math.isfinite(value):
                reasons[f"summary.{key}"] = (
                    "the random draws' mean |selectivity| is 0"
                    if key == "selectivity_ratio"
                    else "no evaluated deactivated language"
                )
        for i, lang in enumerate(self.lape.deactivated):
            if lang not in self.lape.languages:
                reasons[f"selectivity[{i}]"] = f"{lang!r} is deactivated but not evaluated"
        estimates = None
        if self.has_windows():
            estimates = self.intervals().to_dict()
        else:
            reasons["estimates"] = "a matrix has no per-window data: no intervals"
        return {
            "lape": self.lape.to_dict(),
            "random": [m.to_dict() for m in self.random],
            "baselines": {k: m.to_dict() for k, m in self.baselines.items()},
            "neuron_counts": {k: dict(v) for k, v in self.neuron_counts.items()},
            "selectivity": _finite_list(self.selectivity()),
            "random_selectivity": [_finite_list(row) for row in self.random_selectivity()],
            "p_values": self.p_values(),
            "min_p_value": min_p_value(len(self.random)) if self.random else None,
            "summary": _json_safe(summary),
            "bootstrap": {"n_boot": self.n_boot, "seed": self.seed, "level": self.level},
            "estimates": estimates,
            "null_reasons": reasons,
            "metadata": _json_safe(dict(self.metadata)),
        }

    @classmethod
    def from_dict(cls, data: Any) -> "EvaluationReport":
        """The inverse of :meth:`to_dict`: the matrices with their per-window data, the neuron
        counts, the metadata and the bootstrap settings (derived numbers are recomputed).

        Example:
            >>> import json, torch
            >>> m = PerplexityMatrix(("en",), ("en",), torch.ones(2, 1, dtype=torch.float64),
            ...                      torch.tensor([4]))
            >>> r = EvaluationReport(m, n_boot=100)
            >>> again = EvaluationReport.from_dict(json.loads(json.dumps(r.to_dict())))
            >>> again.summary() == r.summary(), again.n_boot
            (True, 100)
        """
        return cls._from_doc(data, "the evaluation report given to EvaluationReport.from_dict")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "EvaluationReport":
        """Read an ``evaluation.json`` (written by ``tl-lape evaluate``, ``run_demo`` or
        :func:`~tl_lape.experiments.reports.write_report`): strictly parsed
        (:func:`~tl_lape.formats.parse_json`), its checksum verified and every field checked
        before anything is allocated, or one :class:`~tl_lape.LapeError` line naming the file.

        Example:
            >>> import tempfile, pathlib, torch
            >>> from tl_lape.experiments.reports import write_report
            >>> m = PerplexityMatrix(("en",), ("en",), torch.ones(2, 1, dtype=torch.float64),
            ...                      torch.tensor([4]))
            >>> folder = pathlib.Path(tempfile.mkdtemp())
            >>> _ = write_report(EvaluationReport(m, n_boot=100), folder, "evaluation")
            >>> EvaluationReport.load(folder / "evaluation.json").n_boot
            100
        """
        p = existing_file(path, "evaluation report")
        where = f"the evaluation file {str(p)!r}"
        return cls._from_doc(parse_json(p.read_bytes(), where=where, advice=_REPORT_ADVICE), where)

    @classmethod
    def _from_doc(cls, data: Any, where: str) -> "EvaluationReport":
        from tl_lape.experiments.reports import REPORT_JSON_VERSION

        doc = check_tagged_json(
            dict(data) if isinstance(data, Mapping) else data,
            where=where,
            tag=f"tl_lape.{cls.__name__}",
            version=REPORT_JSON_VERSION,
            advice=_REPORT_ADVICE,
        )
        try:
            if "lape" not in doc:
                raise LapeError(
                    "an evaluation report must be a dict with a 'lape' matrix (from "
                    f"EvaluationReport.to_dict); received {_short(doc)}"
                )
            _known_keys(doc, _REPORT_KEYS, "an evaluation report")
            random = doc.get("random", [])
            baselines = _metadata(doc.get("baselines"), "baselines")
            counts = _metadata(doc.get("neuron_counts"), "neuron_counts")
            boot = _metadata(doc.get("bootstrap"), "bootstrap")
            if random is None:
                random = []
            if not isinstance(random, list):
                raise LapeError(f"random must be a list of matrices; received {_short(random)}")
            for name, per_lang in counts.items():
                if not isinstance(per_lang, dict):
                    raise LapeError(
                        f"neuron_counts[{name!r}] must map languages to counts; received "
                        f"{_short(per_lang)}"
                    )
                _counts(list(per_lang.values()), f"neuron_counts[{name!r}]")
            _known_keys(boot, ("n_boot", "seed", "level"), "bootstrap")
            n_boot = boot.get("n_boot", DEFAULT_N_BOOT)
            seed, level = boot.get("seed", 0), boot.get("level", DEFAULT_LEVEL)
            _check_bootstrap_options(n_boot, seed, level)
            return cls(
                PerplexityMatrix.from_dict(doc["lape"]),
                tuple(PerplexityMatrix.from_dict(m) for m in random),
                {k: PerplexityMatrix.from_dict(m) for k, m in baselines.items()},
                {k: dict(v) for k, v in counts.items()},
                _metadata(doc.get("metadata"), "metadata"),
                n_boot=n_boot,
                seed=seed,
                level=level,
            )
        except LapeError as err:
            if str(err).startswith(where):
                raise
            raise LapeError(f"{where}: {err}; {_REPORT_ADVICE}") from None

    def to_markdown(self) -> str:
        """A Markdown report: the NLL-change matrix, per-language selectivity and the summary,
        every effect with its paired bootstrap interval and LAPE's selectivity with its
        p-value against the random draws."""
        s = self.summary()
        est = self.intervals() if self.has_windows() else None
        lines = [
            *self._markdown_matrix(s, est),
            *self._markdown_language_table(est),
        ]
        for line in self._markdown_comparisons(s, est):
            lines += ["", line]  # one paragraph each
        return "\n".join(lines).rstrip() + "\n"

    def _markdown_intervals_note(self) -> str:
        units = self.lape.cluster_units or ()
        by_unit: dict[str, list[str]] = {}
        for lang, unit in zip(self.lape.languages, units, strict=False):
            by_unit.setdefault(unit, []).append(lang)
        grouping = "; ".join(f"by {u}: {', '.join(langs)}" for u, langs in by_unit.items())
        windows = ", ".join(
            f"{lang} {n}/{c}"
            for lang, n, c in zip(
                self.lape.languages,
                self.lape.n_windows.tolist(),
                self.lape.n_clusters(),
                strict=True,
            )
        )
        positions = self.lape.metadata.get("positions_per_window")
        scored = (
            f" NLL scored on {positions} seeded positions per window, the same in every row."
            if positions is not None
            else ""
        )
        fewest = min(self.lape.n_clusters())
        few = (
            f" With {fewest} clusters in a language, no interval drawn from them can cover more "
            f"than {100 * (1 - 2 * 0.5**fewest):.1f}% of the time (the chance that the true "
            "mean of a symmetric quantity lies inside their range): treat such intervals as "
            "lower bounds on the uncertainty."
            if 2 <= fewest < 10
            else ""
        )
        return (
            f"Brackets: {100 * self.level:g}% paired bootstrap interval ({self.n_boot:,} "
            f"replicates, seed {self.seed}): the clean and deactivated rows share the weights, "
            f"each language's windows are resampled within it, windows starting in the same "
            f"document together ({grouping}); the percentile tails are widened for the number "
            f"of clusters (expanded percentile), since a plain percentile interval from few "
            f"clusters is too narrow. Windows/clusters per language: {windows}. "
            f"'± n/a': one window or document gives no interval.{scored}{few}"
        )

    def _markdown_matrix(self, s: Mapping[str, Any], est: ReportEstimates | None) -> list[str]:
        """The report's first section: the NLL-change matrix and how often the own text rises."""
        lines = [
            "### Perplexity under deactivation",
            "",
            "NLL change (nats/token) on held-out text of each language (columns) when one "
            "language's neurons are set to zero (rows); the first row is the NLL without "
            "intervention. Bold: the deactivated language's own text.",
            "",
        ]
        if est is not None:
            lines += [self._markdown_intervals_note(), ""]
        lines += [self.lape.to_markdown(estimates=None if est is None else est.lape), ""]
        own = (
            f"Deactivating X raises X's NLL more than any other language's for "
            f"**{s['n_own_largest']} of {s['n_deactivated']}** languages"
        )
        if est is None:
            lines.append(own + ".")
        else:
            count = est.lape.n_own_largest
            interval = f"[{count.low:.0f}, {count.high:.0f}]" if count.has_interval else "± n/a"
            probs = ", ".join(
                f"{lang} {'n/a' if p is None else f'{p:.2f}'}"
                for lang, p in zip(
                    self.lape.deactivated, est.lape.own_largest_probability, strict=True
                )
            )
            lines.append(
                f"{own} ({100 * self.level:g}% interval of the count {interval}); bootstrap "
                f"probability that it holds, per language: {probs}."
            )
        lines.append("")
        return lines

    def _markdown_language_table(self, est: ReportEstimates | None) -> list[str]:
        """Per deactivated language: neurons, own rise and selectivity, with the controls."""
        header = "| language | neurons | own rise | selectivity |"
        sep = "| --- | ---: | ---: | ---: |"
        rand_sel = self.random_selectivity()
        rand_own = self.random_own_rise()
        p_values = self.p_values()
        if self.random:
            floor = min_p_value(len(self.random))
            header += f" random own rise | random selectivity | p vs random (min {floor:.2g}) |"
            sep += " ---: | ---: | ---: |"
        names = list(self.baselines)
        for name in names:
            header += f" {_label(name)} selectivity |"
            sep += " ---: |"
        lines = [header, sep]
        own = self.lape.own_rise()
        sel = self.selectivity()
        counts = self.neuron_counts.get(EVALUATED, {})
        baseline_sel = {name: selectivity(m) for name, m in self.baselines.items()}
        for i, lang in enumerate(self.lape.deactivated):
            j = self.lape.languages.index(lang) if lang in self.lape.languages else None
            if est is None:
                row = f"| {lang} | {counts.get(lang, '-')} | {float(own[i]):+.4f} |"
                row += f" {float(sel[i]):+.4f} |"
            else:
                own_est = est.lape.delta[i][j] if j is not None else _undefined(0, self.level)
                row = f"| {lang} | {counts.get(lang, '-')} | {_format(own_est, 4, sign=True)} |"
                row += f" {_format(est.lape.selectivity[i], 4, sign=True)} |"
            if self.random:
                if est is not None and est.random_own_rise and est.random_selectivity:
                    row += f" {_format(est.random_own_rise[i], 4, sign=True)} |"
                    row += f" {_format(est.random_selectivity[i], 4, sign=True)} |"
                else:
                    row += f" {float(rand_own[:, i].mean()):+.4f} |"
                    row += f" {float(rand_sel[:, i].mean()):+.4f} |"
                p = p_values[i]
                row += f" {'n/a' if p is None else f'{p:.3g}'} |"
            for name in names:
                if est is not None:
                    row += f" {_format(est.baselines[name].selectivity[i], 4, sign=True)} |"
                else:
                    row += f" {float(baseline_sel[name][i]):+.4f} |"
            lines.append(row)
        if self.random:
            n = len(self.random)
            floor = min_p_value(n)
            attainable = (
                "so p < 0.05 is attainable"
                if floor < 0.05
                else f"so p < 0.05 is not attainable (it needs at least 20 draws, not {n})"
            )
            lines += [
                "",
                f"Random columns: the mean over the {n} matched random draw(s) "
                f"({self.metadata.get('control', 'layer')}-matched), with its interval over "
                f"windows. p: the empirical p-value of LAPE's selectivity against the draws' "
                f"selectivity for that language, (1 + #draws >= LAPE) / (1 + {n}); with {n} "
                f"draw(s) the smallest possible is {floor:.3g}, {attainable}.",
            ]
        return lines

    def _markdown_comparisons(self, s: Mapping[str, Any], est: ReportEstimates | None) -> list[str]:
        """One line for the random controls and one per other selector."""
        lines = []
        if self.random:
            lines.append(self._markdown_ratio(s, est))
        for name in self.baselines:
            mean = s[f"{name}_mean_selectivity"]
            line = (
                f"{_label(name)}: mean selectivity {'n/a' if mean is None else f'{mean:+.4f}'}, "
                f"own language rises most for {s[f'{name}_n_own_largest']} of "
                f"{s['n_deactivated']}."
            )
            if est is not None and name in est.baseline_mean_differences:
                diff = est.baseline_mean_differences[name]
                per_lang = ", ".join(
                    f"{lang} {_format(e, 3, sign=True)}"
                    for lang, e in zip(
                        self.lape.deactivated, est.baseline_differences[name], strict=True
                    )
                )
                line += (
                    f" LAPE minus {_label(name)}, paired: mean selectivity "
                    f"{_format(diff, 4, sign=True)}; per language {per_lang}."
                )
            lines.append(line)
        if self.baselines:
            sizes = self.metadata.get("selector_sizes", "budget")
            lines.append(
                "The other selectors' sets have as many neurons per language as LAPE's."
                if sizes == "language"
                else "The other selectors' sets share LAPE's total budget, split as each "
                "selector splits it (per-language sizes differ)."
            )
        return lines

    def _markdown_ratio(self, s: Mapping[str, Any], est: ReportEstimates | None) -> str:
        """LAPE vs random: the ratio of exactly the two numbers printed beside it."""
        mean, mean_abs = s["mean_selectivity"], s["random_mean_abs_selectivity"]
        if mean is None or not math.isfinite(mean_abs):
            return "LAPE vs random: n/a (no evaluated deactivated language)."
        num, den = f"{mean:+.4g}", f"{mean_abs:.4g}"
        ratio = float(num) / float(den) if float(den) != 0 else math.nan
        ratio_text = f"**{ratio:.1f}x**" if math.isfinite(ratio) else "n/a (denominator 0)"
        mean_text = f"{num}"
        abs_text = f"{den}"
        difference = ""
        if est is not None:
            if est.mean_selectivity.has_interval:
                mean_text += f" {_bracket(est.mean_selectivity, '+.4g')}"
            if (
                est.random_mean_abs_selectivity is not None
                and est.random_mean_abs_selectivity.has_interval
            ):
                abs_text += f" {_bracket(est.random_mean_abs_selectivity, '.4g')}"
            if est.random_difference is not None and math.isfinite(est.random_difference.value):
                difference = (
                    " LAPE minus random, paired (signed means): "
                    f"{_format(est.random_difference, 4, sign=True)} nats; the ratio has no "
                    "interval (its denominator is a mean of |·|)."
                )
        caveat = ""
        abs_est = None if est is None else est.random_mean_abs_selectivity
        if (
            abs_est is not None
            and abs_est.low is not None
            and abs_est.high is not None
            and not abs_est.low <= abs_est.value <= abs_est.high
        ):
            caveat = (
                " The mean |selectivity| lies outside its own percentile interval: resampling "
                "the windows adds noise that |·| turns into a positive bias, so that interval "
                "is shifted; the p-values above and the paired difference are the tests "
                "against the random draws."
            )
        return (
            f"LAPE vs random: mean selectivity of LAPE {mean_text} nats; mean |selectivity| of "
            f"the matched random sets ({len(self.random)} draw(s); signed mean "
            f"{s['random_mean_selectivity']:+.4g}) {abs_text}; ratio {num} / {den} = "
            f"{ratio_text}.{difference}{caveat}"
        )

    def figures(self) -> dict[str, Figure]:
        """Figures by file stem: the NLL-change heatmap and a selectivity bar chart (with the
        intervals when the per-window data is kept)."""
        est = self.intervals() if self.has_windows() else None
        return {
            "perplexity_change": self.lape.plot(estimates=None if est is None else est.lape),
            "selectivity": self.plot_selectivity(),
        }

    def plot_selectivity(self) -> Figure:
        """Bars of per-language selectivity: LAPE, the other selectors and the mean of the
        random draws, each with its bootstrap interval; the draws themselves as dots."""
        langs = list(self.lape.deactivated)
        est = self.intervals() if self.has_windows() else None
        series: dict[str, tuple[Tensor, tuple[Estimate, ...] | None]] = {
            _label(EVALUATED): (self.selectivity(), None if est is None else est.lape.selectivity)
        }
        for name, matrix in self.baselines.items():
            series[_label(name)] = (
                selectivity(matrix),
                None if est is None else est.baselines[name].selectivity,
            )
        rand = self.random_selectivity()
        if rand.numel():
            series["random (mean)"] = (
                rand.mean(dim=0),
                None if est is None else est.random_selectivity,
            )
        fig = Figure(figsize=(max(6.0, 0.9 * len(langs) + 2), 4.0), layout="constrained")
        ax = fig.add_subplot()
        width = 0.8 / len(series)
        for s, (name, (values, intervals)) in enumerate(series.items()):
            xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(langs))]
            heights = values.nan_to_num(0.0).tolist()
            ax.bar(xs, heights, width=width, label=name)
            if intervals is not None:
                below = [
                    h - e.low if e.low is not None else 0.0
                    for h, e in zip(heights, intervals, strict=True)
                ]
                above = [
                    e.high - h if e.high is not None else 0.0
                    for h, e in zip(heights, intervals, strict=True)
                ]
                ax.errorbar(xs, heights, yerr=[below, above], fmt="none", color="k", capsize=2)
        if rand.numel():
            s = len(series) - 1
            xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(langs))]
            for draw in rand:
                ax.scatter(xs, draw.tolist(), s=8, color="0.3", zorder=3)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(langs)), labels=langs)
        ax.set_xlabel("deactivated language")
        ax.set_ylabel("own rise − mean rise on others (nats)")
        title = "Selectivity of deactivation"
        if est is not None:
            title += f" ({100 * self.level:g}% paired bootstrap intervals; dots: random draws)"
        ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="small")
        return fig

    def _repr_html_(self) -> str:
        from tl_lape.html import fragment, markdown_html

        est = self.intervals() if self.has_windows() else None
        matrix = _delta_html(self.lape, None if est is None else est.lape)
        rest = markdown_html("\n".join(self._markdown_language_table(est)))
        s = self.summary()
        comparisons = markdown_html("\n\n".join(self._markdown_comparisons(s, est)))
        note = self._markdown_intervals_note() if est is not None else ""
        return fragment(
            "EvaluationReport: NLL change (nats/token)", matrix, rest, comparisons, note=note
        )


def _bracket(e: Estimate, spec: str) -> str:
    assert e.low is not None and e.high is not None
    return f"[{format(e.low, spec)}, {format(e.high, spec)}]"


def _report_estimates(report: EvaluationReport) -> ReportEstimates:
    """The report's intervals: one set of bootstrap weights for every matrix."""
    lape = report.lape
    n_boot, seed, level = report.n_boot, report.seed, report.level
    weights = _language_weights(lape, n_boot, seed)
    units = lape.n_clusters()
    fewest = min(units)
    lape_est = _matrix_estimates(lape, weights, units, n_boot, seed, level)
    baselines = {
        name: _matrix_estimates(m, weights, units, n_boot, seed, level)
        for name, m in report.baselines.items()
    }
    deact, langs = lape.deactivated, lape.languages
    valid = ~torch.isnan(report.selectivity())

    def est(values: Tensor, point: float) -> Estimate:
        return percentile_interval(values, point=point, n_units=fewest, level=level)

    # A mean over languages has the degrees of freedom of all languages' units together.
    df_all = max(sum(u - 1 for u in units), 1)

    def est_mean(values: Tensor, point: float) -> Estimate:
        return percentile_interval(values, point=point, n_units=fewest, level=level, df=df_all)

    lape_rep = _nll_replicates(lape, weights)
    lape_sel_rep = _batched_selectivity(lape_rep[:, 1:] - lape_rep[:, 0:1], deact, langs)
    point_sel = report.selectivity()
    mean_sel = (
        est_mean(lape_sel_rep[:, valid].mean(dim=1), float(point_sel[valid].mean()))
        if valid.any()
        else _undefined(fewest, level)
    )
    differences: dict[str, tuple[Estimate, ...]] = {}
    mean_differences: dict[str, Estimate] = {}
    for name, m in report.baselines.items():
        rep = _nll_replicates(m, weights)
        diff_rep = lape_sel_rep - _batched_selectivity(rep[:, 1:] - rep[:, 0:1], deact, langs)
        diff_point = point_sel - selectivity(m)
        ok = valid & ~torch.isnan(diff_point)
        differences[name] = tuple(
            est(diff_rep[:, i], float(diff_point[i])) if bool(ok[i]) else _undefined(fewest, level)
            for i in range(len(deact))
        )
        mean_differences[name] = (
            est_mean(diff_rep[:, ok].mean(dim=1), float(diff_point[ok].mean()))
            if ok.any()
            else _undefined(fewest, level)
        )
    random_own = random_sel = random_diffs = None
    abs_est = ratio_est = random_diff = None
    if report.random:
        own_reps, sel_reps = [], []
        for m in report.random:
            rep = _nll_replicates(m, weights)
            rep_delta = rep[:, 1:] - rep[:, 0:1]  # boot deact lang
            sel_reps.append(_batched_selectivity(rep_delta, deact, langs))
            own = torch.full(rep_delta.shape[:2], math.nan, dtype=torch.float64)
            for i, lang in enumerate(deact):
                if lang in langs:
                    own[:, i] = rep_delta[:, i, langs.index(lang)]
            own_reps.append(own)
        own_rep = torch.stack(own_reps)  # draw boot deact
        sel_rep = torch.stack(sel_reps)
        point_own = report.random_own_rise().mean(dim=0)
        point_rand = report.random_selectivity()
        random_own = tuple(
            est(own_rep[:, :, i].mean(dim=0), float(point_own[i]))
            if bool(valid[i])
            else _undefined(fewest, level)
            for i in range(len(deact))
        )
        random_sel = tuple(
            est(sel_rep[:, :, i].mean(dim=0), float(point_rand[:, i].mean()))
            if bool(valid[i])
            else _undefined(fewest, level)
            for i in range(len(deact))
        )
        diff_rep = lape_sel_rep - sel_rep.mean(dim=0)  # boot deact, paired
        diff_point = point_sel - point_rand.mean(dim=0)
        random_diffs = tuple(
            est(diff_rep[:, i], float(diff_point[i]))
            if bool(valid[i])
            else _undefined(fewest, level)
            for i in range(len(deact))
        )
        if valid.any():
            abs_rep = sel_rep[:, :, valid].abs().mean(dim=(0, 2))  # boot
            abs_est = est_mean(abs_rep, float(point_rand[:, valid].abs().mean()))
            # A point only: see ReportEstimates.selectivity_ratio.
            ratio_est = Estimate(report.selectivity_ratio(), None, None, n=fewest, level=level)
            random_diff = est_mean(diff_rep[:, valid].mean(dim=1), float(diff_point[valid].mean()))
        else:
            random_diff = _undefined(fewest, level)
    return ReportEstimates(
        lape=lape_est,
        baselines=baselines,
        random_own_rise=random_own,
        random_selectivity=random_sel,
        p_values=tuple(report.p_values()),
        min_p_value=min_p_value(len(report.random)) if report.random else None,
        mean_selectivity=mean_sel,
        random_mean_abs_selectivity=abs_est,
        selectivity_ratio=ratio_est,
        n_boot=n_boot,
        seed=seed,
        level=level,
        baseline_differences=differences,
        baseline_mean_differences=mean_differences,
        random_differences=random_diffs,
        random_difference=random_diff,
    )


def _label(name: str) -> str:
    """How a report shows a selector: its method name upper-cased (``"lap"`` -> ``LAP``)."""
    return name.upper() if name in METHODS else name


def run_evaluation(
    model: Any,
    neurons: LanguageNeurons,
    corpus: Mapping[str, Iterable[str] | Tensor],
    *,
    stats: ActivationStats | None = None,
    n_random: int = 3,
    seed: int = 0,
    selectors: Sequence[str] = SELECTORS,
    languages: Sequence[str] | None = None,
    seq_len: int = 256,
    batch_size: int = 8,
    max_tokens_per_language: int | None = DEFAULT_MAX_TOKENS_PER_LANGUAGE,
    positions_per_window: int | None = None,
    control: MatchOn = "layer",
    pool: int = DEFAULT_POOL,
    selector_sizes: str = "language",
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
    progress: bool = True,
) -> EvaluationReport:
    """Evaluate a neuron set by deactivation, against matched random sets and other selectors.

    Computes the :func:`perplexity_matrix` of ``neurons``, of ``n_random`` seeded random sets
    matched to it (:func:`random_matched_neurons`, seeds ``seed .. seed + n_random - 1``), and,
    when ``stats`` is given, of the paper's alternative selectors on those statistics
    (``"lap"``: activation probability alone; ``"lave"``: entropy over mean activation values),
    by default with as many neurons per language as ``neurons`` has (``selector_sizes``). The
    no-intervention row and the token windows are shared, and the report's intervals
    (:meth:`EvaluationReport.intervals`) are paired across all of them.

    Args:
        model: A TransformerLens model.
        neurons: The neuron set to evaluate (e.g. from
            :func:`~tl_lape.selection.identify_language_neurons`).
        corpus: Held-out ``{language: texts}``.
        stats: The :class:`~tl_lape.stats.ActivationStats` the set was selected from, for the
            other selectors (optional; needed for ``control="activity"``).
        n_random: Number of random draws (0 for none). The p-value of LAPE's selectivity
            against them is at least ``1 / (n_random + 1)``: p < 0.05 needs 20 draws or more.
        seed: Seed of the first random draw, of the bootstrap and of the scored positions.
        selectors: Which other selectors to run when ``stats`` is given: method names of
            :data:`~tl_lape.selection.METHODS` other than ``"lape"`` (default both).
        languages: Evaluated languages (default: those of ``corpus``).
        seq_len: Tokens per window.
        batch_size: Windows (sequences) per forward pass.
        max_tokens_per_language: Token budget per evaluated language (default
            :data:`DEFAULT_MAX_TOKENS_PER_LANGUAGE`).
        positions_per_window: None (default): score every position; an int ``k``: ``k`` seeded
            positions per window, the same in every row (:func:`~tl_lape.judging.nll.window_nll`).
        control: How the random sets are matched (``match`` of :func:`random_matched_neurons`):
            ``"layer"`` (size and layers, the default) or ``"activity"`` (also firing rate and
            mean activation on the language; needs ``stats``).
        pool: With ``control="activity"``: each draw picks among this many nearest candidates
            of each neuron (``pool`` of :func:`random_matched_neurons`). 1 takes the nearest, so
            every draw is the same set: it needs ``n_random=1``.
        selector_sizes: ``"language"`` (default): each other selector gets, for every
            language, as many neurons as ``neurons`` has for it
            (:func:`~tl_lape.selection.select_at_sizes`), so rows compare sets of equal size;
            ``"budget"``: the same total budget, split as the selector splits it (the paper).
        n_boot: Bootstrap replicates of the intervals.
        level: Coverage of the intervals.
        progress: Show progress bars.

    Returns:
        An :class:`EvaluationReport`.

    Raises:
        LapeError: For an invalid option (before any forward pass), an unknown language or a
            corpus too short for one window.

    Example:
        >>> report = run_evaluation(model, neurons, corpus, stats=stats, n_random=1,
        ...                         seq_len=8, max_tokens_per_language=32, progress=False)
        >>> sorted(report.baselines), len(report.random)
        (['lap', 'lave'], 1)
        >>> report.intervals().lape.selectivity[0].level
        0.95
    """
    selectors = check_evaluation_options(
        n_random=n_random,
        seed=seed,
        selectors=selectors,
        control=control,
        pool=pool,
        stats=stats,
        selector_sizes=selector_sizes,
        n_boot=n_boot,
        level=level,
    )
    scoring = _Scoring.checked(batch_size, positions_per_window, seed, progress)
    controls = _random_controls(neurons, n_random, seed, control, stats, pool)
    run = _SharedRun.start(
        model,
        neurons,
        corpus,
        languages,
        seq_len,
        max_tokens_per_language,
        scoring,
        n_matrices=1 + len(controls) + len(selectors if stats is not None else ()),
    )
    try:
        counts: dict[str, dict[str, int]] = {EVALUATED: neurons.counts()}
        lape = run.matrix(neurons, EVALUATED)
        random_matrices = tuple(run.matrix(c, f"random{draw}") for draw, c in enumerate(controls))
        baselines = _selector_matrices(run, neurons, stats, selectors, selector_sizes, counts)
    finally:
        run.scoring.close()
    metadata: dict[str, Any] = {
        "model_name": run.windows.adapter.model_name,
        "n_random": n_random,
        "seed": seed,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "max_tokens_per_language": max_tokens_per_language,
        "positions_per_window": positions_per_window,
        "control": control,
        **({"pool": pool} if control == "activity" else {}),
        "selector_sizes": selector_sizes,
        "neurons": dict(neurons.metadata),
    }
    if control == "activity" and controls:
        metadata["activity_gap"] = [activity_gap(neurons, c, stats) for c in controls]
    return EvaluationReport(
        lape, random_matrices, baselines, counts, metadata, n_boot=n_boot, seed=seed, level=level
    )


def check_evaluation_options(
    *,
    n_random: Any = 3,
    seed: Any = 0,
    selectors: Any = SELECTORS,
    control: Any = "layer",
    pool: Any = DEFAULT_POOL,
    stats: Any = None,
    selector_sizes: Any = "language",
    n_boot: Any = DEFAULT_N_BOOT,
    level: Any = DEFAULT_LEVEL,
    batch_size: Any = 8,
    positions_per_window: Any = None,
) -> tuple[str, ...]:
    """Check :func:`run_evaluation`'s options without running anything; return the selectors.

    :func:`run_evaluation` calls it first; the command line calls it before loading the model.
    """
    checked = _check_evaluation_options(n_random, seed, selectors, control, stats)
    check_positive_int(pool, "pool")
    if control == "activity" and pool == 1 and n_random > 1:
        raise LapeError(
            f"pool=1 takes each neuron's nearest candidate, so all {n_random} random draws would "
            "be the same set; received pool=1 with n_random="
            f"{n_random}. Pass n_random=1 (one nearest-matched set) or a pool of 2 or more"
        )
    check_choice(selector_sizes, SELECTOR_SIZES, "selector_sizes")
    _check_bootstrap_options(n_boot, seed, level)
    _Scoring.checked(batch_size, positions_per_window, seed, False)
    return checked


def _check_evaluation_options(
    n_random: Any, seed: Any, selectors: Any, control: Any, stats: Any
) -> tuple[str, ...]:
    """Check ``run_evaluation``'s own options; return the selectors as a tuple."""
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise LapeError(f"n_random must be an int >= 0; received {n_random!r}; pass e.g. 3, or 0")
    check_seed(seed)
    if isinstance(selectors, str) or not isinstance(selectors, Sequence):
        raise LapeError(
            f"selectors must be a sequence of method names such as {SELECTORS!r}; received "
            f"{selectors!r}"
        )
    unknown = [s for s in selectors if s not in SELECTORS]
    if unknown:
        raise LapeError(
            f"unknown selectors {unknown}; known: {list(SELECTORS)} (the method names of "
            "tl_lape.selection.METHODS other than 'lape', which is the evaluated set)"
        )
    try:
        check_choice(control, MATCH_ON, "control")
    except LapeError as err:
        raise LapeError(
            f"{err}; pass control='layer' (random sets matched in size and layers) or "
            "control='activity' (also in firing rate and mean activation, with stats=)"
        ) from None
    if control == "activity" and stats is None and n_random > 0:
        raise LapeError(
            "control='activity' matches the random sets on each neuron's firing rate and mean "
            "activation, which come from the statistics; received stats=None. Pass stats= (the "
            "ActivationStats the set was selected from) or control='layer'"
        )
    if control == "activity" and stats is not None and not stats.has_activation_sums:
        raise LapeError(
            "control='activity' needs the statistics' activation values (mean activation per "
            "neuron); received statistics built from counts alone. Collect them with "
            "collect_activation_stats, or pass control='layer'"
        )
    if n_random > 0 and seed + n_random - 1 >= 2**63:
        raise LapeError(
            f"the random draws use the seeds seed..seed+n_random-1, which must stay below 2**63; "
            f"received seed={seed}, n_random={n_random}; pass a smaller seed, e.g. seed=0"
        )
    return tuple(selectors)


def _random_controls(
    neurons: LanguageNeurons,
    n_random: int,
    seed: int,
    control: MatchOn,
    stats: ActivationStats | None,
    pool: int,
) -> tuple[LanguageNeurons, ...]:
    """The ``n_random`` matched random sets (seeds ``seed...``), drawn before any forward pass."""
    return tuple(
        random_matched_neurons(
            neurons,
            seed=seed + draw,
            match=control,
            stats=stats if control == "activity" else None,
            pool=pool,
        )
        for draw in range(n_random)
    )


@dataclass(frozen=True)
class _SharedRun:
    """What every matrix of one evaluation shares: the windows and the no-intervention row."""

    model: Any
    rows: tuple[str, ...]
    windows: _Windows
    baseline: tuple[list[Tensor], list[Tensor]]
    seq_len: int
    max_tokens_per_language: int | None
    scoring: _Scoring

    @classmethod
    def start(
        cls,
        model: Any,
        neurons: LanguageNeurons,
        corpus: Mapping[str, Iterable[str] | Tensor],
        languages: Sequence[str] | None,
        seq_len: int,
        max_tokens_per_language: int | None,
        scoring: _Scoring,
        n_matrices: int,
    ) -> "_SharedRun":
        """Cut the windows and compute the no-intervention row, once for the whole evaluation;
        one progress bar counts every cell of the ``n_matrices`` matrices that follow."""
        windows = _prepare(model, neurons, corpus, languages, seq_len, max_tokens_per_language)
        rows = _resolve_rows(None, neurons)
        scoring = scoring.with_bar((1 + n_matrices * len(rows)) * len(windows.languages))
        baseline = _window_row(model, windows, [], scoring, NO_INTERVENTION)
        return cls(
            model,
            rows,
            windows,
            baseline,
            seq_len,
            max_tokens_per_language,
            scoring,
        )

    def matrix(self, neuron_set: LanguageNeurons, name: str) -> PerplexityMatrix:
        """The matrix of ``neuron_set``, on the shared windows and no-intervention row."""
        return _deactivation_matrix(
            self.model,
            neuron_set,
            self.rows,
            self.windows,
            self.baseline,
            self.scoring,
            seq_len=self.seq_len,
            max_tokens_per_language=self.max_tokens_per_language,
            name=name,
        )


def _selector_matrices(
    run: _SharedRun,
    neurons: LanguageNeurons,
    stats: ActivationStats | None,
    selectors: Sequence[str],
    sizes: str,
    counts: dict[str, dict[str, int]],
) -> dict[str, PerplexityMatrix]:
    """The other selectors' sets, sized by ``sizes``, by method name (none without stats)."""
    matrices: dict[str, PerplexityMatrix] = {}
    if stats is None:
        return matrices
    for name in selectors:
        if sizes == "language":
            thresholds = selection_kwargs(neurons)
            thresholds.pop("top_rate", None)
            other = select_at_sizes(stats, neurons.counts(), method=name, **thresholds)
        else:
            other = select_with(name)(stats, neurons).select(list(neurons.languages))
        counts[name] = other.counts()
        matrices[name] = run.matrix(other, name)
    return matrices


# ============================================================================ validation helpers


def _resolve_languages(
    languages: Sequence[str] | None, corpus: Mapping[str, Any], what: str
) -> tuple[str, ...]:
    if not isinstance(corpus, Mapping) or not corpus:
        raise LapeError(
            f"{what} must be a non-empty mapping {{language: texts}}; received "
            f"{type(corpus).__name__}"
        )
    if languages is None:
        return check_languages(list(corpus), "corpus languages")
    langs = check_languages(languages, "languages")
    missing = [lang for lang in langs if lang not in corpus]
    if missing:
        raise LapeError(
            f"unknown language(s) {missing}: the {what} has {list(corpus)}. Pass languages "
            "from that list or add their text."
        )
    return langs


def _resolve_rows(deactivate: Sequence[str] | None, neurons: LanguageNeurons) -> tuple[str, ...]:
    """``deactivate`` (a sequence of the set's language codes) or, for None, all of them."""
    if deactivate is None:
        return tuple(neurons.languages)
    rows = check_languages(deactivate, "deactivate")
    unknown = [lang for lang in rows if lang not in neurons.languages]
    if unknown:
        raise LapeError(
            f"unknown language(s) {unknown} in deactivate: the neuron set has "
            f"{list(neurons.languages)}. Pass languages from that list, or None for all."
        )
    return rows
