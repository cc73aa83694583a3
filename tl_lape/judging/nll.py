"""Next-token loss of a model on token windows: the one place that scores a model's loss.

:func:`next_token_nll` turns logits into per-token NLL (nats, float32) without materialising
the whole vocabulary in float32; :func:`window_nll` sums it over windows under a list of
TransformerLens forward hooks. The evaluation (:mod:`tl_lape.experiments.evaluation`) and the
fluency judges (:mod:`tl_lape.judging.metrics`) both score through these two functions.

Scoring a subset of positions: on a large vocabulary most of a forward pass is the unembedding
(Gemma 3 270M: 168M of its 270M multiply-adds per token). With ``positions_per_window=k``,
:func:`window_nll` runs the model only up to the final norm's output (a hook there keeps it and
ends the pass), then unembeds only ``k`` positions of each window, drawn by
:func:`scored_positions` as a pure function of ``(seed, window index)``: a clean row and an
intervened row with the same seed score the same positions, so their difference stays paired.
The per-token mean over the scored positions is an unbiased estimate of the mean over all of
them (every window contributes ``k`` positions drawn uniformly without replacement).
"""

import contextlib
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_lape._adapter import ModelAdapter, adapt
from tl_lape.checks import check_positive_int, check_seed
from tl_lape.errors import LapeError
from tl_lape.interventions.hooks import check_fwd_hooks

__all__ = ["next_token_nll", "scored_positions", "window_nll"]

Hooks = Sequence[tuple[Any, Callable[..., Any]]]


@overload
def window_nll(
    model: Any,
    windows: Int[Tensor, "batch pos"],
    *,
    fwd_hooks: Hooks = (),
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "NLL",
    positions_per_window: int | None = None,
    seed: int = 0,
    per_window: Literal[False] = False,
) -> tuple[float, int]: ...


@overload
def window_nll(
    model: Any,
    windows: Int[Tensor, "batch pos"],
    *,
    fwd_hooks: Hooks = (),
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "NLL",
    positions_per_window: int | None = None,
    seed: int = 0,
    per_window: Literal[True],
) -> tuple[Float[Tensor, " window"], Int[Tensor, " window"]]: ...


def window_nll(
    model: Any,
    windows: Int[Tensor, "batch pos"],
    *,
    fwd_hooks: Hooks = (),
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "NLL",
    positions_per_window: int | None = None,
    seed: int = 0,
    per_window: bool = False,
) -> tuple[float, int] | tuple[Float[Tensor, " window"], Int[Tensor, " window"]]:
    """Summed next-token NLL (nats, float64) of ``windows`` and the number of predicted tokens.

    Runs under :func:`torch.inference_mode` with ``fwd_hooks`` attached for the duration of
    each forward pass only. Each window predicts its tokens 1..end from the tokens before them.

    Args:
        model: A TransformerLens model.
        windows: Token ids ``[n_windows, seq_len]`` from :func:`token_windows`.
        fwd_hooks: TransformerLens forward hooks, e.g. from
            :func:`~tl_lape.interventions.hooks.deactivation_hooks`.
        batch_size: Windows per forward pass.
        progress: Show a progress bar.
        desc: Its label.
        positions_per_window: None (default): score every position, from the model's full
            logits. An int ``k``: score ``k`` positions per window (all ``seq_len - 1`` if
            ``k`` is larger), chosen by :func:`scored_positions` from ``seed`` and the window's
            row in ``windows``; the forward pass stops at the final norm and only those rows
            are unembedded. Hooks on the unembedding itself are refused in this mode.
        seed: Seed of the positions (only with ``positions_per_window``). The same seed gives
            the same positions whatever the hooks, so rows under different hooks are paired.
        per_window: Return per-window tensors (for a bootstrap over windows) instead of totals.

    Returns:
        ``(sum_nll, n_scored_tokens)``; with ``per_window=True``, ``(sums, counts)``: float64
        NLL sums and int64 scored-token counts, one per window.

    Raises:
        LapeError: For an invalid option (before any model work), hooks made for another model,
            or, with ``positions_per_window``, hooks on the unembedding or a model whose logits
            are not its unembedding of the final norm's output.

    Example:
        >>> w = torch.randint(3, 100, (4, 16), generator=torch.Generator().manual_seed(0))
        >>> total, n = window_nll(model, w)
        >>> n
        60
        >>> sums, counts = window_nll(model, w, positions_per_window=5, seed=1, per_window=True)
        >>> counts.tolist()
        [5, 5, 5, 5]
    """
    batch_size = _checked(check_positive_int, batch_size, "batch_size", "batch_size=8")
    if positions_per_window is not None:
        positions_per_window = _checked(
            check_positive_int,
            positions_per_window,
            "positions_per_window",
            "positions_per_window=32, or None to score every position",
        )
    seed = check_seed(seed)
    if not isinstance(per_window, bool):
        raise LapeError(
            f"per_window must be True or False; received {per_window!r}; pass e.g. "
            "per_window=True for per-window sums and counts"
        )
    _check_windows(windows)
    adapter = adapt(model, validate=False)
    adapter.check_token_ids(windows, "windows")
    device = adapter.device
    fwd_hooks = list(fwd_hooks)
    check_fwd_hooks(model, fwd_hooks)  # a LapeError, not TransformerLens' KeyError
    positions = None
    if positions_per_window is not None:
        _check_no_hooks_after_readout(adapter, fwd_hooks)
        _check_readout(adapter)
        positions = scored_positions(
            torch.arange(windows.shape[0]), windows.shape[1], positions_per_window, seed=seed
        )  # window k
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    sums: list[Tensor] = []
    counts: list[Tensor] = []
    starts = range(0, windows.shape[0], batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            batch = windows[start : start + batch_size].to(device)  # batch pos
            if positions is None:
                logits = model.run_with_hooks(batch, fwd_hooks=fwd_hooks)  # batch pos d_vocab
                nll = next_token_nll(logits, batch)  # batch pos-1
            else:
                chosen = positions[start : start + batch_size].to(device)  # batch k
                nll = _scored_nll(adapter, batch, chosen, fwd_hooks)  # batch k
            total += nll.to(torch.float64).sum().cpu()
            count += nll.numel()
            if per_window:
                sums.append(nll.to(torch.float64).sum(dim=1).cpu())  # batch
                counts.append(torch.full((nll.shape[0],), nll.shape[1], dtype=torch.int64))
    if per_window:
        if not sums:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
        return torch.cat(sums), torch.cat(counts)
    return float(total), count


def scored_positions(
    window_indices: Int[Tensor, " window"] | Sequence[int],
    seq_len: int,
    positions_per_window: int,
    *,
    seed: int = 0,
) -> Int[Tensor, "window k"]:
    """The positions :func:`window_nll` scores in each window, sorted: ``[n_windows, k]``.

    Position ``p`` is the logit row that predicts token ``p + 1``, so positions lie in
    ``0 .. seq_len - 2`` and ``k = min(positions_per_window, seq_len - 1)``. Window ``i``'s
    positions are ``k`` draws without replacement from a generator seeded by ``(seed, i)``
    alone: they depend on nothing else (not the hooks, the batch size or the other windows).

    Example:
        >>> scored_positions([0, 1], seq_len=8, positions_per_window=3, seed=0).shape
        torch.Size([2, 3])
        >>> scored_positions([0], 8, 100).tolist()  # more than there are: every position
        [[0, 1, 2, 3, 4, 5, 6]]
    """
    check_positive_int(seq_len, "seq_len")
    k_wanted = _checked(
        check_positive_int,
        positions_per_window,
        "positions_per_window",
        "positions_per_window=32, or None to score every position",
    )
    seed = check_seed(seed)
    indices = [int(i) for i in torch.as_tensor(window_indices).reshape(-1).tolist()]
    if any(i < 0 for i in indices):
        raise LapeError(f"window indices must be >= 0; received {indices!r}")
    n_pred = seq_len - 1
    k = min(k_wanted, n_pred)
    out = torch.empty(len(indices), k, dtype=torch.long)
    base = _splitmix64(seed)
    for row, index in enumerate(indices):
        generator = torch.Generator().manual_seed(_splitmix64(base ^ index) >> 1)
        out[row] = torch.randperm(n_pred, generator=generator)[:k].sort().values
    return out


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser: a well-mixed 64-bit integer of ``x`` (stable across platforms)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _checked(check: Callable[[Any, str], int], value: Any, name: str, example: str) -> int:
    """``check(value, name)``, its LapeError completed with what to pass instead."""
    try:
        return check(value, name)
    except LapeError as err:
        raise LapeError(f"{err}; pass e.g. {example}") from None


def _check_windows(windows: Any) -> None:
    ok = (
        isinstance(windows, Tensor)
        and windows.dim() == 2
        and not windows.is_floating_point()
        and not windows.is_complex()
    )
    if not ok:
        what = (
            f"a {windows.dim()}-D {windows.dtype} tensor of shape {tuple(windows.shape)}"
            if isinstance(windows, Tensor)
            else repr(type(windows).__name__)
        )
        raise LapeError(
            f"windows must be a 2-D tensor of token ids [n_windows, seq_len]; received {what}. "
            "Make them with tl_lape.collection.windows.token_windows, or add a batch dimension "
            "with windows[None]"
        )


class _StopAtReadout(Exception):
    """Raised by the hook that keeps the final norm's output: the rest is not needed."""


def _scored_nll(
    adapter: ModelAdapter,
    batch: Int[Tensor, "batch pos"],
    chosen: Int[Tensor, "batch k"],
    fwd_hooks: list[tuple[Any, Callable[..., Any]]],
) -> Float[Tensor, "batch k"]:
    """NLL at the ``chosen`` positions, unembedding only those rows."""
    kept: list[Tensor] = []

    def keep_and_stop(act: Tensor, hook: Any) -> None:
        kept.append(act)  # batch pos d_model
        raise _StopAtReadout

    # Appended last: it sees the residual after every user hook on the same point.
    hooks = [*fwd_hooks, (adapter.hook_final_residual(), keep_and_stop)]
    with contextlib.suppress(_StopAtReadout):
        adapter.model.run_with_hooks(batch, fwd_hooks=hooks, return_type=None)
    if not kept:
        raise LapeError(
            f"the hook {adapter.hook_final_residual()!r} of model {adapter.model_name!r} did not "
            "fire, so the positions cannot be scored; pass positions_per_window=None"
        )
    resid = kept[0]  # batch pos d_model
    d_model = resid.shape[-1]
    rows = resid.gather(1, chosen[..., None].expand(-1, -1, d_model))  # batch k d_model
    target = batch.gather(1, chosen + 1)  # batch k
    flat = rows.reshape(-1, d_model)  # (batch k) d_model
    flat_target = target.reshape(-1)
    pieces = [
        _row_nll(
            adapter.unembed(flat[i : i + _NLL_CHUNK_ROWS]), flat_target[i : i + _NLL_CHUNK_ROWS]
        )
        for i in range(0, flat.shape[0], _NLL_CHUNK_ROWS)
    ]
    if not pieces:
        return torch.zeros(chosen.shape, dtype=torch.float32, device=resid.device)
    return torch.cat(pieces).reshape(chosen.shape)  # batch k


def readout_only_nll(
    adapter: ModelAdapter,
    batch: Int[Tensor, "batch pos"],
    chosen: Int[Tensor, "batch k"],
    fwd_hooks: Sequence[tuple[Any, Callable[..., Any]]],
) -> Float[Tensor, "batch k"] | None:
    """NLL (float32) of the tokens after positions ``chosen``, unembedding only those rows.

    For callers that score a known part of each row (a continuation after its prompt): the
    pass stops at the final norm's output and the unembedding runs on ``chosen`` alone. None
    when the model's logits are not the unembedding of that output (checked once per model) or
    a hook acts after it; then the caller scores from the full logits. Run it under
    :func:`torch.inference_mode`.
    """
    hooks = list(fwd_hooks)
    try:
        _check_no_hooks_after_readout(adapter, hooks)
        _check_readout(adapter)
    except LapeError:
        return None
    return _scored_nll(adapter, batch, chosen, hooks)


def _check_no_hooks_after_readout(
    adapter: ModelAdapter, fwd_hooks: list[tuple[Any, Callable[..., Any]]]
) -> None:
    """Hooks on the unembedding would silently not run when it is skipped: refuse them."""
    after = adapter.hooks_after_final_residual()
    for name, _ in fwd_hooks:
        hit = [n for n in after if (name(n) if callable(name) else name == n)]
        if hit:
            raise LapeError(
                f"the hook {name!r} acts on {hit[0]!r}, after the final norm; with "
                "positions_per_window the unembedding is computed outside the model, so it would "
                "never run: pass positions_per_window=None to score with it"
            )


#: Models whose readout (final norm's output -> unembed) has been checked against their logits.
_READOUT_CHECKED: "weakref.WeakKeyDictionary[Any, torch.dtype]" = weakref.WeakKeyDictionary()


def _check_readout(adapter: ModelAdapter) -> None:
    """Check once per model (and dtype) that unembedding the final residual gives its logits."""
    model = adapter.model
    w_u = model.W_U
    if _READOUT_CHECKED.get(model) == w_u.dtype:
        return
    kept: list[Tensor] = []

    def keep(act: Tensor, hook: Any) -> None:
        kept.append(act.clone())

    d_vocab = int(w_u.shape[-1])
    tokens = (torch.arange(3, 11, dtype=torch.long) % d_vocab)[None].to(adapter.device)
    with torch.inference_mode():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(adapter.hook_final_residual(), keep)])
        mine = adapter.unembed(kept[0]) if kept else None
    if not isinstance(logits, Tensor) or mine is None or mine.shape != logits.shape:
        gap = float("inf")
    else:
        gap = float((mine.float() - logits.float()).abs().max())
    scale = float(logits.float().abs().max()) if isinstance(logits, Tensor) else 1.0
    eps = torch.finfo(w_u.dtype).eps if w_u.is_floating_point() else 1e-6
    if not gap <= max(1e-4, 64 * eps) * max(1.0, scale):
        raise LapeError(
            f"model {adapter.model_name!r}: its logits are not W_U and b_U (and the soft cap) "
            f"applied to {adapter.hook_final_residual()!r} (largest gap {gap:.3g} on logits up to "
            f"{scale:.3g}), so positions_per_window cannot score it without the full "
            "unembedding; pass positions_per_window=None"
        )
    _READOUT_CHECKED[model] = w_u.dtype


#: Logit rows turned into float32 at a time by :func:`next_token_nll`.
_NLL_CHUNK_ROWS = 256


def _row_nll(logits: Tensor, target: Tensor) -> Tensor:
    """Per-row cross-entropy (float32) of ``logits [rows, d_vocab]`` against ``target [rows]``."""
    return torch.nn.functional.cross_entropy(
        logits.to(torch.float32), target.to(logits.device), reduction="none"
    )


def next_token_nll(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_minus_1"]:
    """Per-token NLL (float32) of ``tokens[:, 1:]`` under ``logits[:, :-1]``.

    The log-softmax is taken in float32 over a few hundred positions at a time, so a large
    vocabulary (Gemma 3: 262,144 tokens) in bfloat16 logits never becomes one float32 tensor
    of the whole batch.

    Example:
        >>> logits = torch.zeros(1, 3, 4)
        >>> next_token_nll(logits, torch.tensor([[0, 1, 2]]))
        tensor([[1.3863, 1.3863]])
    """
    batch, pos, d_vocab = logits.shape
    flat = logits[:, :-1].reshape(-1, d_vocab)  # (batch pos-1) d_vocab
    target = tokens[:, 1:].reshape(-1).to(flat.device)  # (batch pos-1)
    pieces = [
        torch.nn.functional.cross_entropy(
            flat[i : i + _NLL_CHUNK_ROWS].to(torch.float32),
            target[i : i + _NLL_CHUNK_ROWS],
            reduction="none",
        )
        for i in range(0, flat.shape[0], _NLL_CHUNK_ROWS)
    ]
    return torch.cat(pieces).reshape(batch, pos - 1)  # batch pos-1
