"""Figures of neuron sets and intervention results.

Every function returns a :class:`matplotlib.figure.Figure` and never shows it: the caller
displays it in a notebook or saves it with
``fig.savefig(path)``. The figures are built with the object-oriented API, so they do not
touch pyplot's global state and work under any backend. In Jupyter, a figure returned as a
cell's value is drawn once the inline backend is active (``%matplotlib inline``).

Example:
    >>> fig = plot_neurons_per_layer(neurons)
    >>> fig.axes[0].get_xlabel()  # save it with fig.savefig("neurons_per_layer.png")
    'layer'
"""

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

from tl_lape.checks import check_languages
from tl_lape.errors import LapeError
from tl_lape.neurons import LanguageNeurons

__all__ = [
    "plot_matrix",
    "plot_neurons_per_layer",
    "plot_overlap",
]


def plot_neurons_per_layer(
    neurons: LanguageNeurons,
    *,
    languages: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Stacked bars: how many of each language's neurons sit in each layer.

    The paper finds language neurons concentrated in the bottom and top layers; this is the
    figure that shows whether a model follows that pattern.

    Args:
        neurons: The neuron set to draw.
        languages: A subset of ``neurons.languages`` to draw, in this order (default: all).
        title: Figure title (default: a count of the neurons drawn).

    Returns:
        A figure with one axis: layers on x, number of neurons on y, one colour per language.
    """
    langs = _known_languages(neurons, languages)
    per_layer = neurons.counts_per_layer()  # [lang, n_layers]
    fig = Figure(figsize=(max(6.0, 0.35 * neurons.n_layers + 3), 4.0), layout="constrained")
    ax = fig.add_subplot()
    layers = torch.arange(neurons.n_layers).tolist()
    bottom = [0] * neurons.n_layers
    for lang in langs:
        row = per_layer[neurons.languages.index(lang)].tolist()
        ax.bar(layers, row, bottom=bottom, label=lang)
        bottom = [b + r for b, r in zip(bottom, row, strict=True)]
    ax.set_xlabel("layer")
    ax.set_ylabel("neurons")
    total = sum(neurons.counts()[lang] for lang in langs)
    ax.set_title(title or f"Language neurons per layer ({total} language-neuron pairs)")
    ax.set_xticks(layers)
    ax.legend(title="language", ncols=min(len(langs), 4), fontsize="small")
    return fig


def plot_overlap(
    neurons: LanguageNeurons,
    *,
    metric: str = "jaccard",
    title: str | None = None,
) -> Figure:
    """Heatmap of the overlap between languages' neuron sets.

    Args:
        neurons: The neuron set to draw.
        metric: ``"jaccard"`` (intersection over union) or ``"count"`` (shared neurons; the
            diagonal holds each language's own count).
        title: Figure title.

    Returns:
        A figure with one annotated heatmap, languages on both axes.
    """
    if metric == "jaccard":
        matrix = neurons.jaccard().to(torch.float64)
        fmt = "{:.2f}"
    elif metric == "count":
        matrix = neurons.overlap().to(torch.float64)
        fmt = "{:.0f}"
    else:
        raise LapeError(
            f"plot_overlap: metric must be 'jaccard' or 'count', got {metric!r}. "
            "Pass one of those two."
        )
    langs = list(neurons.languages)
    return plot_matrix(
        matrix,
        rows=langs,
        columns=langs,
        fmt=fmt,
        cmap="Blues",
        title=title or f"Overlap between languages' neurons ({metric})",
        colorbar_label=metric,
    )


def plot_matrix(
    matrix: torch.Tensor,
    *,
    rows: Sequence[str],
    columns: Sequence[str],
    fmt: str = "{:.2f}",
    cmap: str = "viridis",
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    colorbar_label: str = "",
    center: float | None = None,
    labels: Sequence[Sequence[str]] | None = None,
) -> Figure:
    """An annotated heatmap of a small ``[rows, columns]`` matrix.

    Args:
        matrix: The values, shape ``[len(rows), len(columns)]``.
        rows: Row labels.
        columns: Column labels.
        fmt: Format string for the annotation in each cell.
        cmap: A matplotlib colormap name.
        title: Figure title.
        xlabel: Label of the x axis (columns).
        ylabel: Label of the y axis (rows).
        colorbar_label: Label of the colour bar.
        center: If given, the colour scale is symmetric around this value (use with a
            diverging colormap such as ``"RdBu_r"`` for changes).
        labels: The text of each cell, ``[len(rows)][len(columns)]`` (e.g. an estimate with
            its interval on a second line); default: each value formatted with ``fmt``.

    Returns:
        The figure.
    """
    if matrix.ndim != 2 or tuple(matrix.shape) != (len(rows), len(columns)):
        raise LapeError(
            f"plot_matrix: matrix has shape {tuple(matrix.shape)} but {len(rows)} row labels "
            f"and {len(columns)} column labels were given. Pass one label per row and column."
        )
    if labels is not None and (
        len(labels) != len(rows) or any(len(row) != len(columns) for row in labels)
    ):
        raise LapeError(
            f"plot_matrix: labels must give one text per cell, {len(rows)} rows of "
            f"{len(columns)}; received {[len(row) for row in labels]} texts per row"
        )
    values = matrix.detach().to(torch.float64).cpu()
    finite = values[torch.isfinite(values)]
    vmin = float(finite.min()) if finite.numel() else 0.0
    vmax = float(finite.max()) if finite.numel() else 1.0
    if center is not None:
        half = max(abs(vmax - center), abs(center - vmin), 1e-12)
        vmin, vmax = center - half, center + half
    fig = Figure(
        figsize=(1.0 + 0.8 * len(columns) + 1.5, 1.0 + 0.6 * len(rows) + 0.5),
        layout="constrained",
    )
    ax = fig.add_subplot()
    image = ax.imshow(values.numpy(), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(columns)), labels=list(columns))
    ax.set_yticks(range(len(rows)), labels=list(rows))
    mid = (vmin + vmax) / 2
    for i in range(len(rows)):
        for j in range(len(columns)):
            value = float(values[i, j])
            dark = value > mid if center is None else abs(value - center) > (vmax - vmin) / 4
            ax.text(
                j,
                i,
                fmt.format(value) if labels is None else labels[i][j],
                ha="center",
                va="center",
                fontsize="small",
                color="white" if dark else "black",
            )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    return fig


def _known_languages(neurons: LanguageNeurons, languages: Sequence[str] | None) -> list[str]:
    """``languages`` (checked, all known to ``neurons``), or all of ``neurons.languages``."""
    if languages is None:
        return list(neurons.languages)
    languages = check_languages(languages)
    unknown = [lang for lang in languages if lang not in neurons.languages]
    if unknown:
        raise LapeError(
            f"unknown language(s) {unknown}: the neuron set has {list(neurons.languages)}. "
            "Pass languages from that list."
        )
    return list(languages)
