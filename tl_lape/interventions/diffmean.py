"""DiffMean steering: the strongest simple baseline, as ordinary hooks.

CLaS-Bench (arXiv 2601.08331) found that adding the difference of two languages' mean residual
streams, ``strength * (mean_target - mean_source)`` at one layer, steers the output language
better than language neurons, probes or SAEs. tl_lape collects the means in the same streaming
pass as the firing counts (``collect_activation_stats(..., residual_means=True)``, a
:class:`~tl_lape.ResidualMeans`), and :func:`diffmean_hooks` makes the edit as ordinary
``(hook_name, fn)`` pairs, composable with any other hooks, at the hook point the means were
read at (``blocks.{l}.hook_resid_pre``).

Example:
    >>> stats, means = collect_activation_stats(  # doctest: +SKIP
    ...     model, corpus, residual_means=True
    ... )
    >>> hooks = diffmean_hooks(means, "fr", source="en", layer=3, strength=4.0)  # doctest: +SKIP
    >>> model.run_with_hooks(tokens, fwd_hooks=hooks)  # doctest: +SKIP
"""

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from tl_lape._adapter import ModelAdapter
from tl_lape.collection.residual_means import ResidualMeans
from tl_lape.errors import LapeError
from tl_lape.interventions.hooks import PositionSelector, resettable

__all__ = ["diffmean_hooks"]


class _DiffMeanHook:
    """Adds a fixed vector to the residual stream at the selected positions."""

    def __init__(self, vector: Tensor, positions: Any, name: str) -> None:
        self.vector = vector
        self.selector = PositionSelector(positions)
        self.name = name
        self._copies: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def __call__(self, resid: Tensor, hook: Any = None) -> Tensor:
        if resid.ndim != 3 or resid.shape[-1] != self.vector.shape[0]:
            raise LapeError(
                f"expected a [batch, pos, {self.vector.shape[0]}] residual stream at "
                f"{self.name!r}; received shape {tuple(resid.shape)}: the residual means were "
                "collected on a different model"
            )
        key = (resid.device, resid.dtype)
        vec = self._copies.get(key)
        if vec is None:
            vec = self._copies[key] = self.vector.to(device=resid.device, dtype=resid.dtype)
        pos = self.selector.select(resid.shape[1], self.name)
        if pos is None:
            return resid + vec
        out = resid.clone()
        out[:, pos.to(resid.device)] += vec
        return out

    def __repr__(self) -> str:
        return f"DiffMeanHook({self.name!r}, norm={float(self.vector.norm()):.3g})"


def diffmean_hooks(
    means: ResidualMeans,
    target: str,
    *,
    layer: int | Sequence[int],
    strength: float = 1.0,
    source: str | Sequence[str] | None = None,
    positions: Any = None,
    model: Any = None,
) -> list[tuple[str, Any]]:
    """Hooks adding ``strength * (mean(target) - mean(source))`` to the residual stream.

    Args:
        means: :class:`~tl_lape.ResidualMeans` of the model the hooks will run in.
        target: The language to steer toward.
        layer: The block(s) whose input residual stream (``hook_resid_pre``) is edited.
        strength: The multiple of the difference vector to add (0: no change).
        source: The language(s) to steer away from (default: the mean of the other languages).
        positions: As in :mod:`tl_lape.interventions.hooks` (``None``: all; ``"new"``:
            generated tokens only).
        model: If given, checked to have the means' layer count and width before anything runs.

    Returns:
        ``[(hook_name, fn), ...]`` for ``run_with_hooks``, ``model.hooks`` or
        :func:`~tl_lape.interventions.generation.generate_with_hooks`.

    Example:
        >>> hooks = diffmean_hooks(means, "fr", source="en", layer=3)  # doctest: +SKIP
    """
    if not isinstance(means, ResidualMeans):
        raise LapeError(f"means must be ResidualMeans; received {type(means).__name__}")
    if isinstance(strength, bool) or not isinstance(strength, int | float):
        raise LapeError(f"strength must be a number; received {strength!r}")
    if not math.isfinite(float(strength)):
        raise LapeError(f"strength must be finite; received {strength!r}")
    layers: list[Any] = (
        list(layer) if isinstance(layer, Sequence) and not isinstance(layer, str) else [layer]
    )
    bad = [
        lay
        for lay in layers
        if isinstance(lay, bool) or not isinstance(lay, int) or not 0 <= lay < means.n_layers
    ]
    if bad or not layers:
        raise LapeError(
            f"layer must be an int (or ints) in 0..{means.n_layers - 1}; received {layer!r}"
        )
    if model is not None:
        n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
        d_model = getattr(getattr(model, "cfg", None), "d_model", None)
        if (n_layers, d_model) != (means.n_layers, means.d_model):
            raise LapeError(
                f"the residual means are for n_layers={means.n_layers}, d_model={means.d_model}; "
                f"the model has n_layers={n_layers}, d_model={d_model}: collect the means on "
                "this model"
            )
    direction = means.direction(target, source).to(torch.float32) * float(strength)
    hooks = []
    for lay in layers:
        name = ModelAdapter.hook_resid_pre(lay)
        hook = _DiffMeanHook(direction[lay], positions, name)
        hooks.append((name, resettable(hook, hook.selector.reset)))
    return hooks
