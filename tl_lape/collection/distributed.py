"""Data-parallel collection with ``torch.distributed``: many processes, one set of statistics.

Windows are enumerated deterministically (see :mod:`tl_lape.collection.engine`), so N processes can
split the work without talking to each other: process ``rank`` runs the batches whose index is
``rank`` modulo ``world_size``. At the end the counts, sums and token totals are summed with
one ``all_reduce`` and every process holds the statistics of the whole corpus.

Launch one process per device with ``torchrun`` (``gloo`` on CPUs, ``nccl`` on GPUs)::

    # collect.py
    import torch, torch.distributed as dist, tl_lape
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    gpu = torch.cuda.is_available()
    device = f"cuda:{dist.get_rank() % torch.cuda.device_count()}" if gpu else "cpu"
    model = TransformerBridge.boot_transformers("Qwen/Qwen2-0.5B", device=device)
    stats = tl_lape.collect_activation_stats_distributed(model, corpus, seq_len=512)
    if dist.get_rank() == 0:
        stats.save("stats.safetensors")
    dist.destroy_process_group()

    $ torchrun --nproc-per-node 4 collect.py

Token counts and active counts are integers, so they equal a single-process run exactly. The
float64 activation sums are added in another order (per process, then across processes) and
agree with a single-process run to float64 rounding (relative differences around 1e-15).

Every process reads (and tokenizes) the whole corpus to enumerate the windows but runs the
model only on its share; pass token-id tensors to keep that cheap. Combined with
``checkpoint_path``, each process checkpoints its own share (``<name>.rank<r>-of-<n><suffix>``)
and a restarted job with the same number of processes resumes.
"""

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from tl_lape._adapter import adapt
from tl_lape.collection.checkpoint import (
    check_checkpoint_every,
    collect_share,
    collection_fingerprint,
    fingerprint_differences,
)
from tl_lape.collection.engine import HookList, ShareCounts, make_settings, stats_from_counts
from tl_lape.errors import LapeError
from tl_lape.stats import ActivationStats

__all__ = ["collect_activation_stats_distributed", "rank_checkpoint_path"]


def rank_checkpoint_path(path: str | os.PathLike[str], rank: int, world_size: int) -> Path:
    """The checkpoint file of one process: ``run.ckpt`` -> ``run.rank0-of-4.ckpt``.

    Example:
        >>> rank_checkpoint_path("out/run.ckpt", 1, 4).name
        'run.rank1-of-4.ckpt'
    """
    p = Path(path)
    return p.with_name(f"{p.stem}.rank{rank}-of-{world_size}{p.suffix}")


def _reduce_device(group: Any) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def collect_activation_stats_distributed(
    model: Any,
    corpus: Mapping[str, Iterable[str] | Int[Tensor, " n_tokens"]],
    *,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens_per_language: int | None = None,
    prepend_bos: bool = False,
    drop_last: bool = True,
    fwd_hooks: HookList = (),
    progress: bool = True,
    group: Any = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
) -> ActivationStats:
    """:func:`tl_lape.collect_activation_stats` split over the processes of a process group.

    Call it in every process of an initialised ``torch.distributed`` process group (e.g. under
    ``torchrun``), each with its own copy of the model and the same corpus and arguments. Each
    process runs a disjoint share of the windows; the statistics are then summed across
    processes and every process returns the statistics of the whole corpus.

    Args:
        model: This process's TransformerLens model (on this process's device).
        corpus: The same corpus in every process (see :func:`~tl_lape.collect_activation_stats`).
        seq_len: As for :func:`~tl_lape.collect_activation_stats`; same in all processes.
        batch_size: As for :func:`~tl_lape.collect_activation_stats`; same in all processes.
        max_tokens_per_language: As for :func:`~tl_lape.collect_activation_stats`; same in
            all processes.
        prepend_bos: As for :func:`~tl_lape.collect_activation_stats`; same in all processes.
        drop_last: As for :func:`~tl_lape.collect_activation_stats`; same in all processes.
        fwd_hooks: As for :func:`~tl_lape.collect_activation_stats`; same in all processes.
        progress: As for :func:`~tl_lape.collect_activation_stats`.
        group: The process group (default: the default group).
        checkpoint_path: If given, each process checkpoints its share to
            :func:`rank_checkpoint_path` of it every ``checkpoint_every`` windows and resumes
            from it when restarted (see :func:`~tl_lape.collect_activation_stats_resumable`).
        checkpoint_every: Windows of this process between checkpoints.

    Returns:
        :class:`~tl_lape.ActivationStats` of the whole corpus, identical in every process.

    Raises:
        LapeError: No initialised process group; processes given different corpora, models or
            settings; anything :func:`~tl_lape.collect_activation_stats` refuses.

    Example:
        >>> dist.init_process_group("gloo")  # doctest: +SKIP
        >>> stats = collect_activation_stats_distributed(  # doctest: +SKIP
        ...     model, corpus, seq_len=512
        ... )
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise LapeError(
            "collect_activation_stats_distributed needs an initialised torch.distributed "
            "process group (call torch.distributed.init_process_group, e.g. under torchrun); "
            "for a single process use tl_lape.collect_activation_stats"
        )
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
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
    _check_same_run(adapter, corpus, settings, group, world_size)
    path = None
    if checkpoint_path is not None:
        path = rank_checkpoint_path(checkpoint_path, rank, world_size)
    share = collect_share(
        adapter,
        corpus,
        settings,
        rank=rank,
        world_size=world_size,
        fwd_hooks=fwd_hooks,
        progress=progress,
        checkpoint_path=path,
        checkpoint_every=check_checkpoint_every(checkpoint_every),
    )
    device = _reduce_device(group)
    totals = []
    for tensor in (share.active_counts, share.activation_sums, share.n_tokens, share.n_windows):
        tensor = tensor.to(device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        totals.append(tensor.cpu())
    return stats_from_counts(adapter, corpus, settings, ShareCounts(*totals))


def _check_same_run(
    adapter: Any, corpus: Mapping[str, Any], settings: Any, group: Any, world: int
) -> None:
    """Refuse to start if the processes were given different models, corpora or settings."""
    import torch.distributed as dist

    mine = collection_fingerprint(adapter, corpus, settings)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, json.dumps(mine, sort_keys=True), group=group)
    for other_rank, other in enumerate(gathered):
        if other != gathered[0]:
            diffs = fingerprint_differences(json.loads(gathered[0]), json.loads(other))
            shown = "; ".join(f"{key}: {a!r} vs {b!r}" for key, a, b in diffs[:4])
            raise LapeError(
                f"process {other_rank} of {world} was given another run than process 0 "
                f"({shown}); give every process the same model, corpus and settings"
            )
