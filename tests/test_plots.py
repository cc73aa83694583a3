"""Figures are built without pyplot, carry the data they are given, and validate input."""

from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

import tl_lape
from tl_lape.plots import plot_matrix, plot_neurons_per_layer, plot_overlap


def _neurons() -> tl_lape.LanguageNeurons:
    masks = torch.zeros(2, 3, 8, dtype=torch.bool)  # lang n_layers d_mlp
    masks[0, 0, :4] = True
    masks[1, 2, 2:5] = True
    masks[1, 0, 0] = True
    return tl_lape.LanguageNeurons.from_masks(masks, ["en", "fr"])


def test_neurons_per_layer_stacks_one_bar_per_layer_and_language(tmp_path: Path) -> None:
    fig = plot_neurons_per_layer(_neurons())
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    assert heights == [4, 0, 0, 1, 0, 3]  # en's three layers, then fr's
    fig.savefig(tmp_path / "layers.png")
    assert (tmp_path / "layers.png").stat().st_size > 0


def test_overlap_annotates_jaccard_and_counts() -> None:
    neurons = _neurons()
    fig = plot_overlap(neurons)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["1.00", "0.14", "0.14", "1.00"]  # 1 shared of 7 in the union
    fig = plot_overlap(neurons, metric="count")
    assert [t.get_text() for t in fig.axes[0].texts] == ["4", "1", "1", "4"]


def test_bad_input_is_reported() -> None:
    with pytest.raises(tl_lape.LapeError, match="metric must be 'jaccard' or 'count'"):
        plot_overlap(_neurons(), metric="dice")
    with pytest.raises(tl_lape.LapeError, match=r"unknown language\(s\) \['de'\]"):
        plot_neurons_per_layer(_neurons(), languages=["de"])
    with pytest.raises(tl_lape.LapeError, match=r"shape \(2, 2\) but 3 row labels"):
        plot_matrix(torch.zeros(2, 2), rows=["a", "b", "c"], columns=["x", "y"])
