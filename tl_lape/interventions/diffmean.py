"""DiffMean steering: the strongest simple baseline, as ordinary hooks.

CLaS-Bench (arXiv 2601.08331) found that adding the difference of two languages' mean residual
streams, ``strength * (mean_target - mean_source)`` at one layer, steers the output language
better than language neurons, probes or SAEs. tl_lape collects the means in the same streaming
pass as the firing counts (``collect_activation_stats(..., residual_means=True)``, a
:class:`~tl_lape.ResidualMeans`), and :func:`diffmean_hooks` makes the edit as ordinary
``(hook_name, fn)`` pairs, composable with any other hooks, at the hook point the means were
read at (``blocks.{l}.hook_resid_pre``).

Two variants, as options of the same function:

- ``normalize=True`` is CLaS-Bench's form: at every layer of a range, the *unit-norm*
  difference of means times ``strength`` (their alpha), so ``strength`` is the added vector's
  norm at each layer, whatever the layer's scale.
- ``random_seed=k`` is DiffMean's norm-matched random control: at each layer, a random
  direction (seeded, Gaussian) scaled to the norm the DiffMean vector has there, so the control
  adds exactly as much to the residual stream, in a direction that carries no language.

Example:
    >>> stats, means = collect_activation_stats(  # doctest: +SKIP
    ...     model, corpus, residual_means=True
    ... )
    >>> hooks = diffmean_hooks(means, "fr", source="en", layer=3, strength=4.0)  # doctest: +SKIP
    >>> model.run_with_hooks(tokens, fwd_hooks=hooks)  # doctest: +SKIP
    >>> clas = diffmean_hooks(means, "fr", layer=range(2, 6), strength=8.0,
    ...                       normalize=True)  # doctest: +SKIP
"""

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_lape._adapter import ModelAdapter
from tl_lape.checks import check_seed
from tl_lape.collection.residual_means import ResidualMeans
from tl_lape.errors import LapeError
from tl_lape.interventions.hooks import PositionSelector, resettable

__all__ = ["diffmean_hooks", "diffmean_vectors"]


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
    normalize: bool = False,
    random_seed: int | None = None,
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
        normalize: Add ``strength`` times the *unit* difference direction at each layer
            (CLaS-Bench's form: ``strength`` is their alpha, the added norm per layer).
        random_seed: If given, replace each layer's direction by a random one of the same norm
            (a Gaussian draw seeded by ``random_seed`` and the layer): the norm-matched random
            control of the same configuration.

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
    layers = _check_layers(layer, means.n_layers)
    if model is not None:
        n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
        d_model = getattr(getattr(model, "cfg", None), "d_model", None)
        if (n_layers, d_model) != (means.n_layers, means.d_model):
            raise LapeError(
                f"the residual means are for n_layers={means.n_layers}, d_model={means.d_model}; "
                f"the model has n_layers={n_layers}, d_model={d_model}: collect the means on "
                "this model"
            )
    vectors = diffmean_vectors(
        means,
        target,
        layer=layers,
        strength=strength,
        source=source,
        normalize=normalize,
        random_seed=random_seed,
    )
    hooks = []
    for lay, vector in vectors.items():
        name = ModelAdapter.hook_resid_pre(lay)
        hook = _DiffMeanHook(vector, positions, name)
        hooks.append((name, resettable(hook, hook.selector.reset)))
    return hooks


def diffmean_vectors(
    means: ResidualMeans,
    target: str,
    *,
    layer: int | Sequence[int],
    strength: float = 1.0,
    source: str | Sequence[str] | None = None,
    normalize: bool = False,
    random_seed: int | None = None,
) -> dict[int, Float[Tensor, " d_model"]]:
    """The vector :func:`diffmean_hooks` adds at each layer (same arguments), float32.

    Example:
        >>> means = ResidualMeans(("en", "fr"), torch.tensor([[[0.0, 3.0], [0.0, 4.0]]],
        ...                       dtype=torch.float64), torch.tensor([1, 1]))
        >>> diffmean_vectors(means, "fr", layer=0, strength=2.0)[0].tolist()
        [6.0, 8.0]
        >>> diffmean_vectors(means, "fr", layer=0, strength=2.0, normalize=True)[0].tolist()
        [1.2000000476837158, 1.600000023841858]
        >>> float(diffmean_vectors(means, "fr", layer=0, random_seed=1)[0].norm())
        5.0
    """
    if not isinstance(normalize, bool):
        raise LapeError(f"normalize must be True or False; received {normalize!r}")
    if random_seed is not None:
        check_seed(random_seed, "random_seed")
    layers = _check_layers(layer, means.n_layers)
    direction = means.direction(target, source)  # n_layers d_model, float64
    out: dict[int, Tensor] = {}
    for lay in layers:
        vec = direction[lay]  # d_model
        norm = vec.norm()
        if random_seed is not None:
            gen = torch.Generator().manual_seed(random_seed * 100_003 + lay)
            draw = torch.randn(vec.shape, generator=gen, dtype=torch.float64)  # d_model
            vec = draw * (norm / draw.norm())
        if normalize:
            if float(norm) == 0.0:
                raise LapeError(
                    f"the {target!r} and source means are equal at layer {lay}, so their "
                    "difference has no direction to normalize; choose other layers"
                )
            vec = vec / norm
        out[lay] = vec.to(torch.float32) * float(strength)  # the float32 edit, as ever
    return out


def _check_layers(layer: Any, n_layers: int) -> list[int]:
    """``layer`` (an int or ints, a range too) as a list of valid layers, or a LapeError."""
    layers: list[Any] = (
        list(layer) if isinstance(layer, Sequence) and not isinstance(layer, str) else [layer]
    )
    bad = [
        lay
        for lay in layers
        if isinstance(lay, bool) or not isinstance(lay, int) or not 0 <= lay < n_layers
    ]
    if bad or not layers or len(set(layers)) != len(layers):
        raise LapeError(
            f"layer must be an int (or distinct ints, e.g. range(2, 6)) in 0..{n_layers - 1}; "
            f"received {layer!r}"
        )
    return layers
