"""Data-parallel collection with ``torch.distributed``: many processes, one set of statistics.

:func:`tl_lape.collect_activation_stats` called in every process of an initialised
``torch.distributed`` process group (the default group, or ``group=``) splits the work.
Windows are enumerated deterministically (see :mod:`tl_lape.collection.windows`), so N processes
can split it without talking to each other: process ``rank`` runs the batches whose index is
``rank`` modulo ``world_size``. At the end the counts, sums and token totals (and the residual
sums, with ``residual_means=True``) are summed with ``all_reduce`` and every process holds the
statistics of the whole corpus.

Launch one process per device with ``torchrun`` (``gloo`` on CPUs, ``nccl`` on GPUs)::

    # collect.py
    import torch, torch.distributed as dist, tl_lape
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    gpu = torch.cuda.is_available()
    device = f"cuda:{dist.get_rank() % torch.cuda.device_count()}" if gpu else "cpu"
    model = TransformerBridge.boot_transformers("Qwen/Qwen2-0.5B", device=device)
    stats = tl_lape.collect_activation_stats(model, corpus, seq_len=512)  # sees the group
    if dist.get_rank() == 0:
        stats.save("stats.safetensors")
    dist.destroy_process_group()

    $ torchrun --nproc-per-node 4 collect.py

Token counts and active counts are integers, so they equal a single-process run exactly. The
float64 activation sums are added in another order (per process, then across processes) and
agree with a single-process run to float64 rounding (relative differences around 1e-15).

Every process reads (and tokenizes) the whole corpus to enumerate the windows but runs the
model only on its share; pass token-id tensors to keep that cheap. Combined with
``checkpoint_path``, each process checkpoints its own share (:func:`rank_checkpoint_path`:
``<name>.rank<r>-of-<n><suffix>``) and a restarted job with the same number of processes
resumes. Before any work the processes compare their runs (model, corpus, settings) and refuse
to start if they differ.
"""

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tl_lape._adapter import ModelAdapter
from tl_lape.collection.checkpoint import collection_fingerprint, fingerprint_differences
from tl_lape.collection.windows import WindowSettings
from tl_lape.errors import LapeError
from tl_lape.formats import parse_json

__all__ = ["rank_checkpoint_path"]


def rank_checkpoint_path(path: str | os.PathLike[str], rank: int, world_size: int) -> Path:
    """The checkpoint file of one process: ``run.ckpt`` -> ``run.rank0-of-4.ckpt``.

    Example:
        >>> rank_checkpoint_path("out/run.ckpt", 1, 4).name
        'run.rank1-of-4.ckpt'
    """
    p = Path(path)
    return p.with_name(f"{p.stem}.rank{rank}-of-{world_size}{p.suffix}")


def process_share(group: Any) -> tuple[int, int] | None:
    """``(rank, world_size)`` in an initialised process group; ``None`` without one.

    Raises:
        LapeError: ``group`` given but ``torch.distributed`` has no initialised process group.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    if group is not None:
        raise LapeError(
            f"group={group!r} needs an initialised torch.distributed process group, and there "
            "is none; call torch.distributed.init_process_group first (e.g. under torchrun), or "
            "leave group=None to collect in this process alone"
        )
    return None


def _reduce_device(group: Any) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_processes(tensors: Sequence[Tensor], group: Any) -> list[Tensor]:
    """Each tensor summed over the processes of ``group`` (``all_reduce``), on the CPU."""
    import torch.distributed as dist

    device = _reduce_device(group)
    totals = []
    for tensor in tensors:
        tensor = tensor.to(device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        totals.append(tensor.cpu())
    return totals


def check_same_run(
    adapter: ModelAdapter,
    corpus: Mapping[str, Any],
    settings: WindowSettings,
    group: Any,
    world: int,
    options: Mapping[str, Any],
) -> None:
    """Refuse to start if the processes were given different models, corpora or settings.

    ``options``: further JSON-able choices every process must share (e.g. ``residual_means``,
    which decides what is summed across processes).
    """
    import torch.distributed as dist

    mine = {**collection_fingerprint(adapter, corpus, settings), "options": dict(options)}
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, json.dumps(mine, sort_keys=True), group=group)
    for other_rank, other in enumerate(gathered):
        if other != gathered[0]:
            where, advice = "a process's collection fingerprint", "report it"
            diffs = fingerprint_differences(
                parse_json(gathered[0], where=where, advice=advice),
                parse_json(other, where=where, advice=advice),
            )
            shown = "; ".join(f"{key}: {a!r} vs {b!r}" for key, a, b in diffs[:4])
            raise LapeError(
                f"process {other_rank} of {world} was given another run than process 0 "
                f"({shown}); give every process the same model, corpus and settings"
            )
