"""Quality of generated text, judged without the intervention that produced it.

So that a switch into gibberish does not count as steering into a language:

- :func:`sequence_nll`: the *unsteered* model's mean NLL per token of each generated sequence,
  conditioned on BOS only (the text is judged on its own, not as a continuation of its prompt);
- :func:`reference_nll`: the same on natural text of each language, cut to the length of an
  output: the yardstick an output's NLL is compared with;
- :func:`repetition_rate`: the share of repeated token ``n``-grams (a loop scores near 1).

:func:`tl_lape.judging.outputs.judge_outputs` combines them with the output language into the
fluency and success criteria of steering.

Example:
    >>> repetition_rate([1, 2, 1, 2, 1, 2])  # a two-token loop
    0.5
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_lape._adapter import adapt
from tl_lape.errors import LapeError
from tl_lape.judging.nll import next_token_nll

__all__ = ["reference_nll", "repetition_rate", "sequence_nll"]


def repetition_rate(tokens: Sequence[int] | Tensor, *, n: int = 3) -> float:
    """Share of a sequence's ``n``-grams that repeat an earlier one (0: none, near 1: a loop).

    ``1 - distinct / total`` over the token ``n``-grams; 0.0 for sequences shorter than
    ``n + 1`` tokens.

    Example:
        >>> repetition_rate([1, 2, 3, 1, 2, 3, 1, 2, 3])
        0.5714285714285714
        >>> repetition_rate([1, 2, 3, 4, 5])
        0.0
    """
    ids = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def sequence_nll(
    model: Any,
    sequences: Sequence[Tensor],
    *,
    batch_size: int = 16,
) -> Float[Tensor, " batch"]:
    """Mean NLL per predicted token of each token sequence under the model, without hooks.

    Each sequence is conditioned on BOS only (BOS is prepended when the model uses one), so
    the generated text is judged on its own, not as a continuation of its prompt. Sequences
    are right-padded; padded positions are ignored. Empty sequences get NaN.

    Args:
        model: A TransformerLens model.
        sequences: 1-D token-id tensors (without BOS).
        batch_size: Sequences per forward pass.

    Returns:
        float64 mean NLL (nats per token) of each sequence.
    """
    adapter = adapt(model, validate=False)
    prepend = bool(getattr(getattr(model, "cfg", None), "default_prepend_bos", True))
    bos = adapter.bos_token_id if prepend else None
    out = torch.full((len(sequences),), math.nan, dtype=torch.float64)
    rows = []
    for i, seq in enumerate(sequences):
        ids = seq.to(torch.long).flatten().cpu()
        if bos is not None:
            ids = torch.cat([torch.tensor([bos]), ids])
        if ids.numel() >= 2:
            rows.append((i, ids))
    device = adapter.device
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(ids.numel() for _, ids in chunk)
            tokens = torch.zeros((len(chunk), width), dtype=torch.long)
            valid = torch.zeros((len(chunk), width - 1), dtype=torch.bool)
            for r, (_, ids) in enumerate(chunk):
                tokens[r, : ids.numel()] = ids
                valid[r, : ids.numel() - 1] = True
            logits = model(tokens.to(device))  # batch pos d_vocab
            nll = next_token_nll(logits, tokens).cpu()  # batch pos-1, float32
            nll = (nll * valid).to(torch.float64).sum(-1) / valid.sum(-1)  # batch
            for r, (i, _) in enumerate(chunk):
                out[i] = nll[r]
    return out


def reference_nll(
    model: Any,
    corpus: Mapping[str, Sequence[str]],
    *,
    n_tokens: int = 32,
    max_texts_per_language: int = 64,
    batch_size: int = 16,
) -> dict[str, float]:
    """The unsteered model's NLL on natural text of each language, at the length of an output.

    The first ``n_tokens`` tokens of up to ``max_texts_per_language`` paragraphs (those with at
    least ``n_tokens`` tokens first), each judged on its own as :func:`sequence_nll` judges a
    generated output; the mean per language. This is the yardstick of the fluency criterion.

    Returns:
        ``{language: mean NLL in nats per token}``.
    """
    adapter = adapt(model, validate=False)
    out: dict[str, float] = {}
    for lang, texts in corpus.items():
        seqs = []
        for text in texts:
            ids = adapter.encode(text)
            if ids.numel() >= n_tokens:
                seqs.append(ids[:n_tokens])
            if len(seqs) >= max_texts_per_language:
                break
        if not seqs:
            raise LapeError(
                f"no text of language {lang!r} has {n_tokens} tokens; pass longer text or a "
                "smaller n_tokens"
            )
        out[lang] = float(sequence_nll(model, seqs, batch_size=batch_size).mean())
    return out
