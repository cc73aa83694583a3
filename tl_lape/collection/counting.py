"""The counting loop every collection run shares (internal; the entry point is
:func:`tl_lape.collect_activation_stats`, in :mod:`tl_lape.collection.engine`).

For every MLP neuron it counts on how many tokens it fires (``hook_pre > 0``, the paper's
``act_fn(gate) > 0``) and sums its activation value ``act_fn(hook_pre)``, per language. Counting
happens inside hooks on ``hook_pre``, on the model's device (no host synchronisation per batch),
so memory does not grow with the corpus. The forward pass stops right after the last layer's
``hook_pre``: its hook raises a private exception that ends the pass, which skips the last
layer's up and down projections, the final norm and the unembedding (and the ``[batch, pos,
d_vocab]`` logits). ``stop_at_layer`` cannot do this, as it stops before a block, and both
``HookedTransformer`` and ``TransformerBridge`` leave no state behind when a hook raises.

:func:`count_share` counts one process's share of the batches, from a starting point (a
checkpoint's counts) if given, and tells a :class:`CollectionObserver` about every batch: the
checkpoint writer (:mod:`tl_lape.collection.checkpoint`) and the residual-means reader
(:mod:`tl_lape.collection.residual_means`) are observers. :func:`stats_from_counts` turns the
final counts into :class:`~tl_lape.ActivationStats` with their provenance.
"""

import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_lape._adapter import ModelAdapter
from tl_lape._version import __version__
from tl_lape.collection.windows import WindowBatch, WindowSettings, iter_window_batches
from tl_lape.errors import LapeError
from tl_lape.stats import ActivationStats

#: Nothing here is for users: :func:`tl_lape.collect_activation_stats` drives it.
__all__: list[str] = []

#: Default window length when the model's context is at least this long.
DEFAULT_SEQ_LEN = 512

HookList = Sequence[tuple[str | Callable[[str], bool], Callable[..., Any]]]


class _StopForward(Exception):
    """Raised by the last layer's counting hook: nothing after it is needed."""


class _Accumulator:
    """Per-layer counters living on the device where each layer's activations arrive.

    With ``start`` the counters of each layer begin at those counts (a resumed run), created on
    the device of the layer's first activation, so that the float64 sums are added in exactly
    the order of an uninterrupted run.
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        n_languages: int,
        skip_positions: int,
        start: "ShareCounts | None" = None,
    ) -> None:
        self.adapter = adapter
        self.n_languages = n_languages
        self.skip = skip_positions
        self.start = start
        self.lang_index = 0
        # counts[layer]: [lang, d_mlp] int64; sums[layer]: [lang, d_mlp] float64.
        self.counts: list[Tensor | None] = [None] * adapter.n_layers
        self.sums: list[Tensor | None] = [None] * adapter.n_layers

    def hooks(self) -> list[tuple[str, Callable[..., None]]]:
        last = self.adapter.n_layers - 1
        return [
            (self.adapter.hook_pre(layer), self._make_hook(layer, stop=layer == last))
            for layer in range(self.adapter.n_layers)
        ]

    def _make_hook(self, layer: int, *, stop: bool) -> Callable[..., None]:
        act_fn = self.adapter.act_fn

        def count_hook(act: Tensor, hook: Any) -> None:
            pre = act[:, self.skip :] if self.skip else act  # batch pos d_mlp
            counts, sums = self.counts[layer], self.sums[layer]
            if counts is None or sums is None:
                counts, sums = self._first_counters(layer, pre.shape[-1], pre.device)
            counts[self.lang_index] += (pre > 0).sum(dim=(0, 1))  # d_mlp
            sums[self.lang_index] += act_fn(pre).sum(dim=(0, 1), dtype=torch.float64)  # d_mlp
            if stop:
                raise _StopForward

        return count_hook

    def _first_counters(
        self, layer: int, d_mlp: int, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        if self.start is None:
            shape = (self.n_languages, d_mlp)
            counts = torch.zeros(shape, dtype=torch.int64, device=device)
            sums = torch.zeros(shape, dtype=torch.float64, device=device)
        else:
            # [n_layers, d_mlp, lang] -> this layer's [lang, d_mlp] on the activation's device
            counts = self.start.active_counts[layer].T.contiguous().to(device)
            sums = self.start.activation_sums[layer].T.contiguous().to(device)
        self.counts[layer], self.sums[layer] = counts, sums
        return counts, sums

    def result(self) -> tuple[Tensor, Tensor]:
        """``(active_counts, activation_sums)`` as ``[n_layers, d_mlp, lang]`` CPU tensors.

        A layer no batch reached keeps its starting counts (zeros without ``start``).
        """
        shape = (self.n_languages, self.adapter.d_mlp)
        counts, sums = [], []
        for layer, (c, s) in enumerate(zip(self.counts, self.sums, strict=True)):
            if c is not None and s is not None:
                counts.append(c.cpu())
                sums.append(s.cpu())
            elif self.start is not None:
                counts.append(self.start.active_counts[layer].T)
                sums.append(self.start.activation_sums[layer].T)
            else:
                counts.append(torch.zeros(shape, dtype=torch.int64))
                sums.append(torch.zeros(shape, dtype=torch.float64))
        # n_layers lang d_mlp -> n_layers d_mlp lang
        return (
            torch.stack(counts).permute(0, 2, 1).contiguous(),
            torch.stack(sums).permute(0, 2, 1).contiguous(),
        )


def _run_counting(
    adapter: ModelAdapter, tokens: Tensor, hooks: HookList, extra_hooks: HookList
) -> None:
    model = adapter.model
    kwargs: dict[str, Any] = {}
    tokenizer = getattr(model, "tokenizer", None)
    if getattr(tokenizer, "padding_side", "right") == "left":
        # Some models infer an attention mask from pad tokens when padding left; our windows
        # have no padding, and a pad id inside the text (GPT-2: pad == EOS) must not be masked.
        kwargs["attention_mask"] = torch.ones_like(tokens)
    try:
        model.run_with_hooks(tokens, fwd_hooks=[*extra_hooks, *hooks], return_type=None, **kwargs)
    except _StopForward:
        return
    raise LapeError(  # pragma: no cover - a model whose last hook_pre never fires
        f"the forward pass of {adapter.model_name!r} never reached "
        f"{adapter.hook_pre(adapter.n_layers - 1)!r}; tl_lape cannot count its neurons"
    )


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _resolve_seq_len(adapter: ModelAdapter, seq_len: int | None) -> int:
    n_ctx = adapter.n_ctx
    if seq_len is None:
        return min(DEFAULT_SEQ_LEN, n_ctx) if n_ctx else DEFAULT_SEQ_LEN
    if n_ctx is not None and isinstance(seq_len, int) and seq_len > n_ctx:
        raise LapeError(
            f"seq_len={seq_len} exceeds the context length n_ctx={n_ctx} of "
            f"{adapter.model_name!r}; pass seq_len <= {n_ctx}"
        )
    return seq_len


def check_corpus(corpus: Any) -> None:
    """Refuse a corpus that is not a non-empty mapping of language codes to some text."""
    if not isinstance(corpus, Mapping):
        raise LapeError(
            f"corpus must map language codes to texts (e.g. {{'en': [...], 'zh': [...]}}); "
            f"received {type(corpus).__name__}"
        )
    if not corpus:
        raise LapeError("corpus is empty: give at least one language with some text")
    for language, source in corpus.items():
        if not isinstance(language, str) or not language:
            raise LapeError(f"corpus keys must be non-empty language codes; received {language!r}")
        empty = (isinstance(source, Tensor) and source.numel() == 0) or (
            isinstance(source, Sequence) and not isinstance(source, str) and len(source) == 0
        )
        if empty:
            raise LapeError(
                f"corpus[{language!r}] is empty (no documents); give every language some text or "
                "leave the language out"
            )


def make_settings(
    adapter: ModelAdapter,
    *,
    seq_len: int | None,
    batch_size: int,
    max_tokens_per_language: int | None,
    prepend_bos: bool,
    drop_last: bool,
) -> WindowSettings:
    """Build the window settings of a collection run (the corpus is checked already).

    The one place where the arguments of :func:`tl_lape.collect_activation_stats` become
    :class:`WindowSettings` (``seq_len=None``: 512, or the context length if shorter).

    Raises:
        LapeError: A ``seq_len`` longer than the model's context (naming both).
    """
    return WindowSettings(
        seq_len=_resolve_seq_len(adapter, seq_len),
        batch_size=batch_size,
        max_tokens_per_language=max_tokens_per_language,
        prepend_bos=prepend_bos,
        drop_last=drop_last,
    )


@dataclass
class ShareCounts:
    """Counts of one process's share of a collection run, on the CPU.

    Attributes:
        active_counts: ``hook_pre > 0`` counts, ``[n_layers, d_mlp, lang]`` int64.
        activation_sums: Sums of ``act_fn(hook_pre)``, ``[n_layers, d_mlp, lang]`` float64.
        n_tokens: Counted tokens per language, ``[lang]`` int64.
        n_windows: Windows per language, ``[lang]`` int64.
    """

    active_counts: Int[Tensor, "n_layers d_mlp lang"]
    activation_sums: Float[Tensor, "n_layers d_mlp lang"]
    n_tokens: Int[Tensor, " lang"]
    n_windows: Int[Tensor, " lang"]


@runtime_checkable
class CollectionObserver(Protocol):
    """What :func:`count_share` tells an observer (the checkpoint writer, the residual-means
    reader) while it runs."""

    def before_batch(self, batch: WindowBatch) -> None:
        """Called for every enumerated batch, before it is counted (may raise to stop)."""

    def after_batch(
        self,
        batch: WindowBatch,
        *,
        counted: bool,
        next_batch: int,
        snapshot: Callable[[], ShareCounts],
    ) -> None:
        """Called after every enumerated batch; ``counted``: it was this process's to count."""

    def end_of_corpus(self) -> None:
        """Called once the enumeration is exhausted (may raise)."""

    def finish(self, next_batch: int, counts: ShareCounts) -> None:
        """Called with the final counts, outside inference mode."""


def count_share(
    adapter: ModelAdapter,
    corpus: Mapping[str, Any],
    settings: WindowSettings,
    *,
    rank: int = 0,
    world_size: int = 1,
    fwd_hooks: HookList = (),
    progress: bool = True,
    start: ShareCounts | None = None,
    start_batch: int = 0,
    observer: CollectionObserver | None = None,
) -> ShareCounts:
    """The collection loop shared by plain, resumable, distributed and residual-means collection.

    Enumerates the batches of ``corpus`` (:func:`iter_window_batches`) and counts those whose
    ``index >= start_batch`` and ``index % world_size == rank``, continuing from the counts
    ``start`` (a checkpoint's) if given. ``observer`` sees every batch (see
    :class:`CollectionObserver`); :mod:`tl_lape.collection.checkpoint` uses it to hash and
    checkpoint, :mod:`tl_lape.collection.residual_means` to follow the language.

    Returns:
        The counts of this process's share (plus ``start``), on the CPU.
    """
    n_lang = len(corpus)
    accumulator = _Accumulator(adapter, n_lang, int(settings.prepend_bos), start=start)
    hooks = accumulator.hooks()
    if start is None:
        n_tokens = torch.zeros(n_lang, dtype=torch.int64)
        n_windows = torch.zeros(n_lang, dtype=torch.int64)
    else:
        n_tokens, n_windows = start.n_tokens.clone(), start.n_windows.clone()
    next_batch = start_batch

    def snapshot() -> ShareCounts:
        counts, sums = accumulator.result()  # [n_layers, d_mlp, lang] each, on the CPU
        return ShareCounts(counts, sums, n_tokens.clone(), n_windows.clone())

    total = None
    if settings.max_tokens_per_language is not None:
        total = settings.max_tokens_per_language * n_lang // world_size
    with (
        tqdm(
            total=total,
            initial=int(n_tokens.sum()),
            unit="tok",
            unit_scale=True,
            disable=not progress,
            desc="LAPE" if world_size == 1 else f"LAPE rank {rank}",
        ) as bar,
        torch.inference_mode(),
    ):
        for batch in iter_window_batches(adapter, corpus, settings):
            if observer is not None:
                observer.before_batch(batch)
            counted = batch.index >= start_batch and batch.index % world_size == rank
            if counted:
                accumulator.lang_index = batch.lang_index
                _run_counting(adapter, batch.tokens.to(adapter.device), hooks, fwd_hooks)
                n_tokens[batch.lang_index] += batch.n_counted
                n_windows[batch.lang_index] += batch.tokens.shape[0]
                bar.set_postfix_str(batch.language, refresh=False)
                bar.update(batch.n_counted)
            next_batch = max(next_batch, batch.index + 1)
            if observer is not None:
                observer.after_batch(
                    batch, counted=counted, next_batch=next_batch, snapshot=snapshot
                )
        if observer is not None:
            observer.end_of_corpus()
    counts = snapshot()  # outside inference mode: ordinary tensors
    if observer is not None:
        observer.finish(next_batch, counts)
    return counts


def stats_from_counts(
    adapter: ModelAdapter,
    corpus: Mapping[str, Any],
    settings: WindowSettings,
    counts: ShareCounts,
) -> ActivationStats:
    """The :class:`~tl_lape.ActivationStats` of a finished run, with its provenance metadata."""
    languages = tuple(corpus)
    return ActivationStats(
        languages=languages,
        n_tokens=counts.n_tokens,
        active_counts=counts.active_counts,
        activation_sums=counts.activation_sums,
        metadata=_stats_metadata(adapter, settings, languages, counts.n_windows.tolist()),
    )


def _stats_metadata(
    adapter: ModelAdapter,
    settings: WindowSettings,
    languages: tuple[str, ...],
    n_windows: Sequence[int],
) -> dict[str, Any]:
    """The provenance recorded in the statistics' metadata (JSON-serialisable)."""
    return {
        "model_name": adapter.model_name,
        "dtype": _model_dtype(adapter.model),
        "n_layers": adapter.n_layers,
        "d_mlp": adapter.d_mlp,
        "gated": adapter.gated,
        "act_fn": adapter.act_fn_name,
        "hook_names": adapter.hook_patterns(),
        "counted": "hook_pre > 0",
        **settings.to_dict(),
        "document_separator": "eos" if adapter.eos_token_id is not None else None,
        "n_windows": dict(zip(languages, (int(n) for n in n_windows), strict=True)),
        "versions": {
            "torch": torch.__version__,
            "transformer_lens": _package_version("transformer-lens"),
            "transformers": _package_version("transformers"),
            "tl_lape": _tl_lape_version(),
        },
    }


def _model_dtype(model: Any) -> str | None:
    """The model's dtype as recorded in the statistics (``"float32"``), or None if unknown."""
    dtype = getattr(getattr(model, "cfg", None), "dtype", None)
    if not isinstance(dtype, torch.dtype):
        try:
            dtype = next(iter(model.parameters())).dtype
        except (AttributeError, TypeError, StopIteration):
            return None
    return str(dtype).removeprefix("torch.")


def _tl_lape_version() -> str:
    return __version__
