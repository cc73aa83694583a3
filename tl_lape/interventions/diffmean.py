"""Per-language residual-stream means, and DiffMean steering: the strongest simple baseline.

CLaS-Bench (arXiv 2601.08331) found that adding the difference of two languages' mean residual
streams, ``strength * (mean_target - mean_source)`` at one layer, steers the output language
better than language neurons, probes or SAEs. To compare LAPE's neurons with it on equal terms,
tl_lape collects the means in the *same* streaming pass as the firing counts
(:func:`collect_stats_and_residual_means`: the same windows, the same tokens counted), and
:func:`diffmean_hooks` makes the edit as ordinary ``(hook_name, fn)`` pairs, composable with
any other hooks.

The residual stream is read at ``blocks.{l}.hook_resid_pre`` (the input of block ``l``), which
every layer reaches before the collection pass stops after the last layer's ``hook_pre``; the
edit is made at the same hook point.

Example:
    >>> stats, means = collect_stats_and_residual_means(model, corpus)  # doctest: +SKIP
    >>> hooks = diffmean_hooks(means, "fr", source="en", layer=3, strength=4.0)  # doctest: +SKIP
    >>> model.run_with_hooks(tokens, fwd_hooks=hooks)  # doctest: +SKIP
"""

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_lape._adapter import adapt
from tl_lape.checks import check_languages
from tl_lape.collection.engine import (
    CollectionObserver,
    ShareCounts,
    count_share,
    make_settings,
    stats_from_counts,
)
from tl_lape.collection.windows import WindowBatch
from tl_lape.errors import LapeError
from tl_lape.formats import atomic_path
from tl_lape.interventions.hooks import PositionSelector
from tl_lape.stats import ActivationStats

__all__ = [
    "ResidualMeans",
    "collect_stats_and_residual_means",
    "diffmean_hooks",
    "resid_hook_name",
]


def resid_hook_name(layer: int) -> str:
    """The hook point DiffMean reads and edits: the residual stream entering block ``layer``."""
    return f"blocks.{layer}.hook_resid_pre"


@dataclass(frozen=True)
class ResidualMeans:
    """Mean residual stream per layer and language.

    Attributes:
        languages: Language codes, in the order of the last axis of ``sums``.
        sums: Sum of ``blocks.{l}.hook_resid_pre`` over the counted tokens,
            ``[n_layers, d_model, lang]`` float64.
        n_tokens: Counted tokens per language (the BOS position, if any, is not counted).
        metadata: Provenance (model name, window settings).
    """

    languages: tuple[str, ...]
    sums: Float[Tensor, "n_layers d_model lang"]
    n_tokens: Int[Tensor, " lang"]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        langs = check_languages(self.languages)
        sums, n_tokens = self.sums, self.n_tokens
        if not isinstance(sums, Tensor) or sums.ndim != 3 or sums.shape[-1] != len(langs):
            raise LapeError(
                f"sums must be a [n_layers, d_model, {len(langs)}] tensor; received "
                f"{getattr(sums, 'shape', type(sums).__name__)}"
            )
        if not isinstance(n_tokens, Tensor) or tuple(n_tokens.shape) != (len(langs),):
            raise LapeError(
                f"n_tokens must be a [{len(langs)}] tensor; received "
                f"{getattr(n_tokens, 'shape', type(n_tokens).__name__)}"
            )
        if bool((n_tokens < 1).any()):
            raise LapeError(
                f"every language needs at least one counted token; n_tokens is "
                f"{n_tokens.tolist()} for {list(langs)}"
            )
        if not bool(torch.isfinite(sums).all()):
            raise LapeError("sums must be finite; received NaN or infinite values")
        object.__setattr__(self, "languages", langs)

    @property
    def n_layers(self) -> int:
        """Number of layers."""
        return int(self.sums.shape[0])

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return int(self.sums.shape[1])

    def means(self) -> Float[Tensor, "n_layers d_model lang"]:
        """``sums / n_tokens`` (float64)."""
        return self.sums / self.n_tokens.to(torch.float64)

    def _index(self, language: str) -> int:
        if language not in self.languages:
            raise LapeError(
                f"unknown language {language!r}: the residual means have {list(self.languages)}"
            )
        return self.languages.index(language)

    def direction(
        self, target: str, source: str | Sequence[str] | None = None
    ) -> Float[Tensor, "n_layers d_model"]:
        """``mean(target) - mean(source)`` per layer (float64).

        ``source=None`` takes the mean over the other languages' means; a list takes the mean of
        those languages' means.
        """
        means = self.means()
        t = self._index(target)
        if source is None:
            names = [lang for lang in self.languages if lang != target]
        elif isinstance(source, str):
            names = [source]
        elif isinstance(source, Sequence) and all(isinstance(x, str) for x in source):
            names = list(source)
        else:
            raise LapeError(
                f"source must be a language, a list of languages or None; received {source!r}"
            )
        if not names or target in names:
            raise LapeError(
                f"DiffMean needs source languages other than the target {target!r}; received "
                f"source={source!r} (the residual means have {list(self.languages)})"
            )
        others = [self._index(lang) for lang in names]
        return means[..., t] - means[..., others].mean(-1)

    def save(self, path: str | Path) -> None:
        """Write the sums, counts and metadata to one safetensors file (atomically)."""
        from safetensors.torch import save

        header = {
            "languages": json.dumps(list(self.languages)),
            "metadata": json.dumps(self.metadata),
        }
        blob = save(
            {"sums": self.sums.contiguous(), "n_tokens": self.n_tokens.contiguous()},
            metadata=header,
        )
        with atomic_path(path) as tmp:
            tmp.write_bytes(blob)

    @classmethod
    def load(cls, path: str | Path) -> "ResidualMeans":
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise LapeError(f"no residual-means file at {str(path)!r}; write one with .save()")
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
                sums, n_tokens = fh.get_tensor("sums"), fh.get_tensor("n_tokens")
            languages = tuple(json.loads(header["languages"]))
            metadata = json.loads(header.get("metadata", "{}"))
        except Exception as err:
            raise LapeError(
                f"{str(path)!r} is not a residual-means file written by ResidualMeans.save "
                f"({type(err).__name__}: {err})"
            ) from err
        return cls(languages, sums, n_tokens, metadata)


class _ResidualSums:
    """Hooks summing ``hook_resid_pre`` of every layer over the counted tokens of each batch."""

    def __init__(self, n_layers: int, n_lang: int, skip: int) -> None:
        self.n_layers, self.n_lang, self.skip = n_layers, n_lang, skip
        self.sums: list[Tensor | None] = [None] * n_layers
        self.lang_index = 0

    def hooks(self) -> list[tuple[str, Any]]:
        return [(resid_hook_name(layer), self._make(layer)) for layer in range(self.n_layers)]

    def _make(self, layer: int) -> Any:
        def hook(resid: Tensor, hook: Any = None) -> None:
            acc = self.sums[layer]
            if acc is None:
                acc = torch.zeros(
                    (resid.shape[-1], self.n_lang), dtype=torch.float64, device=resid.device
                )
                self.sums[layer] = acc
            acc[:, self.lang_index] += resid[:, self.skip :].to(torch.float64).sum((0, 1))

        return hook

    def result(self) -> Tensor:
        if any(s is None for s in self.sums):
            raise LapeError(
                "the residual-stream hook points blocks.{l}.hook_resid_pre did not all fire; "
                "this model does not expose them, so DiffMean means cannot be collected"
            )
        return torch.stack([s.cpu() for s in self.sums if s is not None])


class _FollowLanguage(CollectionObserver):
    """Tells the residual sums which language each batch is."""

    def __init__(self, sums: _ResidualSums) -> None:
        self._sums = sums

    def before_batch(self, batch: WindowBatch) -> None:
        self._sums.lang_index = batch.lang_index

    def after_batch(self, batch: WindowBatch, **_: Any) -> None:
        pass

    def end_of_corpus(self) -> None:
        pass

    def finish(self, next_batch: int, counts: ShareCounts) -> None:
        pass


def collect_stats_and_residual_means(
    model: Any,
    corpus: Mapping[str, Iterable[str] | Int[Tensor, " n_tokens"]],
    *,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens_per_language: int | None = None,
    prepend_bos: bool = False,
    drop_last: bool = True,
    progress: bool = True,
) -> tuple[ActivationStats, ResidualMeans]:
    """:func:`~tl_lape.collect_activation_stats` and the per-language residual means, one pass.

    The arguments are those of :func:`~tl_lape.collect_activation_stats` (without ``fwd_hooks``);
    the statistics are
    identical to its (the residual hooks only read). The means cost one ``[n_layers, d_model,
    lang]`` float64 accumulator.

    Returns:
        ``(stats, means)``.
    """
    adapter = adapt(model)
    settings = make_settings(
        adapter,
        corpus,
        seq_len=seq_len,
        batch_size=batch_size,
        max_tokens_per_language=max_tokens_per_language,
        prepend_bos=prepend_bos,
        drop_last=drop_last,
    )
    missing = [
        resid_hook_name(layer)
        for layer in range(adapter.n_layers)
        if resid_hook_name(layer) not in model.hook_dict
    ]
    if missing:
        raise LapeError(
            f"the model has no residual-stream hook point {missing[0]!r}; DiffMean needs "
            "blocks.{l}.hook_resid_pre (TransformerLens models have it)"
        )
    sums = _ResidualSums(adapter.n_layers, len(corpus), int(settings.prepend_bos))
    counts = count_share(
        adapter,
        corpus,
        settings,
        fwd_hooks=sums.hooks(),
        progress=progress,
        observer=_FollowLanguage(sums),
    )
    stats = stats_from_counts(adapter, corpus, settings, counts)
    means = ResidualMeans(
        languages=tuple(corpus),
        sums=sums.result(),
        n_tokens=counts.n_tokens.clone(),
        metadata={
            "model_name": adapter.model_name,
            "hook": "blocks.{l}.hook_resid_pre",
            **settings.to_dict(),
        },
    )
    return stats, means


class _DiffMeanHook:
    """Adds a fixed vector to the residual stream at the selected positions."""

    def __init__(self, vector: Tensor, positions: Any, name: str) -> None:
        self.vector = vector
        self.positions = positions
        self.selector = PositionSelector(positions)
        self.name = name
        self._copies: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def reset_positions(self) -> None:
        self.selector = PositionSelector(self.positions)

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
        means: :class:`ResidualMeans` of the model the hooks will run in.
        target: The language to steer toward.
        layer: The block(s) whose input residual stream (``hook_resid_pre``) is edited.
        strength: The multiple of the difference vector to add (0: no change).
        source: The language(s) to steer away from (default: the mean of the other languages).
        positions: As in :mod:`tl_lape.interventions.hooks` (``None``: all; ``"new"``: generated
        tokens only).
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
    return [
        (resid_hook_name(lay), _DiffMeanHook(direction[lay], positions, resid_hook_name(lay)))
        for lay in layers
    ]
