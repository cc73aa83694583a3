"""Resumable collection: checkpoint the statistics every N windows, resume after a crash.

Collecting statistics on 100M tokens per language takes hours; a run that is killed (a
preempted job, an out-of-memory kill, a reboot) should not start over.
``collect_activation_stats(..., checkpoint_path=...)`` (:func:`tl_lape.collect_activation_stats`)
writes the counts so far every ``checkpoint_every`` windows, atomically (a temporary file beside
the target, flushed to disk, then :func:`os.replace`; a kill mid-write leaves the previous
checkpoint intact). Started again with the same arguments, it skips the batches the checkpoint
covers and ends with statistics identical to those of an uninterrupted run.

Windows are enumerated deterministically (see :mod:`tl_lape.collection.windows`), so "batches
``0 .. next_batch - 1`` are done" is the whole progress record. A checkpoint also records a
fingerprint of the run (model name, shape, dtype and a sample of its weights; languages and a
SHA-256 of each token-id tensor; window settings; process share; extra hook names) and a SHA-256
of the token ids of every batch it covers. Resuming with another model, corpus or setting raises
:class:`~tl_lape.LapeError` naming what differs, before any work; a text corpus whose first
batches tokenize differently is refused when the resumed run reaches the checkpoint's batch.

A checkpoint is a tagged safetensors file (:mod:`tl_lape.formats`): format tag, version and a
checksum of its tensors and header, verified when it is read, so a damaged checkpoint is refused
instead of resumed from.

Example:
    >>> stats = collect_activation_stats(  # doctest: +SKIP
    ...     model, corpus, checkpoint_path="run.ckpt", checkpoint_every=500, seq_len=512
    ... )
    >>> CollectionCheckpoint.load("run.ckpt").finished  # doctest: +SKIP
    True
"""

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_lape._adapter import ModelAdapter
from tl_lape.collection.counting import HookList, ShareCounts, count_share
from tl_lape.collection.windows import WindowBatch, WindowSettings
from tl_lape.errors import LapeError
from tl_lape.formats import load_tagged_safetensors, parse_json, save_tagged_safetensors

__all__ = ["CollectionCheckpoint"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "tl_lape.collection_checkpoint"
#: Version 2 added the checksum.
CHECKPOINT_VERSION = 2
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
        """Write the checkpoint atomically and durably (safetensors; the fields above in its
        header, with a format tag, a version and a checksum).

        Example:
            >>> checkpoint.save("run.ckpt")  # doctest: +SKIP
        """
        tensors = {
            "n_tokens": self.n_tokens,
            "n_windows": self.n_windows,
            "active_counts": self.active_counts,
            "activation_sums": self.activation_sums,
        }
        header = {
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "next_batch": str(self.next_batch),
            "tokens_sha256": self.tokens_sha256,
            "finished": json.dumps(self.finished),
        }
        # fsync: on disk before it replaces the previous checkpoint
        save_tagged_safetensors(
            path,
            tensors,
            tag=CHECKPOINT_FORMAT,
            version=CHECKPOINT_VERSION,
            header=header,
            fsync=True,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "CollectionCheckpoint":
        """Read a checkpoint written by :meth:`save`, verifying its checksum.

        Raises:
            LapeError: The file is missing, not a tl_lape collection checkpoint, of another
                version, or damaged (one line naming the file).

        Example:
            >>> CollectionCheckpoint.load("run.ckpt").next_batch  # doctest: +SKIP
            120
        """
        advice = "delete it to start the collection afresh"
        tensors, header = load_tagged_safetensors(
            path,
            what="collection checkpoint",
            tag=CHECKPOINT_FORMAT,
            version=CHECKPOINT_VERSION,
            advice=advice,
            required=("n_tokens", "n_windows", "active_counts", "activation_sums"),
        )
        where = f"the collection checkpoint {str(path)!r}"
        try:
            finished = parse_json(header["finished"], where=where, advice=advice)
            if not isinstance(finished, bool):
                raise ValueError(f"finished is {finished!r}, not true or false")
            return cls(
                fingerprint=parse_json(header["fingerprint"], where=where, advice=advice),
                next_batch=int(header["next_batch"]),
                tokens_sha256=header["tokens_sha256"],
                finished=finished,
                n_tokens=tensors["n_tokens"],
                n_windows=tensors["n_windows"],
                active_counts=tensors["active_counts"],
                activation_sums=tensors["activation_sums"],
            )
        except LapeError:
            raise
        except (KeyError, ValueError) as err:
            raise LapeError(
                f"{str(path)!r} is a damaged collection checkpoint ({type(err).__name__}: "
                f"{err}); {advice}"
            ) from None

    def check_matches(
        self,
        fingerprint: Mapping[str, Any],
        path: str | os.PathLike[str],
        *,
        partial: bool = False,
    ) -> None:
        """Raise :class:`LapeError` naming every field where ``fingerprint`` differs from ours.

        ``partial``: compare only the fields ``fingerprint`` has (what is known before the
        model loads: the languages and the window options given)."""
        mine = _restrict(self.fingerprint, fingerprint) if partial else self.fingerprint
        differences = fingerprint_differences(mine, dict(fingerprint))
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


def _restrict(value: Any, shape: Any) -> Any:
    """``value`` cut down to the keys of ``shape``, at every level where both are dicts."""
    if not isinstance(shape, Mapping):
        return value
    inner = value if isinstance(value, Mapping) else {}
    return {key: _restrict(inner.get(key), sub) for key, sub in shape.items()}


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


class _Checkpointer:
    """The :class:`~tl_lape.collection.counting.CollectionObserver` that hashes, verifies and
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

    :func:`tl_lape.collection.counting.count_share` with a checkpoint: it resumes from
    ``checkpoint_path`` if that file exists (after checking that it belongs to this run) and
    writes it every ``checkpoint_every`` counted windows. A finished checkpoint of a token-id
    corpus answers without enumerating the corpus (its fingerprint already holds the SHA-256 of
    every token tensor); a text corpus is tokenised again, to check that it still gives the same
    batches. Without ``checkpoint_path`` it is :func:`~tl_lape.collection.counting.count_share`.
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
