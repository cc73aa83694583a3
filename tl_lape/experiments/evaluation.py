"""Causal evaluation of language neurons: perplexity under deactivation, with controls.

Finding neurons whose firing is concentrated on one language is half of the LAPE paper; the
other half shows that they matter. The test is the paper's: switch a language's neurons off
(set their activation to zero) and measure the model's next-token loss (NLL, in nats per token)
on held-out text of every language. If the neurons are language-specific, deactivating
language X raises the loss on X much more than on the other languages.

Every number here comes with a control, so a weak result is visible as weak:

- :func:`~tl_lape.neurons.random_matched_neurons` draws random neuron sets of the same size and
  the same distribution over layers as each language's set (several seeded draws);
- :func:`run_evaluation` also evaluates the paper's alternative selectors on the same statistics
  (activation probability alone, ``"lap"``, and entropy over mean activation values,
  ``"lave"``);
- :func:`selectivity` scores each deactivated language by the rise on its own text minus the
  mean rise on the others.

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

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from matplotlib.figure import Figure
from torch import Tensor

from tl_lape._adapter import ModelAdapter, adapt
from tl_lape.checks import check_languages, check_seed
from tl_lape.collection.windows import token_windows
from tl_lape.errors import LapeError
from tl_lape.interventions.hooks import deactivation_hooks
from tl_lape.judging.nll import window_nll
from tl_lape.neurons import LanguageNeurons, random_matched_neurons
from tl_lape.selection import METHODS, select_with
from tl_lape.stats import ActivationStats

__all__ = [
    "DEFAULT_MAX_TOKENS_PER_LANGUAGE",
    "NO_INTERVENTION",
    "EvaluationReport",
    "PerplexityMatrix",
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

#: The name of the evaluated set in a report (the other selectors go by their method names).
EVALUATED = "lape"

#: The other selectors :func:`run_evaluation` can compare, by method name (``selection.METHODS``).
SELECTORS: tuple[str, ...] = tuple(m for m in METHODS if m != EVALUATED)

Hooks = list[tuple[str, Callable[..., Any]]]


# ============================================================================ results


@dataclass(frozen=True)
class PerplexityMatrix:
    """Mean NLL per token of each evaluated language (columns) under each deactivation (rows).

    Row 0 is the model without intervention (:data:`NO_INTERVENTION`); row ``i > 0`` is the
    model with the neurons of language ``deactivated[i - 1]`` set to zero.

    Attributes:
        deactivated: The languages whose neurons were deactivated, one per row after the first.
        languages: The evaluated languages (columns).
        nll: ``nll[row, k]`` = mean NLL in nats per token of language k's text (float64).
        n_tokens: Number of predicted tokens per evaluated language (int64).
        metadata: How the matrix was made (neuron-set provenance, seq_len, budgets, ...).

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

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists, floats), ready for ``json.dump``."""
        return {
            "deactivated": list(self.deactivated),
            "languages": list(self.languages),
            "nll": self.nll.tolist(),
            "delta": self.delta.tolist(),
            "n_tokens": self.n_tokens.tolist(),
            "metadata": dict(self.metadata),
        }

    def to_markdown(self, *, value: str = "delta", digits: int = 3) -> str:
        """A Markdown table: rows deactivated, columns evaluated.

        Args:
            value: ``"delta"`` (NLL change, with the no-intervention NLL as the first row),
                ``"nll"`` or ``"perplexity"``.
            digits: Decimal places.
        """
        if value == "delta":
            table = torch.cat([self.nll[0:1], self.delta])
            first = f"{NO_INTERVENTION} NLL"
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
                text = f"{float(table[r, k]):.{digits}f}"
                if value == "delta" and r > 0 and lang == label:
                    text = f"**{text}**"
                cells.append(text)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, *, title: str | None = None) -> Figure:
        """Heatmap of :attr:`delta` (a diverging colour scale centred on zero)."""
        from tl_lape.plots import plot_matrix

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
    progress: bool = True,
) -> PerplexityMatrix:
    """Mean NLL of each language's text with each language's neurons deactivated in turn.

    Row 0 has no intervention; row ``i`` sets the activation of ``deactivate[i-1]``'s neurons
    to zero at every position (:func:`~tl_lape.interventions.hooks.deactivation_hooks`). All rows
    see exactly
    the same token windows.

    Args:
        model: A TransformerLens model (``TransformerBridge`` or ``HookedTransformer``).
        neurons: The language neurons, made for this model.
        corpus: ``{language: texts}`` (held-out text: not the text the neurons were selected
            on), or ``{language: 1-D tensor of token ids}``.
        languages: Evaluated languages (columns; default: every language of ``corpus``).
        deactivate: A sequence of language codes whose neurons are deactivated, one row each
            (default None: every language of ``neurons``).
        seq_len: Tokens per window.
        batch_size: Windows (sequences) per forward pass.
        max_tokens_per_language: Token budget per evaluated language (None: all the text;
            default :data:`DEFAULT_MAX_TOKENS_PER_LANGUAGE`).
        progress: Show progress bars.

    Returns:
        A :class:`PerplexityMatrix`.

    Raises:
        LapeError: If a language is unknown, a corpus is too short, or the neuron set does not
            fit the model.

    Example:
        >>> m = perplexity_matrix(model, neurons, corpus, deactivate=["fr", "zh"], seq_len=8,
        ...                       max_tokens_per_language=32, progress=False)
        >>> m.rows, m.own_is_largest().shape
        (('(none)', 'fr', 'zh'), torch.Size([2]))
    """
    adapter, evaluated, windows = _prepare(
        model, neurons, corpus, languages, seq_len, max_tokens_per_language
    )
    rows = _resolve_rows(deactivate, neurons)
    baseline, n_tokens = _nll_row(model, windows, [], batch_size, progress, NO_INTERVENTION)
    return _deactivation_matrix(
        model,
        adapter,
        neurons,
        rows,
        evaluated,
        windows,
        (baseline, n_tokens),
        batch_size=batch_size,
        progress=progress,
        seq_len=seq_len,
        max_tokens_per_language=max_tokens_per_language,
        name=None,
    )


def _prepare(
    model: Any,
    neurons: LanguageNeurons,
    corpus: Mapping[str, Iterable[str] | Tensor],
    languages: Sequence[str] | None,
    seq_len: int,
    max_tokens_per_language: int | None,
) -> tuple[ModelAdapter, tuple[str, ...], dict[str, Tensor]]:
    """Check the neuron set against the model and cut each evaluated language into windows."""
    adapter = adapt(model)
    neurons.check_compatible(adapter.n_layers, adapter.d_mlp)
    evaluated = _resolve_languages(languages, corpus, "corpus")
    windows = {
        lang: token_windows(
            model, corpus[lang], seq_len=seq_len, max_tokens=max_tokens_per_language
        )
        for lang in evaluated
    }
    return adapter, evaluated, windows


def _deactivation_matrix(
    model: Any,
    adapter: ModelAdapter,
    neuron_set: LanguageNeurons,
    rows: tuple[str, ...],
    evaluated: tuple[str, ...],
    windows: Mapping[str, Tensor],
    baseline: tuple[Tensor, Tensor],
    *,
    batch_size: int,
    progress: bool,
    seq_len: int,
    max_tokens_per_language: int | None,
    name: str | None,
) -> PerplexityMatrix:
    """The no-intervention row ``baseline`` plus one row per deactivated language of ``rows``."""
    baseline_nll, n_tokens = baseline
    nll_rows = [baseline_nll]
    for lang in rows:
        hooks = deactivation_hooks(neuron_set, [lang], model=model)
        label = lang if name is None else f"{name}:{lang}"
        nll_rows.append(_nll_row(model, windows, hooks, batch_size, progress, label)[0])
    metadata = _matrix_metadata(adapter, neuron_set, seq_len, max_tokens_per_language)
    if name is not None:
        metadata["set"] = name
    return PerplexityMatrix(rows, evaluated, torch.stack(nll_rows), n_tokens, metadata)


def _nll_row(
    model: Any,
    windows: Mapping[str, Tensor],
    hooks: Hooks,
    batch_size: int,
    progress: bool,
    label: str,
) -> tuple[Tensor, Tensor]:
    nll = torch.zeros(len(windows), dtype=torch.float64)
    counts = torch.zeros(len(windows), dtype=torch.int64)
    for k, (lang, w) in enumerate(windows.items()):
        total, count = window_nll(
            model,
            w,
            fwd_hooks=hooks,
            batch_size=batch_size,
            progress=progress,
            desc=f"deactivate {label} / eval {lang}",
        )
        nll[k] = total / count
        counts[k] = count
    return nll, counts


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
    """

    lape: PerplexityMatrix
    random: tuple[PerplexityMatrix, ...] = ()
    baselines: dict[str, PerplexityMatrix] = field(default_factory=dict)
    neuron_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

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
        return numerator / denominator if denominator > 0 else math.inf

    def n_own_largest(self) -> int:
        """For how many deactivated languages their own NLL rises more than any other's."""
        return int(self.lape.own_is_largest().sum())

    def summary(self) -> dict[str, Any]:
        """The headline numbers as plain values."""
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
        """Plain Python values, ready for ``json.dump``."""
        return {
            "lape": self.lape.to_dict(),
            "random": [m.to_dict() for m in self.random],
            "baselines": {k: m.to_dict() for k, m in self.baselines.items()},
            "neuron_counts": {k: dict(v) for k, v in self.neuron_counts.items()},
            "selectivity": self.selectivity().tolist(),
            "random_selectivity": self.random_selectivity().tolist(),
            "summary": self.summary(),
            "metadata": dict(self.metadata),
        }

    def to_markdown(self) -> str:
        """A Markdown report: the NLL-change matrix, per-language selectivity and the summary."""
        s = self.summary()
        lines = [
            *self._markdown_matrix(s),
            *self._markdown_language_table(),
            "",
            *self._markdown_comparisons(s),
        ]
        return "\n".join(lines).rstrip() + "\n"

    def _markdown_matrix(self, s: Mapping[str, Any]) -> list[str]:
        """The report's first section: the NLL-change matrix and how often the own text rises."""
        return [
            "### Perplexity under deactivation",
            "",
            "NLL change (nats/token) on held-out text of each language (columns) when one "
            "language's neurons are set to zero (rows); the first row is the NLL without "
            "intervention. Bold: the deactivated language's own text.",
            "",
            self.lape.to_markdown(),
            "",
            f"Deactivating X raises X's NLL more than any other language's for "
            f"**{s['n_own_largest']} of {s['n_deactivated']}** languages.",
            "",
        ]

    def _markdown_language_table(self) -> list[str]:
        """Per deactivated language: neurons, own rise and selectivity, with the controls."""
        header = "| language | neurons | own rise | selectivity |"
        sep = "| --- | ---: | ---: | ---: |"
        rand_sel = self.random_selectivity()
        rand_own = self.random_own_rise()
        if self.random:
            header += " random own rise | random selectivity |"
            sep += " ---: | ---: |"
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
            row = f"| {lang} | {counts.get(lang, '-')} | {float(own[i]):+.4f} |"
            row += f" {float(sel[i]):+.4f} |"
            if self.random:
                row += f" {_mean_sd(rand_own[:, i])} | {_mean_sd(rand_sel[:, i])} |"
            for name in names:
                row += f" {float(baseline_sel[name][i]):+.4f} |"
            lines.append(row)
        return lines

    def _markdown_comparisons(self, s: Mapping[str, Any]) -> list[str]:
        """One line for the random controls and one per other selector."""
        lines = []
        if self.random:
            lines.append(
                f"Mean selectivity: LAPE {s['mean_selectivity']:+.4f} nats; matched random sets "
                f"({len(self.random)} draws) {s['random_mean_selectivity']:+.4f} (mean |.| "
                f"{s['random_mean_abs_selectivity']:.4f}); ratio **{s['selectivity_ratio']:.1f}x**."
            )
        for name in self.baselines:
            lines.append(
                f"{_label(name)}: mean selectivity {s[f'{name}_mean_selectivity']:+.4f}, own "
                f"language rises most for {s[f'{name}_n_own_largest']} of {s['n_deactivated']}."
            )
        return lines

    def figures(self) -> dict[str, Figure]:
        """Figures by file stem: the NLL-change heatmap and a selectivity bar chart."""
        return {
            "perplexity_change": self.lape.plot(),
            "selectivity": self.plot_selectivity(),
        }

    def plot_selectivity(self) -> Figure:
        """Bars of per-language selectivity: LAPE, the other selectors and the random draws."""
        langs = list(self.lape.deactivated)
        series: dict[str, Tensor] = {_label(EVALUATED): self.selectivity()}
        for name, matrix in self.baselines.items():
            series[_label(name)] = selectivity(matrix)
        rand = self.random_selectivity()
        if rand.numel():
            series["random (mean)"] = rand.mean(dim=0)
        fig = Figure(figsize=(max(6.0, 0.9 * len(langs) + 2), 4.0), layout="constrained")
        ax = fig.add_subplot()
        width = 0.8 / len(series)
        for s, (name, values) in enumerate(series.items()):
            xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(langs))]
            ax.bar(xs, values.nan_to_num(0.0).tolist(), width=width, label=name)
        if rand.numel():
            spread = rand.std(dim=0, correction=0)
            s = len(series) - 1
            xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(langs))]
            ax.errorbar(xs, rand.mean(dim=0).tolist(), yerr=spread.tolist(), fmt="none", color="k")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(langs)), labels=langs)
        ax.set_xlabel("deactivated language")
        ax.set_ylabel("own rise − mean rise on others (nats)")
        ax.set_title("Selectivity of deactivation")
        ax.legend(fontsize="small")
        return fig


def _label(name: str) -> str:
    """How a report shows a selector: its method name upper-cased (``"lap"`` -> ``LAP``)."""
    return name.upper() if name in METHODS else name


def _mean_sd(values: Tensor) -> str:
    return f"{float(values.mean()):+.4f} ± {float(values.std(correction=0)):.4f}"


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
    progress: bool = True,
) -> EvaluationReport:
    """Evaluate a neuron set by deactivation, against matched random sets and other selectors.

    Computes the :func:`perplexity_matrix` of ``neurons``, of ``n_random`` seeded random sets
    matched to it (:func:`random_matched_neurons`, seeds ``seed .. seed + n_random - 1``), and,
    when ``stats`` is given, of the paper's alternative selectors on those statistics with the
    same neuron budget (``"lap"``: activation probability alone; ``"lave"``: entropy over
    mean activation values). The no-intervention row and the token windows are shared.

    Args:
        model: A TransformerLens model.
        neurons: The neuron set to evaluate (e.g. from
            :func:`~tl_lape.selection.identify_language_neurons`).
        corpus: Held-out ``{language: texts}``.
        stats: The :class:`~tl_lape.stats.ActivationStats` the set was selected from, for the
            other selectors (optional).
        n_random: Number of random draws (0 for none).
        seed: Seed of the first random draw.
        selectors: Which other selectors to run when ``stats`` is given: method names of
            :data:`~tl_lape.selection.METHODS` other than ``"lape"`` (default both).
        languages: Evaluated languages (default: those of ``corpus``).
        seq_len: Tokens per window.
        batch_size: Windows (sequences) per forward pass.
        max_tokens_per_language: Token budget per evaluated language (default
            :data:`DEFAULT_MAX_TOKENS_PER_LANGUAGE`).
        progress: Show progress bars.

    Returns:
        An :class:`EvaluationReport`.

    Example:
        >>> report = run_evaluation(model, neurons, corpus, stats=stats, n_random=1,
        ...                         seq_len=8, max_tokens_per_language=32, progress=False)
        >>> sorted(report.baselines), len(report.random)
        (['lap', 'lave'], 1)
    """
    selectors = _check_evaluation_options(n_random, seed, selectors)
    run = _SharedRun.start(
        model, neurons, corpus, languages, seq_len, batch_size, max_tokens_per_language, progress
    )
    counts: dict[str, dict[str, int]] = {EVALUATED: neurons.counts()}
    lape = run.matrix(neurons, EVALUATED)
    random_matrices = _random_matrices(run, neurons, n_random, seed)
    baselines = _selector_matrices(run, neurons, stats, selectors, counts)
    metadata = {
        "model_name": run.adapter.model_name,
        "n_random": n_random,
        "seed": seed,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "max_tokens_per_language": max_tokens_per_language,
        "neurons": dict(neurons.metadata),
    }
    return EvaluationReport(lape, random_matrices, baselines, counts, metadata)


def _check_evaluation_options(n_random: Any, seed: Any, selectors: Any) -> tuple[str, ...]:
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
    return tuple(selectors)


@dataclass(frozen=True)
class _SharedRun:
    """What every matrix of one evaluation shares: the windows and the no-intervention row."""

    model: Any
    adapter: ModelAdapter
    rows: tuple[str, ...]
    evaluated: tuple[str, ...]
    windows: dict[str, Tensor]
    baseline: tuple[Tensor, Tensor]
    seq_len: int
    batch_size: int
    max_tokens_per_language: int | None
    progress: bool

    @classmethod
    def start(
        cls,
        model: Any,
        neurons: LanguageNeurons,
        corpus: Mapping[str, Iterable[str] | Tensor],
        languages: Sequence[str] | None,
        seq_len: int,
        batch_size: int,
        max_tokens_per_language: int | None,
        progress: bool,
    ) -> "_SharedRun":
        """Cut the windows and compute the no-intervention row, once for the whole evaluation."""
        adapter, evaluated, windows = _prepare(
            model, neurons, corpus, languages, seq_len, max_tokens_per_language
        )
        baseline = _nll_row(model, windows, [], batch_size, progress, NO_INTERVENTION)
        return cls(
            model,
            adapter,
            _resolve_rows(None, neurons),
            evaluated,
            windows,
            baseline,
            seq_len,
            batch_size,
            max_tokens_per_language,
            progress,
        )

    def matrix(self, neuron_set: LanguageNeurons, name: str) -> PerplexityMatrix:
        """The matrix of ``neuron_set``, on the shared windows and no-intervention row."""
        return _deactivation_matrix(
            self.model,
            self.adapter,
            neuron_set,
            self.rows,
            self.evaluated,
            self.windows,
            self.baseline,
            batch_size=self.batch_size,
            progress=self.progress,
            seq_len=self.seq_len,
            max_tokens_per_language=self.max_tokens_per_language,
            name=name,
        )


def _random_matrices(
    run: _SharedRun, neurons: LanguageNeurons, n_random: int, seed: int
) -> tuple[PerplexityMatrix, ...]:
    """The matrices of ``n_random`` random sets matched to ``neurons`` (seeds ``seed...``)."""
    return tuple(
        run.matrix(random_matched_neurons(neurons, seed=seed + draw), f"random{draw}")
        for draw in range(n_random)
    )


def _selector_matrices(
    run: _SharedRun,
    neurons: LanguageNeurons,
    stats: ActivationStats | None,
    selectors: Sequence[str],
    counts: dict[str, dict[str, int]],
) -> dict[str, PerplexityMatrix]:
    """The other selectors' sets at ``neurons``' budget, by method name (none without stats)."""
    matrices: dict[str, PerplexityMatrix] = {}
    if stats is None:
        return matrices
    for name in selectors:
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
