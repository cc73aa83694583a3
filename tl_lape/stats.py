"""Per-language activation statistics of every MLP neuron: the input of the LAPE selection.

For each layer ``l``, neuron ``n`` and language ``k`` an :class:`ActivationStats` holds

* ``active_counts[l, n, k]``: on how many of language k's tokens the neuron fired
  (``hook_pre > 0``, i.e. ``act_fn(gate) > 0`` as in the paper),
* ``activation_sums[l, n, k]``: the sum of its activation value ``act_fn(hook_pre)`` over them,
* ``n_tokens[k]``: how many tokens of language k were seen.

Its size grows with ``n_layers * d_mlp * n_languages``, never with the corpus: statistics of two
corpora (or two machines) combine with :meth:`ActivationStats.merge` (or ``+``). Statistics
computed elsewhere, e.g. by the paper's own scripts (one ``[n_layers, d_mlp]`` count tensor per
language), come in through :meth:`ActivationStats.from_counts`.

File format (:meth:`ActivationStats.save`): one ``.safetensors`` file holding the three tensors
``active_counts`` (int64), ``activation_sums`` (float64) and ``n_tokens`` (int64); its header's
``__metadata__`` holds ``format`` (``"tl_lape.ActivationStats"``), ``version``, ``languages`` (a
JSON list), ``metadata`` (a JSON object), ``checksum`` (``"sha256:..."`` of the three tensors'
names, dtypes, shapes and bytes) and ``header_checksum`` (of the other header entries), verified
by :meth:`ActivationStats.load`, which also refuses a header entry it does not know; files
written before the checksums existed load without them. The JSON entries are read with the
strict parser :func:`tl_lape.formats.parse_json`. Statistics from collection record the model's
dtype in ``metadata["dtype"]``; :meth:`ActivationStats.merge` refuses two different dtypes.
Inspect a file without tl_lape with ``safetensors.safe_open(path, "pt").metadata()``.

Example:
    >>> import torch
    >>> stats = ActivationStats.from_counts(
    ...     torch.tensor([[[3, 0], [1, 4]]]),  # n_layers=1, d_mlp=2, lang=2
    ...     n_tokens=[4, 8],
    ...     languages=["en", "fr"],
    ... )
    >>> stats
    ActivationStats(n_layers=1, d_mlp=2, languages=('en', 'fr'), n_tokens=[4, 8])
    >>> stats.probabilities
    tensor([[[0.7500, 0.0000],
             [0.2500, 0.5000]]], dtype=torch.float64)
"""

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError, safe_open
from torch import Tensor

from tl_lape.checks import check_language_codes, check_languages
from tl_lape.errors import LapeError
from tl_lape.formats import (
    atomic_path,
    check_output_file,
    existing_file,
    file_kind,
    parse_json,
    write_safetensors,
)
from tl_lape.neurons import check_metadata

__all__ = ["ActivationStats"]

_FORMAT = "tl_lape.ActivationStats"
_VERSION = "1"
# metadata key set to False by from_counts when no activation sums were given.
_HAS_SUMS = "has_activation_sums"
# metadata key of the model dtype at collection ("float32", ...), recorded by collection.
_DTYPE = "dtype"
# Header entries of a statistics file: always, and those of some versions of the writer.
_HEADER_REQUIRED = frozenset({"format", "version", "languages"})
_HEADER_OPTIONAL = frozenset({"metadata", "checksum", "header_checksum"})

# Counts given as floats must be finite and below this to convert to int64 without wrapping.
_MAX_COUNT = 2.0**62

CountsLike = Tensor | Sequence[Tensor] | Mapping[str, Tensor]
TokensLike = Tensor | Sequence[int] | Mapping[str, int]


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)} on {x.device}"
    return f"a {type(x).__name__}"


@dataclass(frozen=True, eq=False)
class ActivationStats:
    """How often, and how strongly, every MLP neuron fires on each language.

    Build it with :func:`tl_lape.collect_activation_stats`, :meth:`from_counts` or :meth:`load`.
    All tensors live on one device; counts are int64, sums float64. Validation at construction
    checks shapes, dtypes, ``0 <= active_counts <= n_tokens``, ``n_tokens >= 1``, finite sums and
    distinct languages, and raises :class:`~tl_lape.LapeError` naming the field, what was
    expected and what was received.

    Attributes:
        languages: language codes; the ``lang`` axis of every tensor.
        n_tokens: tokens seen per language.
        active_counts: tokens on which each neuron fired, per language.
        activation_sums: sum of each neuron's activation value, per language.
        metadata: JSON-serialisable provenance: model name, hook names, seq_len, versions, ...
            ``metadata["has_activation_sums"] is False`` marks statistics built from counts
            alone (then :attr:`mean_activations` raises).

    Example:
        >>> import torch
        >>> a = ActivationStats.from_counts(torch.ones(2, 3, 1, dtype=torch.long), [5], ["en"])
        >>> b = ActivationStats.from_counts(torch.ones(2, 3, 1, dtype=torch.long), [5], ["zh"])
        >>> (a + b).languages
        ('en', 'zh')
    """

    languages: tuple[str, ...]
    n_tokens: Int[Tensor, " lang"]
    active_counts: Int[Tensor, "n_layers d_mlp lang"]
    activation_sums: Float[Tensor, "n_layers d_mlp lang"]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        langs = check_languages(self.languages)
        n_lang = len(langs)
        counts, sums, tokens = self.active_counts, self.activation_sums, self.n_tokens
        for name, value, ndim, dtype in (
            ("n_tokens", tokens, 1, torch.int64),
            ("active_counts", counts, 3, torch.int64),
            ("activation_sums", sums, 3, torch.float64),
        ):
            if not isinstance(value, Tensor) or value.ndim != ndim or value.dtype != dtype:
                shape = "(lang,)" if ndim == 1 else "(n_layers, d_mlp, lang)"
                raise LapeError(
                    f"{name} must be a {dtype} tensor of shape {shape}; received "
                    f"{_describe(value)} (ActivationStats.from_counts converts dtypes for you)"
                )
        if tokens.shape[0] != n_lang:
            raise LapeError(
                f"n_tokens must have one entry per language ({n_lang} for {langs!r}); received "
                f"shape {tuple(tokens.shape)}"
            )
        if counts.shape[2] != n_lang or counts.shape[0] < 1 or counts.shape[1] < 1:
            raise LapeError(
                f"active_counts must have shape (n_layers>=1, d_mlp>=1, lang={n_lang}); received "
                f"shape {tuple(counts.shape)}"
            )
        if sums.shape != counts.shape:
            raise LapeError(
                f"activation_sums must have the shape of active_counts {tuple(counts.shape)}; "
                f"received shape {tuple(sums.shape)}"
            )
        if len({tokens.device, counts.device, sums.device}) != 1:
            raise LapeError(
                f"n_tokens, active_counts and activation_sums must be on one device; received "
                f"{tokens.device}, {counts.device} and {sums.device}"
            )
        if bool((tokens < 1).any()):
            empty = [lang for lang, n in zip(langs, tokens.tolist(), strict=True) if n < 1]
            raise LapeError(
                f"n_tokens must be >= 1 for every language; received {tokens.tolist()} "
                f"({empty!r} saw no tokens): give every language some text"
            )
        if bool((counts < 0).any()):
            raise LapeError(
                f"active_counts must be >= 0; received a minimum of {int(counts.min())}"
            )
        over = counts > tokens  # n_layers d_mlp lang (broadcast over the last axis)
        if bool(over.any()):
            layer, neuron, k = (int(i) for i in torch.nonzero(over)[0])
            raise LapeError(
                f"active_counts must be <= n_tokens of its language; received "
                f"active_counts[{layer}, {neuron}, {k}] = {int(counts[layer, neuron, k])} > "
                f"n_tokens[{k}] = {int(tokens[k])} ({langs[k]!r})"
            )
        if not bool(torch.isfinite(sums).all()):
            raise LapeError("activation_sums must be finite; received NaN or infinite values")
        object.__setattr__(self, "languages", langs)
        object.__setattr__(self, "metadata", check_metadata(self.metadata))

    # ------------------------------------------------------------------ properties

    @property
    def n_layers(self) -> int:
        """Number of layers."""
        return int(self.active_counts.shape[0])

    @property
    def d_mlp(self) -> int:
        """Number of MLP neurons per layer."""
        return int(self.active_counts.shape[1])

    @property
    def n_languages(self) -> int:
        """Number of languages."""
        return len(self.languages)

    @property
    def has_activation_sums(self) -> bool:
        """False when the statistics were built from counts alone (no activation values)."""
        return self.metadata.get(_HAS_SUMS, True) is not False

    @property
    def probabilities(self) -> Float[Tensor, "n_layers d_mlp lang"]:
        """Activation probability ``active_counts / n_tokens`` (float64), the paper's ``p``.

        Example:
            >>> import torch
            >>> s = ActivationStats.from_counts(torch.tensor([[[1]]]), [4], ["en"])
            >>> s.probabilities
            tensor([[[0.2500]]], dtype=torch.float64)
        """
        return self.active_counts.to(torch.float64) / self.n_tokens.to(torch.float64)

    @property
    def mean_activations(self) -> Float[Tensor, "n_layers d_mlp lang"]:
        """Mean activation value ``activation_sums / n_tokens`` (float64), over all tokens.

        Raises:
            LapeError: the statistics were built from counts alone.
        """
        if not self.has_activation_sums:
            raise LapeError(
                "these statistics hold no activation values (they were built from counts "
                "alone), so mean activations are unknown; collect them with "
                "collect_activation_stats or pass activation_sums to ActivationStats.from_counts"
            )
        return self.activation_sums / self.n_tokens.to(torch.float64)

    def __repr__(self) -> str:
        return (
            f"ActivationStats(n_layers={self.n_layers}, d_mlp={self.d_mlp}, "
            f"languages={self.languages!r}, n_tokens={self.n_tokens.tolist()})"
        )

    def _repr_html_(self) -> str:
        from tl_lape.html import stats_html

        return stats_html(self)

    # ------------------------------------------------------------------ combining

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        """Add the statistics of ``other`` (same model) to these; languages are united.

        Counts, sums and token totals of a language present in both add up. The result's
        languages are this object's, followed by ``other``'s new ones. Metadata: this object's
        entries win over ``other``'s; the result has activation sums only if both have.

        Raises:
            LapeError: different shapes, or different ``metadata["model_name"]`` or
                ``metadata["dtype"]`` (the model dtype at collection; statistics without it,
                such as files written before it was recorded, merge with any).

        Example:
            >>> import torch
            >>> a = ActivationStats.from_counts(torch.ones(1, 2, 1, dtype=torch.long), [3], ["en"])
            >>> a.merge(a).n_tokens
            tensor([6])
        """
        if not isinstance(other, ActivationStats):
            raise LapeError(f"can only merge ActivationStats; received {type(other).__name__}")
        if (self.n_layers, self.d_mlp) != (other.n_layers, other.d_mlp):
            raise LapeError(
                f"cannot merge statistics of different models: (n_layers, d_mlp) = "
                f"{(self.n_layers, self.d_mlp)} vs {(other.n_layers, other.d_mlp)}; merge only "
                "statistics collected on the same model"
            )
        mine, theirs = self.metadata.get("model_name"), other.metadata.get("model_name")
        if mine is not None and theirs is not None and mine != theirs:
            raise LapeError(
                f"cannot merge statistics of different models: model_name {mine!r} vs {theirs!r}; "
                "merge only statistics collected on the same model"
            )
        mine, theirs = self.metadata.get(_DTYPE), other.metadata.get(_DTYPE)
        if mine is not None and theirs is not None and mine != theirs:
            raise LapeError(
                f"cannot merge statistics collected with different model dtypes: {mine!r} vs "
                f"{theirs!r} (rounding changes which neurons fire); collect both with one dtype "
                "(--dtype on the command line)"
            )
        if self.active_counts.device != other.active_counts.device:
            raise LapeError(
                f"cannot merge statistics on different devices ({self.active_counts.device} vs "
                f"{other.active_counts.device}); move them to one device first"
            )
        languages = self.languages + tuple(k for k in other.languages if k not in self.languages)
        where = torch.tensor(
            [languages.index(k) for k in other.languages], device=self.n_tokens.device
        )
        pad = len(languages) - self.n_languages
        tokens = torch.nn.functional.pad(self.n_tokens, (0, pad)).index_add(
            0, where, other.n_tokens
        )
        counts = torch.nn.functional.pad(self.active_counts, (0, pad)).index_add(
            2, where, other.active_counts
        )
        sums = torch.nn.functional.pad(self.activation_sums, (0, pad)).index_add(
            2, where, other.activation_sums
        )
        metadata = {**other.metadata, **self.metadata}
        if not (self.has_activation_sums and other.has_activation_sums):
            metadata[_HAS_SUMS] = False
        if mine is None or theirs is None:  # one side's dtype is unknown: so is the merge's
            metadata.pop(_DTYPE, None)
        return ActivationStats(languages, tokens, counts, sums, metadata)

    def __add__(self, other: "ActivationStats") -> "ActivationStats":
        if not isinstance(other, ActivationStats):
            return NotImplemented
        return self.merge(other)

    def select_languages(self, languages: Sequence[str]) -> "ActivationStats":
        """The statistics of ``languages`` only, in that order.

        Example:
            >>> import torch
            >>> s = ActivationStats.from_counts(torch.zeros(1, 1, 2, dtype=torch.long), [1, 2],
            ...                                 ["en", "fr"])
            >>> s.select_languages(["fr"]).n_tokens
            tensor([2])
        """
        langs = check_languages(languages)
        unknown = [k for k in langs if k not in self.languages]
        if unknown:
            raise LapeError(
                f"unknown languages {unknown!r}; these statistics have {list(self.languages)!r}"
            )
        order = torch.tensor([self.languages.index(k) for k in langs], device=self.n_tokens.device)
        return ActivationStats(
            langs,
            self.n_tokens.index_select(0, order),
            self.active_counts.index_select(2, order),
            self.activation_sums.index_select(2, order),
            self.metadata,
        )

    def to(self, device: str | torch.device) -> "ActivationStats":
        """A copy on ``device``."""
        return ActivationStats(
            self.languages,
            self.n_tokens.to(device),
            self.active_counts.to(device),
            self.activation_sums.to(device),
            self.metadata,
        )

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write a ``.safetensors`` file (tensors + JSON metadata in its header), atomically.

        An existing file that tl_lape did not write is refused unless ``overwrite=True``
        (:func:`tl_lape.formats.check_output_file`).

        Example:
            >>> import tempfile, pathlib, torch
            >>> s = ActivationStats.from_counts(torch.ones(1, 2, 1, dtype=torch.long), [3], ["en"])
            >>> p = pathlib.Path(tempfile.mkdtemp()) / "stats.safetensors"
            >>> s.save(p)
            >>> ActivationStats.load(p)
            ActivationStats(n_layers=1, d_mlp=2, languages=('en',), n_tokens=[3])
        """
        tensors = {
            "n_tokens": self.n_tokens.detach().cpu().contiguous(),
            "active_counts": self.active_counts.detach().cpu().contiguous(),
            "activation_sums": self.activation_sums.detach().cpu().contiguous(),
        }
        check_output_file(path, "statistics file", overwrite=overwrite)
        header = {
            "format": _FORMAT,
            "version": _VERSION,
            "languages": json.dumps(list(self.languages), ensure_ascii=False),
            "metadata": json.dumps(self.metadata, ensure_ascii=False, allow_nan=False),
            "checksum": _checksum(tensors),
        }
        header["header_checksum"] = _header_checksum(header)
        with atomic_path(path) as tmp:
            write_safetensors(tmp, tensors, header)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ActivationStats":
        """Read statistics written by :meth:`save` (onto the CPU).

        Raises:
            LapeError: the file is missing, corrupted or truncated, or not a tl_lape statistics
                file.
        """
        p = existing_file(path, "statistics file")
        advice = "re-create it with ActivationStats.save (or collect the statistics again)"
        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                if header.get("format") != _FORMAT:
                    raise LapeError(
                        f"{str(p)!r} is not an ActivationStats file: its safetensors header has "
                        f"format {header.get('format')!r}, expected {_FORMAT!r}; {advice}"
                    )
                if header.get("version") != _VERSION:
                    raise LapeError(
                        f"{str(p)!r} has ActivationStats format version "
                        f"{header.get('version')!r}; this tl_lape reads version {_VERSION}; "
                        f"upgrade tl_lape or {advice}"
                    )
                missing = {"n_tokens", "active_counts", "activation_sums"} - set(f.keys())
                if missing:
                    raise LapeError(f"{str(p)!r} lacks the tensors {sorted(missing)}; {advice}")
                tokens = f.get_tensor("n_tokens")
                counts = f.get_tensor("active_counts")
                sums = f.get_tensor("activation_sums")
            keys = set(header)
            unknown = sorted(keys - _HEADER_REQUIRED - _HEADER_OPTIONAL)
            missing_keys = sorted(_HEADER_REQUIRED - keys)
            if unknown or missing_keys:
                raise LapeError(
                    f"{str(p)!r} is damaged: its header has unexpected entries {unknown} "
                    f"(or lacks {missing_keys}); restore it from a copy or {advice}"
                )
            expected = header.get("header_checksum")
            if expected is not None and expected != _header_checksum(header):
                raise LapeError(
                    f"{str(p)!r} is damaged: the checksum of its header (languages, metadata) "
                    f"is {_header_checksum(header)}, but it records {expected}; restore it "
                    f"from a copy or {advice}"
                )
            where = f"the statistics file {str(p)!r}"
            languages = parse_json(header["languages"], where=f"{where} (languages)", advice=advice)
            metadata = parse_json(
                header.get("metadata", "{}"), where=f"{where} (metadata)", advice=advice
            )
            expected = header.get("checksum")
            if expected is not None:
                found = _checksum(
                    {"n_tokens": tokens, "active_counts": counts, "activation_sums": sums}
                )
                if found != expected:
                    raise LapeError(
                        f"{str(p)!r} is damaged: the checksum of its tensors is {found}, but its "
                        f"header records {expected}; restore it from a copy or {advice}"
                    )
        except LapeError:
            raise
        except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as err:
            kind = file_kind(p)
            if kind is not None and not kind.startswith("a safetensors"):
                raise LapeError(
                    f"{str(p)!r} is {kind}, not an ActivationStats file; give the statistics "
                    "file written by `tl-lape collect` (ActivationStats.save)"
                ) from None
            raise LapeError(
                f"cannot read {str(p)!r} as ActivationStats (corrupted or truncated file?): "
                f"{type(err).__name__}: {str(err)[:200]}; {advice}"
            ) from None
        if not isinstance(languages, list):
            raise LapeError(f"{str(p)!r} has invalid languages {languages!r}; {advice}")
        check_language_codes(languages, repr(str(p)))
        if not isinstance(metadata, dict):
            raise LapeError(
                f"{str(p)!r} has metadata of type {type(metadata).__name__}, not an object; "
                f"{advice}"
            )
        try:
            return cls(tuple(languages), tokens, counts, sums, metadata)
        except LapeError as err:
            raise LapeError(f"{str(p)!r} has invalid content: {err}; {advice}") from None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_counts(
        cls,
        active_counts: CountsLike,
        n_tokens: TokensLike,
        languages: Sequence[str] | None = None,
        activation_sums: CountsLike | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> "ActivationStats":
        """Build statistics from counts computed elsewhere (e.g. the paper's own scripts).

        Args:
            active_counts: one ``[n_layers, d_mlp, lang]`` tensor, or a sequence of
                ``[n_layers, d_mlp]`` tensors (one per language, as the paper's scripts save
                them), or a mapping language -> ``[n_layers, d_mlp]`` tensor. Integer dtypes, or
                floats holding whole numbers.
            n_tokens: tokens per language: a sequence, a 1-D tensor, or a mapping by language.
            languages: language codes in the order of the counts. May be left out when
                ``active_counts`` is a mapping (its order is used); with a mapping it selects
                and orders the languages.
            activation_sums: the same forms as ``active_counts``, float; if left out the
                statistics carry zeros and ``metadata["has_activation_sums"] = False``, so
                :attr:`mean_activations` (needed for steering) raises instead of lying.
            metadata: JSON-serialisable provenance, e.g. ``{"model_name": "..."}``.

        Example:
            >>> import torch
            >>> per_lang = {"en": torch.tensor([[1, 0]]), "zh": torch.tensor([[0, 2]])}
            >>> ActivationStats.from_counts(per_lang, {"en": 2, "zh": 2}).active_counts.shape
            torch.Size([1, 2, 2])
        """
        if languages is None:
            if not isinstance(active_counts, Mapping):
                raise LapeError(
                    "languages is required unless active_counts is a mapping language -> counts"
                )
            languages = list(active_counts)
        langs = check_languages(languages)
        counts = _stack_per_language(active_counts, langs, "active_counts")
        if counts.is_floating_point():
            _check_float_counts(counts, "active_counts")
            if not bool((counts == counts.round()).all()):
                raise LapeError(
                    "active_counts must hold whole numbers (token counts); received a float "
                    "tensor with fractional values"
                )
        elif counts.dtype == torch.bool or counts.is_complex():
            raise LapeError(f"active_counts must be integer counts; received dtype {counts.dtype}")
        counts = counts.to(torch.int64)
        tokens = _tokens_vector(n_tokens, langs, counts.device)
        if activation_sums is None:
            sums = torch.zeros(counts.shape, dtype=torch.float64, device=counts.device)
            meta = {**dict(metadata or {}), _HAS_SUMS: False}
        else:
            sums = _stack_per_language(activation_sums, langs, "activation_sums")
            if sums.dtype == torch.bool or sums.is_complex():
                raise LapeError(f"activation_sums must be real numbers; received {sums.dtype}")
            sums = sums.to(device=counts.device, dtype=torch.float64)
            meta = dict(metadata or {})
        return cls(langs, tokens, counts, sums, meta)


def _stack_per_language(values: Any, langs: tuple[str, ...], name: str) -> Tensor:
    """Turn a ``[n_layers, d_mlp, lang]`` tensor or per-language ``[n_layers, d_mlp]`` tensors
    into one ``[n_layers, d_mlp, lang]`` tensor (detached copy)."""
    if isinstance(values, Tensor):
        if values.ndim != 3 or values.shape[2] != len(langs):
            raise LapeError(
                f"{name} as one tensor must have shape (n_layers, d_mlp, lang={len(langs)}); "
                f"received {_describe(values)}"
            )
        return values.detach().clone()
    if isinstance(values, Mapping):
        missing = [k for k in langs if k not in values]
        if missing:
            raise LapeError(
                f"{name} has no entry for languages {missing!r}; it has {list(values)!r}"
            )
        items = [values[k] for k in langs]
    elif isinstance(values, Sequence) and not isinstance(values, str):
        items = list(values)
        if len(items) != len(langs):
            raise LapeError(
                f"{name} must hold one [n_layers, d_mlp] tensor per language ({len(langs)} for "
                f"{langs!r}); received {len(items)}"
            )
    else:
        raise LapeError(
            f"{name} must be a tensor (n_layers, d_mlp, lang), a sequence or a mapping of "
            f"(n_layers, d_mlp) tensors; received {_describe(values)}"
        )
    for k, item in zip(langs, items, strict=True):
        if not isinstance(item, Tensor) or item.ndim != 2:
            raise LapeError(
                f"{name}[{k!r}] must be a (n_layers, d_mlp) tensor; received {_describe(item)}"
            )
    shapes = {tuple(item.shape) for item in items}
    if len(shapes) != 1:
        raise LapeError(
            f"{name}: every language's tensor must have the same (n_layers, d_mlp) shape; "
            f"received shapes {[tuple(item.shape) for item in items]}"
        )
    return torch.stack([item.detach() for item in items], dim=-1)  # n_layers d_mlp lang


def _tokens_vector(n_tokens: Any, langs: tuple[str, ...], device: torch.device) -> Tensor:
    if isinstance(n_tokens, Mapping):
        missing = [k for k in langs if k not in n_tokens]
        if missing:
            raise LapeError(f"n_tokens has no entry for languages {missing!r}")
        n_tokens = [n_tokens[k] for k in langs]
    try:
        tokens = torch.as_tensor(n_tokens)
    except (TypeError, ValueError, RuntimeError) as err:
        raise LapeError(
            f"n_tokens must be numbers, one per language; received {n_tokens!r}"
        ) from err
    tokens = tokens.detach()
    if tokens.ndim != 1 or tokens.shape[0] != len(langs):
        raise LapeError(
            f"n_tokens must hold one number per language ({len(langs)} for {langs!r}); "
            f"received {_describe(tokens)}"
        )
    if tokens.is_floating_point():
        _check_float_counts(tokens, "n_tokens")
    if (
        tokens.dtype == torch.bool
        or tokens.is_complex()
        or (tokens.is_floating_point() and not bool((tokens == tokens.round()).all()))
    ):
        raise LapeError(f"n_tokens must be whole numbers; received {tokens.tolist()}")
    return tokens.to(device=device, dtype=torch.int64)


def _check_float_counts(values: Tensor, name: str) -> None:
    """Refuse float counts that int64 cannot hold (NaN, infinities, 1e30...), naming one."""
    bad = ~torch.isfinite(values) | (values.abs() >= _MAX_COUNT)
    if bool(bad.any()):
        first = float(values[bad].flatten()[0])
        raise LapeError(
            f"{name} must be finite counts below 2**62; received {first!r}: pass the token "
            "counts themselves (integers)"
        )


def _checksum(tensors: Mapping[str, Tensor]) -> str:
    """``"sha256:..."`` of each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _header_checksum(header: Mapping[str, str]) -> str:
    """``"sha256:..."`` of the header entries other than the two checksums, in key order."""
    entries = {k: header[k] for k in sorted(header) if k not in ("checksum", "header_checksum")}
    text = json.dumps(entries, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
