"""Resumable collection: checkpoint the statistics every N windows, resume after a crash.

Collecting statistics on 100M tokens per language takes hours; a run that is killed (a
preempted job, an out-of-memory kill, a reboot) should not start over.
:func:`collect_activation_stats_resumable` is :func:`tl_lape.collect_activation_stats` plus a
checkpoint file: every ``checkpoint_every`` windows it writes the counts so far, atomically (a
temporary file beside the target, then :func:`os.replace`; a kill mid-write leaves the previous
checkpoint intact). Started again with the same arguments, it skips the batches the checkpoint
covers and ends with statistics identical to those of an uninterrupted run.

Windows are enumerated deterministically (see :mod:`tl_lape.collection.engine`), so "batches
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

from tl_lape._adapter import ModelAdapter, adapt
from tl_lape.collection.engine import (
    HookList,
    ShareCounts,
    WindowBatch,
    WindowSettings,
    count_share,
    make_settings,
    stats_from_counts,
)
from tl_lape.errors import LapeError
from tl_lape.formats import atomic_path, existing_file
from tl_lape.stats import ActivationStats

__all__ = [
    "CollectionCheckpoint",
    "collect_activation_stats_resumable",
    "collect_share",
    "collection_fingerprint",
    "fingerprint_differences",
]

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
        differences = fingerprint_differences(self.fingerprint, dict(fingerprint))
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


def fingerprint_differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Leaf paths where two JSON-like values differ, as ``(path, a_value, b_value)``.

    Example:
        >>> fingerprint_differences({"model": {"name": "a", "d_mlp": 8}}, {"model": {"name": "b"}})
        [('model.d_mlp', 8, None), ('model.name', 'a', 'b')]
    """
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(a) | set(b)):
            out += fingerprint_differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def _tensor_sha256(ids: Tensor) -> str:
    ids = ids.detach().to("cpu", torch.long).contiguous()
    return hashlib.sha256(ids.numpy().data).hexdigest()


def _weights_sample(model: Any) -> tuple[str | None, str | None]:
    """``(dtype, sha256)`` of the first values of the model's first parameter, if readable."""
    try:
        param = next(iter(model.parameters()))
    except (AttributeError, TypeError, StopIteration) as err:  # no parameters() / none at all
        logger.warning(
            "the collection fingerprint records no weight sample: the model has no readable "
            "parameters (%s: %s); a checkpoint of other weights of the same shape is not refused",
            type(err).__name__,
            err,
        )
        return None, None
    try:
        sample = param.detach().reshape(-1)[:_WEIGHT_SAMPLE].to("cpu", torch.float32)
    except NotImplementedError as err:  # offloaded (meta) weights: "Cannot copy out of meta"
        logger.warning(
            "the collection fingerprint records no weight sample: the first parameter is not "
            "readable (%s); a checkpoint of other weights of the same shape is not refused",
            err,
        )
        return None, None  # as before: old checkpoints of such models still match
    return str(param.dtype), hashlib.sha256(sample.numpy().data).hexdigest()


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


#: Counts of one process's share (the former private name; see :class:`ShareCounts`).
_Progress = ShareCounts


class _Checkpointer:
    """The :class:`~tl_lape.collection.engine.CollectionObserver` that hashes, verifies and
    checkpoints.

    It hashes the token ids of every enumerated batch (all processes' shares) and, once the run
    reaches the checkpoint's ``start`` batch, compares the hash of batches ``0 .. start - 1``
    with the checkpoint's; every ``every`` counted windows, and at the end, it writes a new
    checkpoint.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fingerprint: dict[str, Any],
        every: int,
        start: int,
        expected_sha: str | None,
    ) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.every = every
        self.start = start
        self.expected_sha = expected_sha
        self.verified = expected_sha is None
        self.digest = hashlib.sha256()
        self.since_checkpoint = 0

    def before_batch(self, batch: WindowBatch) -> None:
        if batch.index >= self.start and not self.verified:
            self._verify()

    def after_batch(
        self,
        batch: WindowBatch,
        *,
        counted: bool,
        next_batch: int,
        snapshot: Callable[[], ShareCounts],
    ) -> None:
        if counted:
            self.since_checkpoint += batch.tokens.shape[0]
        self.digest.update(batch.tokens.contiguous().numpy().data)
        if self.since_checkpoint >= self.every:
            self._write(next_batch, snapshot(), finished=False)
            self.since_checkpoint = 0

    def end_of_corpus(self) -> None:
        if not self.verified:  # the corpus ended before the checkpoint's batch
            self._verify()

    def finish(self, next_batch: int, counts: ShareCounts) -> None:
        self._write(next_batch, counts, finished=True)

    def _verify(self) -> None:
        if self.digest.hexdigest() != self.expected_sha:
            raise LapeError(
                f"checkpoint {str(self.path)!r} belongs to another corpus: the token ids "
                f"of its first {self.start} batches differ from those of the corpus given now. "
                "Resume with the original corpus, or delete the checkpoint to start afresh"
            )
        self.verified = True

    def _write(self, next_batch: int, counts: ShareCounts, *, finished: bool) -> None:
        CollectionCheckpoint(
            fingerprint=self.fingerprint,
            next_batch=next_batch,
            tokens_sha256=self.digest.copy().hexdigest(),
            finished=finished,
            n_tokens=counts.n_tokens,
            n_windows=counts.n_windows,
            active_counts=counts.active_counts,
            activation_sums=counts.activation_sums,
        ).save(self.path)


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
) -> ShareCounts:
    """Count the batches whose ``index % world_size == rank``, checkpointing if asked.

    :func:`tl_lape.collection.engine.count_share` with a checkpoint: it resumes from
    ``checkpoint_path``
    if that file exists (after checking that it belongs to this run) and writes it every
    ``checkpoint_every`` counted windows. A finished checkpoint of a token-id corpus answers
    without enumerating the corpus (its fingerprint already holds the SHA-256 of every token
    tensor); a text corpus is tokenised again, to check that it still gives the same batches.
    Used by :func:`collect_activation_stats_resumable` and
    :func:`tl_lape.collection.distributed.collect_activation_stats_distributed`.
    """
    start: ShareCounts | None = None
    start_batch = 0
    observer: _Checkpointer | None = None
    if checkpoint_path is not None:
        fingerprint = collection_fingerprint(
            adapter, corpus, settings, rank=rank, world_size=world_size, fwd_hooks=fwd_hooks
        )
        expected_sha = None
        if Path(checkpoint_path).exists():
            previous = CollectionCheckpoint.load(checkpoint_path)
            previous.check_matches(fingerprint, checkpoint_path)
            start = ShareCounts(
                previous.active_counts,
                previous.activation_sums,
                previous.n_tokens,
                previous.n_windows,
            )
            if previous.finished and all(isinstance(src, Tensor) for src in corpus.values()):
                logger.info("%s is a finished checkpoint; not collecting", checkpoint_path)
                return start
            start_batch, expected_sha = previous.next_batch, previous.tokens_sha256
            logger.info("resuming %s at batch %d", checkpoint_path, start_batch)
        observer = _Checkpointer(
            checkpoint_path, fingerprint, checkpoint_every, start_batch, expected_sha
        )
    return count_share(
        adapter,
        corpus,
        settings,
        rank=rank,
        world_size=world_size,
        fwd_hooks=fwd_hooks,
        progress=progress,
        start=start,
        start_batch=start_batch,
        observer=observer,
    )


def check_checkpoint_every(checkpoint_every: Any) -> int:
    """``checkpoint_every`` if it is a positive int, else a :class:`LapeError` naming it."""
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
        checkpoint_every=check_checkpoint_every(checkpoint_every),
    )
    return stats_from_counts(adapter, corpus, settings, done)
