"""Resumable collection: checkpoint the statistics every N windows, resume after a crash.

Collecting statistics on 100M tokens per language takes hours; a run that is killed (a
preempted job, an out-of-memory kill, a reboot) should not start over.
:func:`collect_activation_stats_resumable` is :func:`tl_lape.collect_activation_stats` plus a
checkpoint file: every ``checkpoint_every`` windows it writes the counts so far, atomically (a
temporary file beside the target, then :func:`os.replace`; a kill mid-write leaves the previous
checkpoint intact). Started again with the same arguments, it skips the batches the checkpoint
covers and ends with statistics identical to those of an uninterrupted run.

Windows are enumerated deterministically (see :mod:`tl_lape.collect`), so "batches
``0 .. next_batch - 1`` are done" is the whole progress record. A checkpoint also records a
fingerprint of the run (model name, shape, dtype and a sample of its weights; languages and a
SHA-256 of each token-id tensor; window settings; process share; extra hook names) and a SHA-256
of the token ids of every batch it covers. Resuming with another model, corpus or setting raises
:class:`~tl_lape.LapeError` naming what differs, before any work; a text corpus whose first
batches tokenize differently is refused when the resumed run reaches the checkpoint's batch.

Example:
    >>> stats = collect_activation_stats_resumable(  # doctest: +SKIP
    ...     model, corpus, "run.ckpt", checkpoint_every=500, seq_len=512
    ... )
"""

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_lape._adapter import ModelAdapter, adapt
from tl_lape._io import atomic_path, existing_file
from tl_lape.collect import (
    HookList,
    WindowSettings,
    _Accumulator,
    _check_corpus,
    _resolve_seq_len,
    _run_counting,
    _stats_metadata,
    iter_window_batches,
)
from tl_lape.errors import LapeError
from tl_lape.stats import ActivationStats

__all__ = ["CollectionCheckpoint", "collect_activation_stats_resumable"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "tl_lape.collection_checkpoint"
CHECKPOINT_VERSION = 1
#: Values of the model's first parameter hashed into the fingerprint (cheap, catches other
#: weights of the same architecture).
_WEIGHT_SAMPLE = 4096


@dataclass(frozen=True, eq=False)
class CollectionCheckpoint:
    """Progress of one collection run (one process's share): counts so far and where to go on.

    Attributes:
        fingerprint: What the run was (model, corpus, settings, process share); JSON-able.
        next_batch: Batches ``0 .. next_batch - 1`` of the enumeration are done.
        tokens_sha256: SHA-256 of the token ids of batches ``0 .. next_batch - 1`` (all of
            them, including other processes' shares), in order.
        finished: The run went through the whole corpus.
        n_tokens: Counted tokens per language so far.
        n_windows: Windows per language so far.
        active_counts: ``hook_pre > 0`` counts so far.
        activation_sums: Sums of ``act_fn(hook_pre)`` so far.
    """

    fingerprint: dict[str, Any]
    next_batch: int
    tokens_sha256: str
    finished: bool
    n_tokens: Int[Tensor, " lang"]
    n_windows: Int[Tensor, " lang"]
    active_counts: Int[Tensor, "n_layers d_mlp lang"]
    activation_sums: Float[Tensor, "n_layers d_mlp lang"]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the checkpoint atomically (safetensors; the fields above in its header).

        Example:
            >>> checkpoint.save("run.ckpt")  # doctest: +SKIP
        """
        from safetensors.torch import save_file

        tensors = {
            "n_tokens": self.n_tokens.contiguous(),
            "n_windows": self.n_windows.contiguous(),
            "active_counts": self.active_counts.contiguous(),
            "activation_sums": self.activation_sums.contiguous(),
        }
        header = {
            "format": CHECKPOINT_FORMAT,
            "version": str(CHECKPOINT_VERSION),
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "next_batch": str(self.next_batch),
            "tokens_sha256": self.tokens_sha256,
            "finished": json.dumps(self.finished),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=header)
            with open(tmp, "rb") as f:  # on disk before it replaces the previous checkpoint
                os.fsync(f.fileno())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "CollectionCheckpoint":
        """Read a checkpoint written by :meth:`save`.

        Raises:
            LapeError: The file is missing, not a tl_lape collection checkpoint, or damaged.

        Example:
            >>> CollectionCheckpoint.load("run.ckpt").next_batch  # doctest: +SKIP
            120
        """
        from safetensors import safe_open

        p = existing_file(path, "collection checkpoint")
        advice = "delete it to start the collection afresh"
        try:
            with safe_open(str(p), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        except Exception as err:
            raise LapeError(
                f"{str(p)!r} is not a readable collection checkpoint ({err}); {advice}"
            ) from None
        if header.get("format") != CHECKPOINT_FORMAT:
            raise LapeError(
                f"{str(p)!r} is not a tl_lape collection checkpoint (format "
                f"{header.get('format')!r}, expected {CHECKPOINT_FORMAT!r}); {advice}"
            )
        if header.get("version") != str(CHECKPOINT_VERSION):
            raise LapeError(
                f"{str(p)!r} is a collection checkpoint of version {header.get('version')!r}; "
                f"this tl_lape reads version {CHECKPOINT_VERSION}; {advice}"
            )
        try:
            checkpoint = cls(
                fingerprint=json.loads(header["fingerprint"]),
                next_batch=int(header["next_batch"]),
                tokens_sha256=header["tokens_sha256"],
                finished=bool(json.loads(header["finished"])),
                n_tokens=tensors["n_tokens"],
                n_windows=tensors["n_windows"],
                active_counts=tensors["active_counts"],
                activation_sums=tensors["activation_sums"],
            )
        except (KeyError, ValueError) as err:
            raise LapeError(
                f"{str(p)!r} is a damaged collection checkpoint ({err}); {advice}"
            ) from None
        return checkpoint

    def check_matches(self, fingerprint: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
        """Raise :class:`LapeError` naming every field where ``fingerprint`` differs from ours."""
        differences = _differences(self.fingerprint, dict(fingerprint))
        if differences:
            shown = "; ".join(
                f"{key}: {mine!r} in the checkpoint, {theirs!r} now"
                for key, mine, theirs in differences[:6]
            )
            more = f" (and {len(differences) - 6} more)" if len(differences) > 6 else ""
            raise LapeError(
                f"checkpoint {str(path)!r} belongs to another collection run: {shown}{more}. "
                "Resume with the original model, corpus and settings, or delete the checkpoint "
                "(or choose another checkpoint_path) to start afresh"
            )


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Leaf paths where two JSON-like values differ, as ``(path, a_value, b_value)``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def _tensor_sha256(ids: Tensor) -> str:
    ids = ids.detach().to("cpu", torch.long).contiguous()
    return hashlib.sha256(ids.numpy().data).hexdigest()


def _weights_sample(model: Any) -> tuple[str | None, str | None]:
    """``(dtype, sha256)`` of the first values of the model's first parameter, if readable."""
    try:
        param = next(iter(model.parameters()))
        sample = param.detach().reshape(-1)[:_WEIGHT_SAMPLE].to("cpu", torch.float32)
        return str(param.dtype), hashlib.sha256(sample.numpy().data).hexdigest()
    except Exception:  # offloaded (meta) weights or a model without parameters()
        return None, None


def collection_fingerprint(
    adapter: ModelAdapter,
    corpus: Mapping[str, Any],
    settings: WindowSettings,
    *,
    rank: int = 0,
    world_size: int = 1,
    fwd_hooks: HookList = (),
) -> dict[str, Any]:
    """What identifies a collection run, as a JSON-able dict (see the module docstring).

    A token-id tensor is hashed whole; a text corpus (possibly a one-shot stream) is recorded as
    ``"text"`` and checked batch by batch while resuming instead.
    """
    cfg = getattr(adapter.model, "cfg", None)
    dtype, weights = _weights_sample(adapter.model)
    return {
        "model": {
            "name": adapter.model_name,
            "n_layers": adapter.n_layers,
            "d_mlp": adapter.d_mlp,
            "d_model": getattr(cfg, "d_model", None),
            "d_vocab": getattr(cfg, "d_vocab", None),
            "gated": adapter.gated,
            "act_fn": adapter.act_fn_name,
            "dtype": dtype,
            "weights_sample_sha256": weights,
        },
        "corpus": {
            "languages": list(corpus),
            "token_ids_sha256": {
                lang: _tensor_sha256(src) if isinstance(src, Tensor) else "text"
                for lang, src in corpus.items()
            },
        },
        "settings": settings.to_dict(),
        "share": {"rank": rank, "world_size": world_size},
        "fwd_hooks": [name if isinstance(name, str) else "<filter>" for name, _ in fwd_hooks],
    }


@dataclass
class _Progress:
    """Counts of one process's share, as ``[n_layers, d_mlp, lang]`` / ``[lang]`` CPU tensors."""

    active_counts: Tensor
    activation_sums: Tensor
    n_tokens: Tensor
    n_windows: Tensor


def collect_share(
    adapter: ModelAdapter,
    corpus: Mapping[str, Any],
    settings: WindowSettings,
    *,
    rank: int = 0,
    world_size: int = 1,
    fwd_hooks: HookList = (),
    progress: bool = True,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
) -> _Progress:
    """Count the batches whose ``index % world_size == rank``, checkpointing if asked.

    Shared by :func:`collect_activation_stats_resumable` and
    :func:`tl_lape.distributed.collect_activation_stats_distributed`.
    """
    languages = tuple(corpus)
    n_lang = len(languages)
    shape = (adapter.n_layers, adapter.d_mlp, n_lang)
    base = _Progress(
        torch.zeros(shape, dtype=torch.int64),
        torch.zeros(shape, dtype=torch.float64),
        torch.zeros(n_lang, dtype=torch.int64),
        torch.zeros(n_lang, dtype=torch.int64),
    )
    start, expected_sha = 0, None
    fingerprint = None
    if checkpoint_path is not None:
        fingerprint = collection_fingerprint(
            adapter, corpus, settings, rank=rank, world_size=world_size, fwd_hooks=fwd_hooks
        )
        if Path(checkpoint_path).exists():
            previous = CollectionCheckpoint.load(checkpoint_path)
            previous.check_matches(fingerprint, checkpoint_path)
            base = _Progress(
                previous.active_counts,
                previous.activation_sums,
                previous.n_tokens,
                previous.n_windows,
            )
            start, expected_sha = previous.next_batch, previous.tokens_sha256
            logger.info("resuming %s at batch %d", checkpoint_path, start)

    accumulator = _Accumulator(adapter, n_lang, skip_positions=int(settings.prepend_bos))
    # Resumed counters continue from the checkpoint's values inside the accumulator, so that
    # the float64 sums are added in exactly the order of an uninterrupted run.
    hooks = [
        (name, _seeded(accumulator, layer, base, fn))
        for layer, (name, fn) in enumerate(accumulator.hooks())
    ]
    n_tokens, n_windows = base.n_tokens.clone(), base.n_windows.clone()
    digest = hashlib.sha256()
    verified = expected_sha is None
    since_checkpoint = 0
    next_batch = start

    def snapshot() -> _Progress:
        counts, sums = accumulator.result()  # [n_layers, d_mlp, lang] each, on the CPU
        for layer, seen in enumerate(accumulator.counts):
            if seen is None:  # no batch reached this layer in this session
                counts[layer], sums[layer] = base.active_counts[layer], base.activation_sums[layer]
        return _Progress(counts, sums, n_tokens.clone(), n_windows.clone())

    def write(finished: bool) -> None:
        if checkpoint_path is None or fingerprint is None:
            return
        now = snapshot()
        CollectionCheckpoint(
            fingerprint=fingerprint,
            next_batch=next_batch,
            tokens_sha256=digest.copy().hexdigest(),
            finished=finished,
            n_tokens=now.n_tokens,
            n_windows=now.n_windows,
            active_counts=now.active_counts,
            activation_sums=now.activation_sums,
        ).save(checkpoint_path)

    def verify() -> None:
        if digest.hexdigest() != expected_sha:
            raise LapeError(
                f"checkpoint {str(checkpoint_path)!r} belongs to another corpus: the token ids "
                f"of its first {start} batches differ from those of the corpus given now. "
                "Resume with the original corpus, or delete the checkpoint to start afresh"
            )

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
            if batch.index >= start and not verified:
                verify()
                verified = True
            if batch.index >= start and batch.index % world_size == rank:
                accumulator.lang_index = batch.lang_index
                _run_counting(adapter, batch.tokens.to(adapter.device), hooks, fwd_hooks)
                n_tokens[batch.lang_index] += batch.n_counted
                n_windows[batch.lang_index] += batch.tokens.shape[0]
                since_checkpoint += batch.tokens.shape[0]
                bar.set_postfix_str(batch.language, refresh=False)
                bar.update(batch.n_counted)
            if checkpoint_path is not None:
                digest.update(batch.tokens.contiguous().numpy().data)
            next_batch = max(next_batch, batch.index + 1)
            if since_checkpoint >= checkpoint_every:
                write(finished=False)
                since_checkpoint = 0
        if not verified:  # the corpus ended before the checkpoint's batch
            verify()
    write(finished=True)
    return snapshot()


def _seeded(
    accumulator: _Accumulator, layer: int, base: _Progress, count_hook: Callable[..., None]
) -> Callable[..., None]:
    """Wrap a counting hook so that its layer's counters start at the checkpoint's values.

    The counters are created on the device where the layer's activations arrive (a model split
    over several devices has its layers on different devices).
    """

    def hook_fn(act: Tensor, hook: Any) -> None:
        if accumulator.counts[layer] is None:
            # [n_layers, d_mlp, lang] -> this layer's [lang, d_mlp] on the activation's device
            accumulator.counts[layer] = base.active_counts[layer].T.contiguous().to(act.device)
            accumulator.sums[layer] = base.activation_sums[layer].T.contiguous().to(act.device)
        count_hook(act, hook=hook)

    return hook_fn


def make_settings(
    adapter: ModelAdapter,
    corpus: Any,
    *,
    seq_len: int | None,
    batch_size: int,
    max_tokens_per_language: int | None,
    prepend_bos: bool,
    drop_last: bool,
) -> WindowSettings:
    """Check the corpus and build the window settings exactly as collect_activation_stats does."""
    _check_corpus(corpus)
    return WindowSettings(
        seq_len=_resolve_seq_len(adapter, seq_len),
        batch_size=batch_size,
        max_tokens_per_language=max_tokens_per_language,
        prepend_bos=prepend_bos,
        drop_last=drop_last,
    )


def _check_every(checkpoint_every: Any) -> int:
    if (
        isinstance(checkpoint_every, bool)
        or not isinstance(checkpoint_every, int)
        or checkpoint_every < 1
    ):
        raise LapeError(
            f"checkpoint_every must be a positive int (windows between checkpoints); "
            f"received {checkpoint_every!r}"
        )
    return checkpoint_every


def collect_activation_stats_resumable(
    model: Any,
    corpus: Mapping[str, Iterable[str] | Int[Tensor, " n_tokens"]],
    checkpoint_path: str | os.PathLike[str],
    *,
    checkpoint_every: int = 1000,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens_per_language: int | None = None,
    prepend_bos: bool = False,
    drop_last: bool = True,
    fwd_hooks: HookList = (),
    progress: bool = True,
) -> ActivationStats:
    """:func:`tl_lape.collect_activation_stats` that survives being killed.

    Every ``checkpoint_every`` windows the statistics so far are written atomically to
    ``checkpoint_path``; if that file exists when the function starts, the run resumes from it.
    The result is identical (counts, sums, token totals, metadata) to an uninterrupted
    :func:`~tl_lape.collect_activation_stats` with the same arguments. When the run completes
    the checkpoint is kept, marked finished: calling again returns the same statistics without
    running the model. Delete it to collect afresh.

    Args:
        model: A TransformerLens ``TransformerBridge`` or ``HookedTransformer``.
        corpus: As for :func:`~tl_lape.collect_activation_stats`. A text corpus must yield the
            same documents in the same order when the run is restarted.
        checkpoint_path: The checkpoint file; its directory must exist.
        checkpoint_every: Windows (of ``seq_len`` tokens) between checkpoints.
        seq_len: As for :func:`~tl_lape.collect_activation_stats`.
        batch_size: As for :func:`~tl_lape.collect_activation_stats`.
        max_tokens_per_language: As for :func:`~tl_lape.collect_activation_stats`.
        prepend_bos: As for :func:`~tl_lape.collect_activation_stats`.
        drop_last: As for :func:`~tl_lape.collect_activation_stats`.
        fwd_hooks: As for :func:`~tl_lape.collect_activation_stats`.
        progress: As for :func:`~tl_lape.collect_activation_stats`.

    Returns:
        :class:`~tl_lape.ActivationStats` of the whole corpus.

    Raises:
        LapeError: Anything :func:`~tl_lape.collect_activation_stats` refuses; a checkpoint of
            another model, corpus or setting (naming what differs); a damaged checkpoint.

    Example:
        >>> stats = collect_activation_stats_resumable(  # doctest: +SKIP
        ...     model, {"en": en_ids, "zh": zh_ids}, "lape.ckpt", checkpoint_every=200
        ... )
        >>> stats.n_tokens  # doctest: +SKIP
        tensor([1000448, 1000448])
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
    done = collect_share(
        adapter,
        corpus,
        settings,
        fwd_hooks=fwd_hooks,
        progress=progress,
        checkpoint_path=checkpoint_path,
        checkpoint_every=_check_every(checkpoint_every),
    )
    languages = tuple(corpus)
    return ActivationStats(
        languages=languages,
        n_tokens=done.n_tokens,
        active_counts=done.active_counts,
        activation_sums=done.activation_sums,
        metadata=_stats_metadata(adapter, settings, languages, done.n_windows.tolist()),
    )
