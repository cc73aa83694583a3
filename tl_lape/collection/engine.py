"""Streaming per-language activation statistics: the first step of LAPE, one entry point.

:func:`collect_activation_stats` runs a corpus per language through a TransformerLens model and
counts, for every MLP neuron, on how many tokens it fires (``hook_pre > 0``, the paper's
``act_fn(gate) > 0``) and the sum of its activation value ``act_fn(hook_pre)``, streaming, on the
model's device, stopping each forward pass after the last layer's ``hook_pre``. The same call
covers the large-scale cases, each an option:

- ``checkpoint_path=``: checkpoint every ``checkpoint_every`` windows and resume after a crash
  (:mod:`tl_lape.collection.checkpoint`);
- an initialised ``torch.distributed`` process group (``group=`` optional): every process runs
  its share of the windows and all get the statistics of the whole corpus
  (:mod:`tl_lape.collection.distributed`);
- ``residual_means=True``: the per-language mean residual streams in the same pass, for DiffMean
  (:mod:`tl_lape.collection.residual_means`).

The folder, in the order the data flows: :mod:`~tl_lape.collection.windows` (text to windows),
:mod:`~tl_lape.collection.counting` (the counting loop), the three modules above (observers and
reductions around that loop), and this module, which checks the options and composes them.

How text becomes windows (the paper's recipe, made explicit; the code is in
:mod:`tl_lape.collection.windows`, policy :data:`tl_lape.collection.windows.COLLECTION`):

1. Each language's documents are tokenized one by one without special tokens and concatenated
   into one token stream, with the tokenizer's EOS token between consecutive documents (no
   separator if the tokenizer has no EOS). A 1-D tensor of token ids is used as the stream as is.
2. The stream is cut to ``max_tokens_per_language`` tokens, if given.
3. The stream is cut into consecutive windows of ``seq_len`` tokens, without padding. A final,
   shorter remainder is dropped (as in the paper's code) unless ``drop_last=False``, in which
   case it is run as a window of its own.
4. With ``prepend_bos=True`` every window starts with the BOS token followed by ``seq_len - 1``
   corpus tokens; the BOS position is run but not counted. The paper fed raw windows (the
   default, ``prepend_bos=False``).

Windows are enumerated deterministically: language by language in the corpus' order, then in
stream order, grouped into batches of ``batch_size`` windows that never mix languages (the last
batch of a language may be smaller; a short remainder window is a batch of its own).
"""

import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal, overload

from jaxtyping import Int
from torch import Tensor

from tl_lape._adapter import adapt
from tl_lape.checks import check_positive_int
from tl_lape.collection.checkpoint import collect_share
from tl_lape.collection.counting import (
    HookList,
    ShareCounts,
    check_corpus,
    count_share,
    make_settings,
    stats_from_counts,
)
from tl_lape.collection.distributed import (
    check_same_run,
    process_share,
    rank_checkpoint_path,
    sum_over_processes,
)
from tl_lape.collection.residual_means import ResidualMeans, ResidualSums
from tl_lape.errors import LapeError
from tl_lape.formats import check_output_file
from tl_lape.stats import ActivationStats

__all__ = ["collect_activation_stats"]

Corpus = Mapping[str, Iterable[str] | Int[Tensor, " n_tokens"]]


@overload
def collect_activation_stats(
    model: Any,
    corpus: Corpus,
    *,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens_per_language: int | None = None,
    prepend_bos: bool = False,
    drop_last: bool = True,
    fwd_hooks: HookList = (),
    progress: bool = True,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
    residual_means: Literal[False] = False,
    group: Any = None,
) -> ActivationStats: ...


@overload
def collect_activation_stats(
    model: Any,
    corpus: Corpus,
    *,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens_per_language: int | None = None,
    prepend_bos: bool = False,
    drop_last: bool = True,
    fwd_hooks: HookList = (),
    progress: bool = True,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
    residual_means: Literal[True],
    group: Any = None,
) -> tuple[ActivationStats, ResidualMeans]: ...


@overload
def collect_activation_stats(
    model: Any,
    corpus: Corpus,
    *,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens_per_language: int | None = None,
    prepend_bos: bool = False,
    drop_last: bool = True,
    fwd_hooks: HookList = (),
    progress: bool = True,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
    residual_means: bool = False,
    group: Any = None,
) -> ActivationStats | tuple[ActivationStats, ResidualMeans]: ...


def collect_activation_stats(
    model: Any,
    corpus: Corpus,
    *,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens_per_language: int | None = None,
    prepend_bos: bool = False,
    drop_last: bool = True,
    fwd_hooks: HookList = (),
    progress: bool = True,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
    residual_means: bool = False,
    group: Any = None,
) -> ActivationStats | tuple[ActivationStats, ResidualMeans]:
    """Count how often, and how strongly, every MLP neuron fires on each language's text.

    Every option is checked before the model runs. Called in every process of an initialised
    ``torch.distributed`` process group, each process counts its share of the windows and all
    return the statistics of the whole corpus (see :mod:`tl_lape.collection.distributed`).

    Args:
        model: A TransformerLens ``TransformerBridge`` or ``HookedTransformer``.
        corpus: Maps a language code to its text: an iterable of documents (strings, tokenized
            with the model's tokenizer, streamed one at a time) or a 1-D tensor of token ids. A
            text corpus resumed from a checkpoint must yield the same documents in the same
            order; with a process group every process is given the same corpus.
        seq_len: Window length in tokens (default: 512, or the context length if shorter).
        batch_size: Windows per forward pass.
        max_tokens_per_language: Counted tokens per language at most (default: all).
        prepend_bos: Start each window with the BOS token (not counted); the paper did not.
        drop_last: Drop each language's final window if shorter than ``seq_len`` (the paper
            did); with ``False`` it is run on its own.
        fwd_hooks: Extra ``(hook_name, fn)`` pairs active during collection, e.g.
            :func:`tl_lape.deactivation_hooks` to collect statistics under an intervention.
        progress: Show a tqdm progress bar (in tokens).
        checkpoint_path: If given, write the statistics so far to this file every
            ``checkpoint_every`` windows (atomically), and resume from it if it exists: the
            result is identical to an uninterrupted run. A finished checkpoint is kept; calling
            again returns its statistics without running the model (delete it to collect
            afresh). With a process group each process checkpoints its own share to
            :func:`~tl_lape.collection.distributed.rank_checkpoint_path` of it.
        checkpoint_every: Windows (of this process) between checkpoints.
        residual_means: Also sum the residual stream entering every block
            (``blocks.{l}.hook_resid_pre``) over the same counted tokens, and return
            ``(stats, means)`` (for :func:`tl_lape.diffmean_hooks`). Not with
            ``checkpoint_path``.
        group: The ``torch.distributed`` process group to split the work over (default: the
            default group, when one is initialised).

    Returns:
        :class:`~tl_lape.ActivationStats` with ``active_counts[l, n, k]`` = number of language
        k's tokens with ``hook_pre > 0`` at neuron n of layer l, ``activation_sums`` = the sum of
        ``act_fn(hook_pre)`` (float64) and ``n_tokens[k]``; on the CPU. With
        ``residual_means=True``, ``(stats, means)`` with means a
        :class:`~tl_lape.ResidualMeans`.

    Raises:
        LapeError: Bad corpus (empty language, a lone string, token ids outside the
            vocabulary, too few tokens for one window), bad options, a model tl_lape cannot
            read, a checkpoint of another run (naming what differs) or a damaged one, processes
            given different runs, or ``group`` without an initialised process group.

    Example:
        >>> corpus = {"en": ["The cat sat on the mat."], "fr": ["Le chat est assis."]}
        >>> stats = collect_activation_stats(model, corpus, seq_len=4)  # doctest: +SKIP
        >>> stats.active_counts.shape  # [n_layers, d_mlp, lang]  # doctest: +SKIP
        torch.Size([2, 64, 2])
        >>> stats, means = collect_activation_stats(  # doctest: +SKIP
        ...     model, corpus, seq_len=4, residual_means=True, checkpoint_path=None
        ... )
    """
    hooks = _check_options(
        seq_len=seq_len,
        batch_size=batch_size,
        max_tokens_per_language=max_tokens_per_language,
        prepend_bos=prepend_bos,
        drop_last=drop_last,
        fwd_hooks=fwd_hooks,
        progress=progress,
        checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every,
        residual_means=residual_means,
    )
    check_corpus(corpus)
    share = process_share(group)  # None: this process alone
    rank, world_size = share if share is not None else (0, 1)
    adapter = adapt(model)
    settings = make_settings(
        adapter,
        seq_len=seq_len,
        batch_size=batch_size,
        max_tokens_per_language=max_tokens_per_language,
        prepend_bos=prepend_bos,
        drop_last=drop_last,
    )
    if share is not None:
        options = {"residual_means": residual_means}
        check_same_run(adapter, corpus, settings, group, world_size, options)
    if residual_means:
        resid = ResidualSums(model, adapter.n_layers, len(corpus), int(settings.prepend_bos))
        counts = count_share(
            adapter,
            corpus,
            settings,
            rank=rank,
            world_size=world_size,
            fwd_hooks=[*hooks, *resid.hooks()],
            progress=progress,
            observer=resid,
        )
        resid_sums = resid.result()
    else:
        path = checkpoint_path
        if path is not None and share is not None:
            path = rank_checkpoint_path(path, rank, world_size)
        counts = collect_share(
            adapter,
            corpus,
            settings,
            rank=rank,
            world_size=world_size,
            fwd_hooks=hooks,
            progress=progress,
            checkpoint_path=path,
            checkpoint_every=checkpoint_every,
        )
    if share is not None:
        tensors = [counts.active_counts, counts.activation_sums, counts.n_tokens, counts.n_windows]
        if residual_means:
            tensors.append(resid_sums)
        totals = sum_over_processes(tensors, group)
        counts = ShareCounts(*totals[:4])
        if residual_means:
            resid_sums = totals[4]
    stats = stats_from_counts(adapter, corpus, settings, counts)
    if not residual_means:
        return stats
    return stats, resid.means(adapter, corpus, settings, resid_sums, counts.n_tokens)


def _check_options(
    *,
    seq_len: Any,
    batch_size: Any,
    max_tokens_per_language: Any,
    prepend_bos: Any,
    drop_last: Any,
    fwd_hooks: Any,
    progress: Any,
    checkpoint_path: Any,
    checkpoint_every: Any,
    residual_means: Any,
) -> HookList:
    """Every option of :func:`collect_activation_stats`, checked before any model work.

    Returns ``fwd_hooks`` as a list (an iterator is read once, here).
    """
    if seq_len is not None:
        check_positive_int(seq_len, "seq_len")
    check_positive_int(batch_size, "batch_size")
    if max_tokens_per_language is not None:
        check_positive_int(max_tokens_per_language, "max_tokens_per_language")
    check_positive_int(checkpoint_every, "checkpoint_every")
    flags = {
        "prepend_bos": prepend_bos,
        "drop_last": drop_last,
        "progress": progress,
        "residual_means": residual_means,
    }
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise LapeError(f"{name} must be True or False; received {value!r}")
    if isinstance(fwd_hooks, str | bytes) or not isinstance(fwd_hooks, Iterable):
        raise LapeError(
            f"fwd_hooks must be a list of (hook_name, fn) pairs; received {fwd_hooks!r}"
        )
    hooks = list(fwd_hooks)
    for item in hooks:
        if not (isinstance(item, tuple | list) and len(item) == 2 and callable(item[1])):
            raise LapeError(
                f"fwd_hooks must be a list of (hook_name, fn) pairs; received the item {item!r}"
            )
    if checkpoint_path is not None:
        if not isinstance(checkpoint_path, str | os.PathLike):
            raise LapeError(
                f"checkpoint_path must be a file path (str or pathlib.Path) or None; received "
                f"{checkpoint_path!r}"
            )
        if residual_means:
            raise LapeError(
                "residual_means=True does not work with checkpoint_path (a checkpoint keeps the "
                f"firing counts only; received checkpoint_path={str(checkpoint_path)!r}); drop "
                "one of them"
            )
        # overwrite=True: an existing file is read first (a resume), and one that is not a
        # checkpoint is refused there, so a file tl_lape did not write is never replaced.
        check_output_file(checkpoint_path, "collection checkpoint", overwrite=True)
    return hooks
