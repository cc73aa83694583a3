"""Per-language mean residual streams, collected in the same pass as the firing counts.

CLaS-Bench (arXiv 2601.08331) found that adding the difference of two languages' mean residual
streams at one layer (DiffMean, :func:`tl_lape.diffmean_hooks`) steers the output language better
than language neurons, probes or SAEs. To compare LAPE's neurons with it on equal terms, tl_lape
collects the means in the *same* streaming pass as the firing counts:
``collect_activation_stats(model, corpus, residual_means=True)`` returns ``(stats, means)``
from the same windows, the same tokens counted.

The residual stream is read at ``blocks.{l}.hook_resid_pre`` (the input of block ``l``,
:meth:`~tl_lape._adapter.ModelAdapter.hook_resid_pre`), which every layer reaches before the
collection pass stops after the last layer's ``hook_pre``.

File format (:meth:`ResidualMeans.save`): one ``.safetensors`` file holding ``sums`` (float64)
and ``n_tokens`` (int64); its header's ``__metadata__`` holds ``format``
(``"tl_lape.ResidualMeans"``), ``version``, ``languages`` (a JSON list), ``metadata`` (a JSON
object) and ``checksum`` (see :mod:`tl_lape.formats`), all verified by :meth:`ResidualMeans.load`;
files written before the format tag existed (only ``languages`` and ``metadata``) load without
the check.

Example:
    >>> stats, means = collect_activation_stats(  # doctest: +SKIP
    ...     model, corpus, residual_means=True
    ... )
    >>> means.direction("fr", "en").shape  # [n_layers, d_model]  # doctest: +SKIP
    torch.Size([2, 32])
"""

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_lape._adapter import ModelAdapter
from tl_lape.checks import check_languages
from tl_lape.collection.counting import ShareCounts
from tl_lape.collection.windows import WindowBatch, WindowSettings
from tl_lape.errors import LapeError
from tl_lape.formats import (
    check_output_file,
    load_tagged_safetensors,
    parse_json,
    save_tagged_safetensors,
)

__all__ = ["ResidualMeans"]

_FORMAT = "tl_lape.ResidualMeans"
_VERSION = 1
#: The header of a file written before the format tag existed.
_LEGACY_KEYS = ("languages", "metadata")
#: The hook point read, as a pattern (metadata and messages).
HOOK_PATTERN = ModelAdapter.hook_resid_pre("{l}")


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

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the sums, counts and metadata to one safetensors file (atomically), with a
        format tag, a version and a checksum. An existing file that tl_lape did not write is
        refused unless ``overwrite=True``.

        Example:
            >>> import tempfile, pathlib
            >>> means = ResidualMeans(("en", "fr"), torch.ones(1, 2, 2, dtype=torch.float64),
            ...                       torch.tensor([3, 4]))
            >>> p = pathlib.Path(tempfile.mkdtemp()) / "means.safetensors"
            >>> means.save(p)
            >>> ResidualMeans.load(p).languages
            ('en', 'fr')
        """
        header = {
            "languages": json.dumps(list(self.languages), ensure_ascii=False),
            "metadata": json.dumps(self.metadata, ensure_ascii=False, allow_nan=False),
        }
        tensors = {"sums": self.sums, "n_tokens": self.n_tokens}
        check_output_file(path, "residual-means file", overwrite=overwrite)
        save_tagged_safetensors(path, tensors, tag=_FORMAT, version=_VERSION, header=header)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ResidualMeans":
        """Read a file written by :meth:`save` (onto the CPU).

        Raises:
            LapeError: The file is missing, not a residual-means file, of another version, or
                damaged (its checksum differs); the message names the file.
        """
        if not os.path.isfile(path):
            raise LapeError(
                f"no residual-means file at {str(path)!r}; write one with ResidualMeans.save, "
                "or collect_activation_stats(..., residual_means=True) (tl_lape collect "
                "--residual-means)"
            )
        advice = (
            "collect the residual means again (collect_activation_stats(..., residual_means=True))"
        )
        tensors, header = load_tagged_safetensors(
            path,
            what="residual-means file",
            tag=_FORMAT,
            version=_VERSION,
            advice=advice,
            required=("sums", "n_tokens"),
            legacy_keys=_LEGACY_KEYS,
        )
        name = repr(str(path))
        where = f"the residual-means file {name}"
        try:
            languages = parse_json(header["languages"], where=f"{where} (languages)", advice=advice)
            metadata = parse_json(
                header.get("metadata", "{}"), where=f"{where} (metadata)", advice=advice
            )
        except KeyError as err:
            raise LapeError(
                f"{name} is a damaged residual-means file (its header: {type(err).__name__}: "
                f"{err}); {advice}"
            ) from None
        if not isinstance(languages, list) or not isinstance(metadata, dict):
            raise LapeError(
                f"{name} is a damaged residual-means file (languages {languages!r}, metadata of "
                f"type {type(metadata).__name__}); {advice}"
            )
        try:
            return cls(tuple(languages), tensors["sums"], tensors["n_tokens"], metadata)
        except LapeError as err:
            raise LapeError(f"{name} has invalid content: {err}; {advice}") from None


class ResidualSums:
    """Hooks summing ``hook_resid_pre`` of every layer over the counted tokens of each batch.

    Also the :class:`~tl_lape.collection.counting.CollectionObserver` of the counting loop that
    tells the hooks which language each batch is.
    """

    def __init__(self, model: Any, n_layers: int, n_lang: int, skip: int) -> None:
        self.n_layers, self.n_lang, self.skip = n_layers, n_lang, skip
        self.sums: list[Tensor | None] = [None] * n_layers
        self.lang_index = 0
        self.d_model = getattr(getattr(model, "cfg", None), "d_model", None)
        hook_dict = getattr(model, "hook_dict", {})
        missing = [name for name, _ in self.hooks() if name not in hook_dict]
        if missing:
            raise LapeError(
                f"the model has no residual-stream hook point {missing[0]!r}; residual means "
                f"(DiffMean) need {HOOK_PATTERN} on every layer (TransformerLens models have "
                "it); collect without residual_means=True"
            )

    def hooks(self) -> list[tuple[str, Callable[..., None]]]:
        """``(hook_name, fn)`` pairs for the counting pass."""
        return [
            (ModelAdapter.hook_resid_pre(layer), self._make(layer))
            for layer in range(self.n_layers)
        ]

    def _make(self, layer: int) -> Callable[..., None]:
        def hook(resid: Tensor, hook: Any = None) -> None:
            acc = self.sums[layer]
            if acc is None:
                acc = torch.zeros(
                    (resid.shape[-1], self.n_lang), dtype=torch.float64, device=resid.device
                )
                self.sums[layer] = acc
            acc[:, self.lang_index] += resid[:, self.skip :].to(torch.float64).sum((0, 1))

        return hook

    # CollectionObserver
    def before_batch(self, batch: WindowBatch) -> None:
        self.lang_index = batch.lang_index

    def after_batch(self, batch: WindowBatch, **_: Any) -> None:
        pass

    def end_of_corpus(self) -> None:
        pass

    def finish(self, next_batch: int, counts: ShareCounts) -> None:
        pass

    def result(self) -> Float[Tensor, "n_layers d_model lang"]:
        """The sums, ``[n_layers, d_model, lang]`` float64 on the CPU.

        A process that counted no batch (one of many, with fewer batches than processes) gives
        zeros.
        """
        if all(s is None for s in self.sums) and isinstance(self.d_model, int):
            return torch.zeros((self.n_layers, self.d_model, self.n_lang), dtype=torch.float64)
        if any(s is None for s in self.sums):
            raise LapeError(
                f"the residual-stream hook points {HOOK_PATTERN} did not all fire; this model "
                "does not expose them, so DiffMean means cannot be collected; collect without "
                "residual_means=True"
            )
        return torch.stack([s.cpu() for s in self.sums if s is not None])

    def means(
        self,
        adapter: ModelAdapter,
        corpus: Mapping[str, Any],
        settings: WindowSettings,
        sums: Tensor,
        n_tokens: Tensor,
    ) -> "ResidualMeans":
        """The :class:`ResidualMeans` of a finished run (``sums``: all processes' together)."""
        return ResidualMeans(
            languages=tuple(corpus),
            sums=sums,
            n_tokens=n_tokens.clone(),
            metadata={
                "model_name": adapter.model_name,
                "hook": HOOK_PATTERN,
                **settings.to_dict(),
            },
        )
