"""A judge-free content measure: how likely the model makes the true translation.

chrF between a generated continuation and a translation sees shared names and paths, not
meaning. This measure generates nothing: it feeds the model the prompt (the first words of an
English paragraph) followed by the *reference* continuation (the target-language translation of
the same paragraph) and reads the model's mean NLL per reference token (teacher forcing), under
the intervention's hooks or none:

- :func:`continuation_nll`: that NLL for each (prompt, continuation) pair;
- :func:`content_nll`: the NLL of each reference after its own prompt and after a *mismatched*
  prompt (another item's, half the list away: a fixed derangement), and their gap. Comparing
  one reference under two prompts cancels how hard the reference is in itself (comparing two
  references under one prompt does not: on the demo model that noise hid the signal). A model
  that carries the prompt's content into the target language finds the reference likelier
  after its own prompt (gap > 0); a steering intervention that moves the language and keeps
  the content lowers the own NLL against the unsteered model and keeps the gap.

The measure is only worth reading if it separates the true translation from a mismatched one
on the unsteered model. On the demo model (never trained to translate) it barely does: pooled
over six languages and 28 held-out paragraphs the gap is +0.046 nats per token (58% of pairs)
with a 95% interval over paragraphs of [-0.019, +0.107] (``tests/test_content_nll.py``). The
steering study reports the same check on its own model before the measure is read.

Example:
    >>> scores = content_nll(model, prompts, [item["fr"] for item in items])  # doctest: +SKIP
    >>> scores.separation_rate  # doctest: +SKIP
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_lape._adapter import adapt
from tl_lape.errors import LapeError
from tl_lape.judging.nll import next_token_nll, readout_only_nll

__all__ = ["ContentNLL", "content_nll", "continuation_nll"]

Hooks = Sequence[tuple[Any, Callable[..., Any]]]
#: Hooks, or a function of the position where the continuation starts that returns them (hooks
#: that act on the continuation only, as ``positions="new"`` hooks do in generation).
HooksOrFactory = Hooks | Callable[[int], Hooks]


def continuation_nll(
    model: Any,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    fwd_hooks: HooksOrFactory = (),
    max_tokens: int = 32,
    batch_size: int = 8,
) -> Float[Tensor, " batch"]:
    """Mean NLL per token of each continuation after its prompt, teacher-forced.

    The model reads BOS (when it uses one), the prompt's tokens and the first ``max_tokens``
    tokens of ``" " + continuation``; only the continuation's tokens are scored. Hooks stay
    attached for the forward passes only.

    Args:
        model: A TransformerLens model.
        prompts: The prompts.
        continuations: One continuation per prompt.
        fwd_hooks: TransformerLens forward hooks (e.g. a steering configuration's), or a
            function ``start -> hooks`` for hooks that should act on the continuation only:
            it receives the position of the continuation's first token (BOS and the prompt come
            before it) and returns hooks for those positions, e.g. ``lambda start:
            steering_hooks(..., positions=slice(start, None))``. That is what
            ``positions="new"`` does in generation: the first continuation token is predicted
            from the unsteered prompt, every later one from steered positions. Rows are then
            batched by prompt length, so each forward pass has one start.
        max_tokens: Continuation tokens scored at most.
        batch_size: Sequences per forward pass.

    Returns:
        float64 mean NLL (nats per token) per pair; NaN for an empty continuation.
    """
    if len(prompts) != len(continuations):
        raise LapeError(
            f"continuation_nll needs one continuation per prompt; received {len(prompts)} "
            f"prompts and {len(continuations)} continuations"
        )
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise LapeError(f"max_tokens must be an int >= 1; received {max_tokens!r}")
    adapter = adapt(model, validate=False)
    prepend = bool(getattr(getattr(model, "cfg", None), "default_prepend_bos", True))
    bos = [adapter.bos_token_id] if prepend and adapter.bos_token_id is not None else []
    rows = []
    for prompt, cont in zip(prompts, continuations, strict=True):
        head = bos + adapter.encode(prompt).tolist()
        tail = adapter.encode(" " + cont).tolist()[:max_tokens]
        rows.append((head, tail))
    out = torch.full((len(rows),), float("nan"), dtype=torch.float64)
    if callable(fwd_hooks):
        factory = fwd_hooks
        groups: dict[int, list[int]] = {}
        for i, (head, _) in enumerate(rows):
            groups.setdefault(len(head), []).append(i)
        batches = [
            (idx[k : k + batch_size], factory(start))
            for start, idx in sorted(groups.items())
            for k in range(0, len(idx), batch_size)
        ]
    else:
        hooks = list(fwd_hooks)
        batches = [
            (list(range(k, min(k + batch_size, len(rows)))), hooks)
            for k in range(0, len(rows), batch_size)
        ]
    with torch.inference_mode():
        for index, batch_hooks in batches:
            chunk = [rows[i] for i in index]
            width = max(len(h) + len(t) for h, t in chunk)
            tokens = torch.zeros((len(chunk), width), dtype=torch.long)
            # Position p predicts token p + 1: the continuation's positions are scored. Only
            # their rows are unembedded (most of a pass on a large vocabulary), a shorter
            # continuation's last one repeated as padding (weight 0).
            k = max(len(t) for _, t in chunk)
            chosen = torch.zeros((len(chunk), k), dtype=torch.long)
            counts = torch.tensor([len(t) for _, t in chunk], dtype=torch.long)
            for r, (head, tail) in enumerate(chunk):
                tokens[r, : len(head) + len(tail)] = torch.tensor(head + tail)
                chosen[r, : len(tail)] = torch.arange(len(head) - 1, len(head) + len(tail) - 1)
                chosen[r, len(tail) :] = len(head) + len(tail) - 2 if tail else 0
            part = readout_only_nll(
                adapter, tokens.to(adapter.device), chosen.to(adapter.device), batch_hooks
            )
            if part is None:  # logits that are not the final residual's unembedding
                logits = model.run_with_hooks(
                    tokens.to(adapter.device), fwd_hooks=list(batch_hooks)
                )  # batch pos d_vocab
                full = next_token_nll(logits, tokens.to(adapter.device)).cpu()  # batch pos-1
                part = full.gather(1, chosen)  # batch k
            weight = torch.arange(k)[None] < counts[:, None]  # batch k
            nll = (part.cpu() * weight).to(torch.float64).sum(-1) / counts  # batch
            out[torch.tensor(index)] = nll
    return out


@dataclass(frozen=True)
class ContentNLL:
    """The NLL of each reference continuation after its own prompt and after a mismatched one.

    Attributes:
        own: Mean NLL per token of reference ``i`` after prompt ``i``.
        mismatched: Mean NLL per token of reference ``i`` after prompt ``(i + n // 2) % n``.
    """

    own: Float[Tensor, " item"]
    mismatched: Float[Tensor, " item"]

    @property
    def gap(self) -> Float[Tensor, " item"]:
        """``mismatched - own`` per item: positive when the own prompt makes the reference
        likelier."""
        return self.mismatched - self.own

    @property
    def separation_rate(self) -> float:
        """Share of items whose reference is likelier after the own prompt."""
        return float((self.gap > 0).to(torch.float64).mean())

    def to_dict(self) -> dict[str, Any]:
        """Plain values: per item ``own``, ``mismatched``, and the means."""
        return {
            "own": [round(float(x), 4) for x in self.own],
            "mismatched": [round(float(x), 4) for x in self.mismatched],
            "mean_own": float(self.own.mean()),
            "mean_gap": float(self.gap.mean()),
            "separation_rate": self.separation_rate,
        }


def content_nll(
    model: Any,
    prompts: Sequence[str],
    references: Sequence[str],
    *,
    fwd_hooks: HooksOrFactory = (),
    max_tokens: int = 32,
    batch_size: int = 8,
) -> ContentNLL:
    """:func:`continuation_nll` of each reference after its own prompt and after the prompt
    half the list away.

    Args:
        model: A TransformerLens model.
        prompts: The content prompts (e.g.
            :func:`~tl_lape.experiments.steering_study.content_prompts`).
        references: The target-language translation of each prompt's paragraph, in order.
        fwd_hooks: The intervention's hooks (none: the unsteered model), or a function of
            the continuation's first position, as in :func:`continuation_nll`.
        max_tokens: Reference tokens scored at most.
        batch_size: Sequences per forward pass.
    """
    if len(references) < 2:
        raise LapeError(
            f"content_nll needs at least two items to mismatch; received {len(references)}"
        )
    if len(prompts) != len(references):
        raise LapeError(
            f"content_nll needs one reference per prompt; received {len(prompts)} prompts and "
            f"{len(references)} references"
        )
    shift = len(prompts) // 2
    mismatched = [*prompts[shift:], *prompts[:shift]]
    both = continuation_nll(
        model,
        [*prompts, *mismatched],
        [*references, *references],
        fwd_hooks=fwd_hooks,
        max_tokens=max_tokens,
        batch_size=batch_size,
    )
    n = len(references)
    return ContentNLL(own=both[:n], mismatched=both[n:])
