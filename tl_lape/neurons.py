"""Sets of language-specific neurons: which MLP neurons, in which layer, belong to which language.

A :class:`LanguageNeurons` is the result of a selection such as
:func:`tl_lape.identify_language_neurons`: for every language and every layer, the sorted indices
of the MLP neurons (positions along ``d_mlp``) assigned to that language. One neuron may belong to
several languages. The object is immutable and knows the model shape it was made for
(``n_layers``, ``d_mlp``), so it can be checked against a model before any hook indexes into it.
A set read from a file that does not store the width (the paper's ``.neuron.pth`` files, loaded
without ``d_mlp=`` or ``model=``) has ``d_mlp=None``: its hooks then check only that every index
fits the model, and :meth:`LanguageNeurons.for_model` records the model's width.

Files:

* :meth:`LanguageNeurons.save` / :meth:`LanguageNeurons.load`: a JSON file a person can read,
  ``{"format": "tl_lape.LanguageNeurons", "version": 1, "languages": [...], "n_layers": ...,
  "d_mlp": ..., "neurons": {"zh": {"4": [6147, 9114, 9292], ...}, ...}, "metadata": {...}}``
  (layers without neurons are left out of ``"neurons"``), and ``"checksum": "sha256:..."`` of
  the rest of the document, verified by :meth:`LanguageNeurons.load` (files written before the
  checksum existed load without the check).
* :meth:`LanguageNeurons.from_rucaibox` / :meth:`LanguageNeurons.to_rucaibox`: the format of the
  neuron sets released with the LAPE paper (Tang et al., ACL 2024), a ``torch.save``-d
  ``List[List[LongTensor]]`` indexed ``neurons[language][layer]``.

:func:`random_matched_neurons` draws the control of a set: random neurons matched to each
language's set in size and distribution over layers.

Example:
    >>> import torch
    >>> masks = torch.zeros(2, 3, 8, dtype=torch.bool)  # lang n_layers d_mlp
    >>> masks[0, 1, [2, 5]] = True
    >>> masks[1, 1, 5] = True
    >>> ln = LanguageNeurons.from_masks(masks, ["en", "fr"])
    >>> ln
    LanguageNeurons(n_layers=3, d_mlp=8, en=2, fr=1)
    >>> ln.indices("en", 1)
    tensor([2, 5])
    >>> ln.overlap()
    tensor([[2, 1],
            [1, 1]])
"""

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_lape.checks import (
    check_choice,
    check_languages,
    check_positive_int,
    check_seed,
)
from tl_lape.errors import LapeError
from tl_lape.formats import parse_json

__all__ = [
    "DEFAULT_POOL",
    "MATCH_ON",
    "LanguageNeurons",
    "MatchOn",
    "activity_gap",
    "random_matched_neurons",
]

#: What a random control set is matched on (see :func:`random_matched_neurons`).
MatchOn = Literal["layer", "activity"]
MATCH_ON: tuple[MatchOn, ...] = get_args(MatchOn)


def check_metadata(metadata: Any) -> dict[str, Any]:
    if not isinstance(metadata, Mapping):
        raise LapeError(f"metadata must be a dict; received {type(metadata).__name__}")
    try:
        text = json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise LapeError(
            f"metadata must be JSON-serialisable (str keys; str, int, float, bool, None, "
            f"lists and dicts as values); {err}"
        ) from None
    # A strict JSON round trip validates (what is saved can be read back by the same parser
    # that reads files) and deep-copies (no aliasing of the caller's dict).
    copied = parse_json(text, where="metadata", advice="give JSON-like metadata without it")
    return copied  # type: ignore[no-any-return]


@dataclass(frozen=True, eq=False)
class LanguageNeurons:
    """Language-specific neurons of one model: per language, per layer, sorted neuron indices.

    Construct it with :meth:`from_masks`, :meth:`from_indices`, :meth:`load` or
    :meth:`from_rucaibox` rather than directly. Direct construction takes ``neurons`` as a tuple
    (one entry per language) of tuples (one per layer) of 1-D integer tensors; they are copied,
    converted to int64 on the CPU, sorted and de-duplicated.

    ``==`` compares the sets (languages, shape and indices), not ``metadata``.

    Attributes:
        languages: language codes, in order; the ``lang`` axis of :meth:`masks`.
        n_layers: number of layers of the model the set was made for.
        d_mlp: MLP width (neurons per layer) of that model, or None if it is unknown (a released
            file loaded without ``d_mlp=``): then only the indices are checked against a model,
            and the queries that return ``d_mlp``-wide masks need :meth:`for_model` first.
        neurons: ``neurons[lang][layer]`` is a sorted int64 tensor of neuron indices.
        metadata: JSON-serialisable provenance (how the set was selected, the model name, ...).

    Example:
        >>> import torch
        >>> ln = LanguageNeurons.from_indices({"en": {0: [3, 1]}, "zh": {1: [0]}}, n_layers=2,
        ...                                   d_mlp=4)
        >>> ln.counts()
        {'en': 2, 'zh': 1}
        >>> ln.mask("en").int()
        tensor([[0, 1, 0, 1],
                [0, 0, 0, 0]], dtype=torch.int32)
    """

    languages: tuple[str, ...]
    n_layers: int
    d_mlp: int | None
    neurons: tuple[tuple[Tensor, ...], ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        langs = check_languages(self.languages)
        n_layers = check_positive_int(self.n_layers, "n_layers")
        d_mlp = None if self.d_mlp is None else check_positive_int(self.d_mlp, "d_mlp")
        if not isinstance(self.neurons, Sequence) or len(self.neurons) != len(langs):
            got = len(self.neurons) if isinstance(self.neurons, Sequence) else type(self.neurons)
            raise LapeError(
                f"neurons must hold one entry per language ({len(langs)} for {langs!r}); "
                f"received {got}"
            )
        normalised: list[tuple[Tensor, ...]] = []
        for lang, per_layer in zip(langs, self.neurons, strict=True):
            if not isinstance(per_layer, Sequence) or len(per_layer) != n_layers:
                got = len(per_layer) if isinstance(per_layer, Sequence) else type(per_layer)
                raise LapeError(
                    f"neurons[{lang!r}] must hold one index tensor per layer (n_layers="
                    f"{n_layers}); received {got}"
                )
            normalised.append(
                tuple(
                    _normalise_indices(idx, d_mlp, f"neurons[{lang!r}][layer {layer}]")
                    for layer, idx in enumerate(per_layer)
                )
            )
        object.__setattr__(self, "languages", langs)
        object.__setattr__(self, "neurons", tuple(normalised))
        object.__setattr__(self, "metadata", check_metadata(self.metadata))

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_masks(
        cls,
        masks: Bool[Tensor, "lang n_layers d_mlp"],
        languages: Sequence[str],
        metadata: Mapping[str, Any] | None = None,
    ) -> "LanguageNeurons":
        """Build a set from boolean masks, ``masks[k, l, n]`` = neuron n of layer l is language k's.

        Example:
            >>> import torch
            >>> m = torch.zeros(1, 2, 4, dtype=torch.bool)
            >>> m[0, 1, 3] = True
            >>> LanguageNeurons.from_masks(m, ["vi"]).indices("vi", 1)
            tensor([3])
        """
        langs = check_languages(languages)
        if not isinstance(masks, Tensor) or masks.dtype != torch.bool or masks.ndim != 3:
            got = (
                f"a {masks.dtype} tensor of shape {tuple(masks.shape)}"
                if isinstance(masks, Tensor)
                else type(masks).__name__
            )
            raise LapeError(
                f"masks must be a bool tensor of shape (lang, n_layers, d_mlp); received {got}"
            )
        if masks.shape[0] != len(langs):
            raise LapeError(
                f"masks has {masks.shape[0]} languages on its first axis but languages names "
                f"{len(langs)}: {langs!r}; pass one language per mask"
            )
        masks = masks.detach().cpu()
        neurons = tuple(
            tuple(torch.nonzero(masks[k, layer]).flatten() for layer in range(masks.shape[1]))
            for k in range(len(langs))
        )
        return cls(langs, int(masks.shape[1]), int(masks.shape[2]), neurons, dict(metadata or {}))

    @classmethod
    def from_indices(
        cls,
        indices: Mapping[str, Mapping[int, Sequence[int] | Tensor]],
        *,
        n_layers: int,
        d_mlp: int | None,
        metadata: Mapping[str, Any] | None = None,
    ) -> "LanguageNeurons":
        """Build a set from ``{language: {layer: neuron indices}}``; missing layers are empty.

        ``d_mlp=None`` records the width as unknown (see :attr:`d_mlp`).

        Example:
            >>> LanguageNeurons.from_indices({"es": {2: [7, 7, 1]}}, n_layers=3, d_mlp=8).indices(
            ...     "es", 2)
            tensor([1, 7])
        """
        if not isinstance(indices, Mapping):
            raise LapeError(
                f"indices must map language -> {{layer: [neuron, ...]}}; received "
                f"{type(indices).__name__}"
            )
        n_layers = check_positive_int(n_layers, "n_layers")
        langs = check_languages(list(indices))
        neurons = []
        for lang in langs:
            per_layer = indices[lang]
            if not isinstance(per_layer, Mapping):
                raise LapeError(
                    f"indices[{lang!r}] must map layer -> neuron indices; received "
                    f"{type(per_layer).__name__}"
                )
            bad = [
                layer
                for layer in per_layer
                if isinstance(layer, bool)
                or not isinstance(layer, int)
                or not 0 <= layer < n_layers
            ]
            if bad:
                raise LapeError(
                    f"indices[{lang!r}] has layers {bad!r} outside 0..{n_layers - 1} "
                    f"(n_layers={n_layers})"
                )
            neurons.append(
                tuple(
                    torch.as_tensor(per_layer.get(layer, []), dtype=torch.int64).flatten()
                    for layer in range(n_layers)
                )
            )
        return cls(langs, n_layers, d_mlp, tuple(neurons), dict(metadata or {}))

    # ------------------------------------------------------------------ queries

    @property
    def n_languages(self) -> int:
        """Number of languages."""
        return len(self.languages)

    def _lang_index(self, language: str) -> int:
        try:
            return self.languages.index(language)
        except ValueError:
            raise LapeError(
                f"unknown language {language!r}; this neuron set has {list(self.languages)!r}"
            ) from None

    def _check_layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise LapeError(
                f"layer must be an int in 0..{self.n_layers - 1} (n_layers={self.n_layers}); "
                f"received {layer!r}"
            )
        return layer

    def indices(self, language: str, layer: int) -> Int[Tensor, " k"]:
        """Sorted int64 indices of ``language``'s neurons in ``layer`` (a fresh copy).

        Example:
            >>> ln = LanguageNeurons.from_indices({"en": {0: [4, 2]}}, n_layers=1, d_mlp=5)
            >>> ln.indices("en", 0)
            tensor([2, 4])
        """
        k = self._lang_index(language)
        return self.neurons[k][self._check_layer(layer)].clone()

    def mask(self, language: str) -> Bool[Tensor, "n_layers d_mlp"]:
        """Boolean mask of ``language``'s neurons.

        Example:
            >>> ln = LanguageNeurons.from_indices({"en": {0: [1]}}, n_layers=1, d_mlp=3)
            >>> ln.mask("en")
            tensor([[False,  True, False]])
        """
        return self._mask(self._lang_index(language), self._width("mask()"))

    def _mask(self, k: int, width: int) -> Tensor:
        out = torch.zeros(self.n_layers, width, dtype=torch.bool)  # n_layers width
        for layer, idx in enumerate(self.neurons[k]):
            out[layer, idx] = True
        return out

    def _width(self, what: str) -> int:
        """:attr:`d_mlp`, or a :class:`LapeError` naming ``what`` needs it when it is unknown."""
        if self.d_mlp is None:
            raise LapeError(
                f"{what} needs the MLP width, but this neuron set's d_mlp is unknown (it was "
                "read from a file that does not store it, such as the paper's .neuron.pth); "
                "call neurons.for_model(model), or load it with "
                "LanguageNeurons.from_rucaibox(path, languages, d_mlp=...) or model=model"
            )
        return self.d_mlp

    def max_index(self) -> int:
        """The largest neuron index of any language and layer (-1 for an empty set).

        A set fits a model only if this is below the model's ``d_mlp``.

        Example:
            >>> LanguageNeurons.from_indices({"en": {0: [1, 6]}}, n_layers=1, d_mlp=8).max_index()
            6
        """
        return max(
            (int(idx[-1]) for per_layer in self.neurons for idx in per_layer if idx.numel()),
            default=-1,
        )

    def masks(self) -> Bool[Tensor, "lang n_layers d_mlp"]:
        """Boolean masks of every language, stacked in :attr:`languages` order.

        Example:
            >>> ln = LanguageNeurons.from_indices({"en": {0: [1]}, "fr": {}}, n_layers=1, d_mlp=2)
            >>> ln.masks().shape
            torch.Size([2, 1, 2])
        """
        return torch.stack([self.mask(lang) for lang in self.languages])

    def counts(self) -> dict[str, int]:
        """Number of neurons per language (a neuron shared by two languages counts for both).

        Example:
            >>> LanguageNeurons.from_indices({"en": {0: [1, 2]}}, n_layers=1, d_mlp=3).counts()
            {'en': 2}
        """
        return {
            lang: sum(int(idx.numel()) for idx in per_layer)
            for lang, per_layer in zip(self.languages, self.neurons, strict=True)
        }

    def counts_per_layer(self) -> Int[Tensor, "lang n_layers"]:
        """``out[k, l]`` = number of language k's neurons in layer l (int64).

        Example:
            >>> ln = LanguageNeurons.from_indices({"en": {1: [0, 1]}}, n_layers=2, d_mlp=2)
            >>> ln.counts_per_layer()
            tensor([[0, 2]])
        """
        return torch.tensor(
            [[int(idx.numel()) for idx in per_layer] for per_layer in self.neurons],
            dtype=torch.int64,
        ).reshape(self.n_languages, self.n_layers)

    def union(self) -> Bool[Tensor, "n_layers d_mlp"]:
        """Mask of the neurons that belong to at least one language.

        Example:
            >>> ln = LanguageNeurons.from_indices({"a": {0: [0]}, "b": {0: [0, 1]}}, n_layers=1,
            ...                                   d_mlp=3)
            >>> int(ln.union().sum())
            2
        """
        return einops.reduce(self.masks(), "lang n_layers d_mlp -> n_layers d_mlp", "any")

    def overlap(self) -> Int[Tensor, "lang lang"]:
        """``out[i, j]`` = number of neurons shared by languages i and j; the diagonal = counts.

        Example:
            >>> ln = LanguageNeurons.from_indices({"a": {0: [0]}, "b": {0: [0, 1]}}, n_layers=1,
            ...                                   d_mlp=3)
            >>> ln.overlap()
            tensor([[1, 1],
                    [1, 2]])
        """
        width = self.d_mlp if self.d_mlp is not None else self.max_index() + 1
        masks = torch.stack([self._mask(k, width) for k in range(self.n_languages)])
        flat = einops.rearrange(masks, "lang n_layers d_mlp -> lang (n_layers d_mlp)")
        flat = flat.to(torch.int64)
        return torch.einsum("in,jn->ij", flat, flat)  # lang lang

    def jaccard(self) -> Float[Tensor, "lang lang"]:
        """Jaccard similarity |A ∩ B| / |A ∪ B| between languages (float64; 0 when both are empty).

        Example:
            >>> ln = LanguageNeurons.from_indices({"a": {0: [0]}, "b": {0: [0, 1]}}, n_layers=1,
            ...                                   d_mlp=3)
            >>> ln.jaccard()
            tensor([[1.0000, 0.5000],
                    [0.5000, 1.0000]], dtype=torch.float64)
        """
        inter = self.overlap().to(torch.float64)  # lang lang
        size = torch.diagonal(inter)  # lang
        union = size[:, None] + size[None, :] - inter  # lang lang
        return torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))

    def total(self) -> int:
        """Number of (language, layer, neuron) assignments: the sum of :meth:`counts`.

        Example:
            >>> LanguageNeurons.from_indices({"a": {0: [0]}, "b": {0: [0]}}, n_layers=1,
            ...                              d_mlp=1).total()
            2
        """
        return sum(self.counts().values())

    def select(self, languages: Sequence[str]) -> "LanguageNeurons":
        """The same set restricted to (and reordered as) ``languages``.

        Example:
            >>> ln = LanguageNeurons.from_indices({"a": {0: [0]}, "b": {}}, n_layers=1, d_mlp=1)
            >>> ln.select(["b", "a"]).languages
            ('b', 'a')
        """
        langs = check_languages(languages)
        order = [self._lang_index(lang) for lang in langs]
        return LanguageNeurons(
            langs,
            self.n_layers,
            self.d_mlp,
            tuple(self.neurons[k] for k in order),
            self.metadata,
        )

    def check_compatible(self, n_layers: int, d_mlp: int, *, what: str = "model") -> None:
        """Raise :class:`LapeError` unless this set fits a model with ``n_layers`` and ``d_mlp``.

        The layer count must match exactly; ``d_mlp`` too (a set made for another width would
        index the wrong neurons, or past the end: the index-out-of-bounds crash reported against
        the paper's own code). A set whose width is unknown (``d_mlp=None``) fits any width its
        indices fit; :meth:`for_model` checks and records the width in one call.

        Example:
            >>> ln = LanguageNeurons.from_indices({"en": {}}, n_layers=2, d_mlp=8)
            >>> ln.check_compatible(2, 8)
            >>> try:
            ...     ln.check_compatible(2, 16)
            ... except LapeError as err:
            ...     print(str(err)[:63])
            the neuron set was made for a model with d_mlp=8, but the model
        """
        problems = []
        if n_layers != self.n_layers:
            problems.append(f"n_layers={self.n_layers}, but the {what} has n_layers={n_layers}")
        if self.d_mlp is not None and d_mlp != self.d_mlp:
            problems.append(f"d_mlp={self.d_mlp}, but the {what} has d_mlp={d_mlp}")
        if self.d_mlp is None and self.max_index() >= d_mlp:
            problems.append(
                f"neuron indices up to {self.max_index()}, but the {what} has d_mlp={d_mlp}"
            )
        if problems:
            source = self.metadata.get("model_name")
            made_for = f" ({source})" if source else ""
            raise LapeError(
                f"the neuron set was made for a model{made_for} with "
                + "; and with ".join(problems)
                + ". A neuron set applies only to the model it was selected on: select one on "
                "this model (identify_language_neurons(collect_activation_stats(model, corpus))) "
                "or load the set made for it; for a released .neuron.pth file, pass this "
                "model's width with LanguageNeurons.from_rucaibox(path, languages, model=model)"
            )

    def for_model(self, model: Any) -> "LanguageNeurons":
        """This set with ``model``'s width recorded, after checking that it fits ``model``.

        Use it on a set whose width is unknown (``d_mlp=None``, e.g. a released file loaded
        without ``d_mlp=``) before the queries that need the width (:meth:`mask`,
        :meth:`union`, random matched controls). A set whose width is already known is
        returned as it is if it fits.

        Args:
            model: A TransformerLens model (``TransformerBridge`` or ``HookedTransformer``).

        Raises:
            LapeError: the layer count differs, an index does not fit the model's ``d_mlp``,
                or the set was made for another width (see :meth:`check_compatible`).

        Example:
            >>> released = LanguageNeurons.from_rucaibox(path, languages)  # no width given
            >>> released.d_mlp is None
            True
            >>> released.for_model(model).d_mlp
            64
        """
        from tl_lape._adapter import adapt

        adapter = adapt(model)
        self.check_compatible(adapter.n_layers, adapter.d_mlp)
        if self.d_mlp == adapter.d_mlp:
            return self
        return LanguageNeurons(
            self.languages, self.n_layers, adapter.d_mlp, self.neurons, self.metadata
        )

    def summary(self) -> str:
        """A few lines describing the set: shape, neurons per language, busiest layers.

        Example:
            >>> ln = LanguageNeurons.from_indices({"en": {1: [0, 1]}}, n_layers=2, d_mlp=2)
            >>> print(ln.summary())
            LanguageNeurons: 2 layers x 2 neurons, 1 languages, 2 assignments, 2 distinct neurons
              en: 2 neurons; busiest layers 1:2
        """
        per_layer = self.counts_per_layer()
        lines = [
            f"LanguageNeurons: {self.n_layers} layers x "
            + (f"{self.d_mlp} neurons" if self.d_mlp is not None else "an unknown d_mlp")
            + f", {self.n_languages} languages, {self.total()} assignments, "
            f"{self._distinct()} distinct neurons"
        ]
        for k, lang in enumerate(self.languages):
            row = per_layer[k]
            top = torch.argsort(-row, stable=True)[:3]
            busiest = " ".join(f"{int(layer)}:{int(row[layer])}" for layer in top if row[layer] > 0)
            lines.append(f"  {lang}: {int(row.sum())} neurons; busiest layers {busiest or '-'}")
        return "\n".join(lines)

    def _distinct(self) -> int:
        """Number of neurons that belong to at least one language (needs no width)."""
        return sum(
            int(torch.unique(torch.cat([per_layer[layer] for per_layer in self.neurons])).numel())
            for layer in range(self.n_layers)
        )

    def __repr__(self) -> str:
        counts = ", ".join(f"{lang}={n}" for lang, n in self.counts().items())
        return f"LanguageNeurons(n_layers={self.n_layers}, d_mlp={self.d_mlp}, {counts})"

    def _repr_html_(self) -> str:
        from tl_lape.html import neurons_html

        return neurons_html(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LanguageNeurons):
            return NotImplemented
        return (
            self.languages == other.languages
            and self.n_layers == other.n_layers
            and self.d_mlp == other.d_mlp
            and all(
                torch.equal(a, b)
                for mine, theirs in zip(self.neurons, other.neurons, strict=True)
                for a, b in zip(mine, theirs, strict=True)
            )
        )

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the set as human-readable JSON (atomically: a failed save leaves no file).

        An existing file that tl_lape did not write is refused unless ``overwrite=True``
        (:func:`tl_lape.formats.check_output_file`).

        Example:
            >>> import tempfile, pathlib
            >>> ln = LanguageNeurons.from_indices({"en": {0: [1]}}, n_layers=1, d_mlp=2)
            >>> p = pathlib.Path(tempfile.mkdtemp()) / "neurons.json"
            >>> ln.save(p)
            >>> LanguageNeurons.load(p) == ln
            True
        """
        from tl_lape.neuron_files import write_neurons_json

        write_neurons_json(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "LanguageNeurons":
        """Read a set written by :meth:`save`.

        Raises:
            LapeError: the file is missing, not valid JSON (corrupted or truncated), not a
                ``tl_lape.LanguageNeurons`` file, or its content is inconsistent.
        """
        from tl_lape.neuron_files import read_neurons_json

        return read_neurons_json(path)

    @classmethod
    def from_rucaibox(
        cls,
        path: str | os.PathLike[str],
        languages: Sequence[str],
        *,
        n_layers: int | None = None,
        d_mlp: int | None = None,
        model: Any = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> "LanguageNeurons":
        """Load a neuron set released with the LAPE paper (``List[List[LongTensor]]``).

        The file stores ``neurons[lang][layer]`` but neither the language names nor the model
        width, so both come from the caller: ``languages`` in the file's order (the paper's
        files use ``en, zh, fr, es, vi, id`` and add ``ja`` last in seven-language files), and
        the width, as ``d_mlp=`` (e.g. 11008 for LLaMA-2-7B) or as ``model=`` (its ``n_layers``
        and ``d_mlp`` are used and checked). Without either, the width is recorded as unknown
        (``d_mlp=None``): the largest index in a file says nothing certain about the width (in
        four of the seven released files it is below ``d_mlp - 1``), so the hooks then check
        only that every index fits the model, and :meth:`for_model` records the width. The file
        is read with ``torch.load(path, weights_only=True)``, which never runs code from the file.

        Args:
            path: the ``.neuron.pth`` file.
            languages: one code per entry of the file, in the file's order.
            n_layers: expected number of layers; checked against the file if given.
            d_mlp: the model's MLP width; every index must be smaller.
            model: the TransformerLens model the set is for; gives ``n_layers`` and ``d_mlp``.
            metadata: extra provenance to store (the path and format are recorded anyway).

        Example:
            >>> import tempfile, pathlib, torch
            >>> p = pathlib.Path(tempfile.mkdtemp()) / "toy.neuron.pth"
            >>> torch.save([[torch.tensor([3]), torch.tensor([], dtype=torch.long)]], p)
            >>> LanguageNeurons.from_rucaibox(p, ["en"], d_mlp=8)
            LanguageNeurons(n_layers=2, d_mlp=8, en=1)
        """
        from tl_lape.neuron_files import read_rucaibox

        return read_rucaibox(
            path, languages, n_layers=n_layers, d_mlp=d_mlp, model=model, metadata=metadata
        )

    def to_rucaibox(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the set in the LAPE paper's format (``torch.save`` of ``List[List[LongTensor]]``).

        Language names, ``d_mlp`` and metadata are not part of that format; keep them with
        :meth:`save`. An existing file that tl_lape did not write is refused unless
        ``overwrite=True``.

        Example:
            >>> import tempfile, pathlib
            >>> ln = LanguageNeurons.from_indices({"en": {0: [1]}}, n_layers=1, d_mlp=2)
            >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.neuron.pth"
            >>> ln.to_rucaibox(p)
            >>> LanguageNeurons.from_rucaibox(p, ["en"], d_mlp=2) == ln
            True
        """
        from tl_lape.neuron_files import write_rucaibox

        write_rucaibox(self, path, overwrite=overwrite)


# --------------------------------------------------------------------------- random controls

#: Nearest candidates each activity-matched draw chooses from (``pool`` of
#: :func:`random_matched_neurons`): larger pools vary more between draws and match less closely.
DEFAULT_POOL = 10


def random_matched_neurons(
    neurons: LanguageNeurons,
    *,
    seed: int = 0,
    exclude_selected: bool = True,
    match: MatchOn = "layer",
    stats: Any = None,
    pool: int = DEFAULT_POOL,
) -> LanguageNeurons:
    """Random neuron sets matched to each language's set in size and distribution over layers.

    For every language and layer, draws as many neurons as the language has in that layer,
    without replacement, from the layer's neurons (by default excluding every neuron selected
    for any language, so the control contains no language neuron). Languages are drawn
    independently; the draw is a pure function of ``seed``.

    ``match="layer"`` draws uniformly. ``match="activity"`` also matches how the neurons behave
    on the language itself: for each selected neuron, in a random order, it draws uniformly
    among the ``pool`` not-yet-drawn eligible neurons of the same layer nearest to it in firing
    rate and mean activation on that language (``stats``, each feature divided by its spread in
    the layer). Such a control answers "does switching off *any* strongly firing neurons do
    this?"; :func:`activity_gap` reports how close the match came.

    Args:
        neurons: The neuron set to match.
        seed: Seed of the draw; different seeds give independent draws.
        exclude_selected: Draw only from neurons outside ``neurons.union()``.
        match: ``"layer"`` (layer and size) or ``"activity"`` (also firing rate and mean
            activation on the language; needs ``stats`` with activation values).
        stats: The :class:`~tl_lape.stats.ActivationStats` the set was selected from (for
            ``match="activity"``).
        pool: Nearest candidates each draw chooses from, with ``match="activity"`` (1: always
            the nearest, the same set for every seed).

    Returns:
        A :class:`LanguageNeurons` with the same languages and the same
        :meth:`LanguageNeurons.counts_per_layer`.

    Raises:
        LapeError: If a layer has too few eligible neurons for the draw.

    Example:
        >>> ln = LanguageNeurons.from_indices({"en": {0: [1, 2]}}, n_layers=2, d_mlp=8)
        >>> control = random_matched_neurons(ln, seed=1)
        >>> bool((control.counts_per_layer() == ln.counts_per_layer()).all())
        True
    """
    check_seed(seed)
    check_choice(match, MATCH_ON, "match")
    features = _activity_features(neurons, stats) if match == "activity" else None
    check_positive_int(pool, "pool")
    generator = torch.Generator().manual_seed(seed)
    per_layer = neurons.counts_per_layer()  # lang n_layers
    union = neurons.union()  # n_layers d_mlp (a LapeError if the set's width is unknown)
    excluded = union if exclude_selected else torch.zeros_like(union)
    masks = torch.zeros(neurons.n_languages, *union.shape, dtype=torch.bool)  # lang n_layers d_mlp
    for k, lang in enumerate(neurons.languages):
        for layer in range(neurons.n_layers):
            want = int(per_layer[k, layer])
            if want == 0:
                continue
            eligible = torch.nonzero(~excluded[layer]).flatten()  # candidates
            if eligible.numel() < want:
                raise LapeError(
                    f"cannot draw {want} random neurons for language {lang!r} in layer {layer}: "
                    f"only {eligible.numel()} of {neurons.d_mlp} neurons are eligible "
                    f"(exclude_selected={exclude_selected}). Pass exclude_selected=False or use "
                    "a smaller neuron set."
                )
            if features is None:
                pick = eligible[torch.randperm(eligible.numel(), generator=generator)[:want]]
            else:
                selected = torch.nonzero(neurons.masks()[k, layer]).flatten()
                pick = _draw_nearest(features[layer, :, k], selected, eligible, pool, generator)
            masks[k, layer, pick] = True
    metadata = {
        "selector": "random_matched",
        "seed": seed,
        "exclude_selected": exclude_selected,
        "match": match,
        **({"pool": pool} if match == "activity" else {}),
        "matched_to": dict(neurons.metadata),
    }
    return LanguageNeurons.from_masks(masks, neurons.languages, metadata)


def _activity_features(neurons: LanguageNeurons, stats: Any) -> Tensor:
    """``[n_layers, d_mlp, lang, 2]``: firing rate and mean activation per language of the set."""
    probabilities = getattr(stats, "probabilities", None)
    if probabilities is None or not hasattr(stats, "languages"):
        raise LapeError(
            "match='activity' needs the ActivationStats the set was selected from; pass "
            f"stats=...; received {type(stats).__name__}"
        )
    missing = [lang for lang in neurons.languages if lang not in stats.languages]
    if missing or (stats.n_layers, stats.d_mlp) != (neurons.n_layers, neurons.d_mlp):
        raise LapeError(
            f"stats must cover the set's languages and shape: the set has "
            f"{list(neurons.languages)} on {neurons.n_layers} x {neurons.d_mlp}; stats have "
            f"{list(stats.languages)} on {stats.n_layers} x {stats.d_mlp}"
        )
    order = [stats.languages.index(lang) for lang in neurons.languages]
    rate = stats.probabilities[..., order]  # n_layers d_mlp lang
    mean = stats.mean_activations[..., order]  # a LapeError when built from counts alone
    return torch.stack([rate, mean], dim=-1).cpu()  # n_layers d_mlp lang 2


def _draw_nearest(
    features: Tensor, selected: Tensor, eligible: Tensor, pool: int, generator: torch.Generator
) -> Tensor:
    """For each selected neuron (random order), one of the ``pool`` nearest unused candidates."""
    spread = features.std(dim=0).clamp_min(1e-12)  # 2: per-feature spread in the layer
    scaled = features / spread
    available = torch.ones(eligible.numel(), dtype=torch.bool)
    picks = []
    for i in torch.randperm(selected.numel(), generator=generator).tolist():
        target = scaled[selected[i]]
        distance = (scaled[eligible] - target).norm(dim=-1)
        distance[~available] = torch.inf
        nearest = torch.argsort(distance, stable=True)[: min(pool, int(available.sum()))]
        choice = int(nearest[torch.randint(nearest.numel(), (1,), generator=generator)])
        available[choice] = False
        picks.append(int(eligible[choice]))
    return torch.tensor(picks, dtype=torch.long)


def activity_gap(neurons: LanguageNeurons, control: LanguageNeurons, stats: Any) -> dict[str, Any]:
    """How well a control matches a set on its own language: mean firing rate and mean
    activation of each, per language (the control's minus the set's in ``"gap"``).

    Example:
        >>> import torch
        >>> from tl_lape.stats import ActivationStats
        >>> counts = torch.tensor([[[9, 1], [8, 2], [1, 9], [5, 5]]])
        >>> s = ActivationStats.from_counts(counts, [10, 10], ["en", "fr"], counts * 0.5)
        >>> ln = LanguageNeurons.from_indices({"en": {0: [0]}, "fr": {0: [2]}}, n_layers=1, d_mlp=4)
        >>> c = LanguageNeurons.from_indices({"en": {0: [1]}, "fr": {0: [3]}}, n_layers=1, d_mlp=4)
        >>> round(activity_gap(ln, c, s)["en"]["gap"]["firing_rate"], 2)
        -0.1
    """
    features = _activity_features(neurons, stats)
    out: dict[str, Any] = {}
    set_masks, control_masks = neurons.masks(), control.masks()
    for k, lang in enumerate(neurons.languages):
        row: dict[str, Any] = {}
        for name, masks in (("set", set_masks), ("control", control_masks)):
            chosen = features[..., k, :][masks[k]]  # n 2
            values = chosen.mean(0) if chosen.numel() else torch.full((2,), float("nan"))
            row[name] = {"firing_rate": float(values[0]), "mean_activation": float(values[1])}
        row["gap"] = {
            key: row["control"][key] - row["set"][key] for key in ("firing_rate", "mean_activation")
        }
        out[lang] = row
    return out


def _normalise_indices(idx: Any, d_mlp: int | None, where: str) -> Tensor:
    """Copy ``idx`` to a sorted, de-duplicated int64 CPU tensor in [0, d_mlp) (None: [0, inf))."""
    if not isinstance(idx, Tensor):
        raise LapeError(f"{where} must be a 1-D integer tensor; received {type(idx).__name__}")
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise LapeError(f"{where} must hold integer neuron indices; received dtype {idx.dtype}")
    if idx.ndim > 1:
        raise LapeError(f"{where} must be 1-D; received shape {tuple(idx.shape)}")
    out = torch.unique(idx.detach().to("cpu", torch.int64).flatten(), sorted=True)
    if d_mlp is None and out.numel() and int(out[0]) < 0:
        raise LapeError(f"{where} holds neuron index {int(out[0])}; neuron indices must be >= 0")
    if d_mlp is not None and out.numel() and (int(out[0]) < 0 or int(out[-1]) >= d_mlp):
        bad = int(out[0]) if int(out[0]) < 0 else int(out[-1])
        raise LapeError(
            f"{where} holds neuron index {bad}, outside 0..{d_mlp - 1} (d_mlp={d_mlp}); "
            "check that the set belongs to a model of this width"
        )
    return out
