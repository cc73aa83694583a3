"""Next-token loss of a model on token windows: the one place that scores a model's loss.

:func:`next_token_nll` turns logits into per-token NLL (nats, float32) without materialising
the whole vocabulary in float32; :func:`window_nll` sums it over windows under a list of
TransformerLens forward hooks. The evaluation (:mod:`tl_lape.experiments.evaluation`) and the
fluency judges (:mod:`tl_lape.judging.metrics`) both score through these two functions.
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_lape._adapter import adapt
from tl_lape.errors import LapeError
from tl_lape.interventions.hooks import check_fwd_hooks

__all__ = ["next_token_nll", "window_nll"]


def window_nll(
    model: Any,
    windows: Int[Tensor, "batch pos"],
    *,
    fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "NLL",
) -> tuple[float, int]:
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

    Returns:
        ``(sum_nll, n_predicted_tokens)``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LapeError(
            f"batch_size must be a positive integer, got {batch_size!r}; pass e.g. batch_size=8."
        )
    device = adapt(model, validate=False).device
    fwd_hooks = list(fwd_hooks)
    check_fwd_hooks(model, fwd_hooks)  # a LapeError, not TransformerLens' KeyError
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    starts = range(0, windows.shape[0], batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            batch = windows[start : start + batch_size].to(device)  # batch pos
            logits = model.run_with_hooks(batch, fwd_hooks=fwd_hooks)  # batch pos d_vocab
            nll = next_token_nll(logits, batch)  # batch pos-1
            total += nll.to(torch.float64).sum().cpu()
            count += nll.numel()
    return float(total), count


#: Logit rows turned into float32 at a time by :func:`next_token_nll`.
_NLL_CHUNK_ROWS = 256


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
