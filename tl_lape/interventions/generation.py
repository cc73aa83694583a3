"""Generation with forward hooks attached: one prompt list under one set of hooks, or many sets.

- :func:`generate_with_hooks`: batched generation (greedy by default) with forward hooks
  attached for the call only, using the model's KV cache; a hooked forward pass over the whole
  sequence and the cached incremental one give the same tokens (tested).
- :func:`generate_with_hook_sets`: the same prompts under several sets of hooks in one batch,
  each set acting only on its own block of rows (a sweep needs few generation loops).
- :func:`generate_texts_and_tokens`: :func:`generate_with_hooks` returning both the texts and
  the generated token ids, typed as such.

The steering run and sweep that use these are in :mod:`tl_lape.experiments.steering`.

Example:
    >>> from tl_lape.interventions.hooks import steering_hooks
    >>> hooks = steering_hooks(neurons, stats, "fr", mode="add", strength=4.0, model=model)
    >>> texts = generate_with_hooks(model, ["The server"], fwd_hooks=hooks, max_new_tokens=4)
"""

import inspect
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from tl_lape._adapter import adapt
from tl_lape.checks import check_positive_int, check_seed
from tl_lape.errors import LapeError
from tl_lape.interventions.hooks import check_fwd_hooks, reset_positions, resettable

__all__ = [
    "generate_texts_and_tokens",
    "generate_with_hook_sets",
    "generate_with_hooks",
]


def generate_with_hooks(
    model: Any,
    prompts: Sequence[str],
    *,
    fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
    max_new_tokens: int = 32,
    batch_size: int = 16,
    use_kv_cache: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    prepend_bos: bool | None = None,
    return_tokens: bool = False,
) -> list[str] | tuple[list[str], list[Tensor]]:
    """Generate a continuation of every prompt with forward hooks attached (greedy by default).

    Prompts are left-padded into batches with an attention mask, so a batch gives the same
    continuation as each prompt alone; the hooks are attached for this call only (``with
    model.hooks(...)``) and act on every forward pass, including each cached step. Generation
    stops at EOS or after ``max_new_tokens``. ``positions="new"``/``"prompt"`` hooks start
    afresh for every batch (:func:`~tl_lape.interventions.hooks.reset_positions`), so they can
    be reused.

    Args:
        model: A TransformerLens model with a tokenizer and ``generate``.
        prompts: The prompts.
        fwd_hooks: TransformerLens forward hooks, e.g. from
            :func:`~tl_lape.interventions.hooks.steering_hooks`.
        max_new_tokens: Tokens generated per prompt at most.
        batch_size: Prompts (sequences) per forward pass.
        use_kv_cache: Reuse keys and values of earlier positions (much faster; same tokens).
        do_sample: Sample instead of taking the most likely token.
        temperature: Sampling temperature (only with ``do_sample``).
        seed: Seed of the sampling (the global RNG state is restored afterwards).
        prepend_bos: Start each prompt with BOS (default: the model's setting).
        return_tokens: Also return the generated token ids of each prompt.

    Returns:
        The continuations (prompt excluded, special tokens removed), and with
        ``return_tokens`` the generated token ids (EOS and padding excluded).

    Example:
        >>> from tl_lape.interventions.hooks import steering_hooks
        >>> hooks = steering_hooks(neurons, stats, "fr", mode="add", strength=4.0, model=model)
        >>> texts, ids = generate_with_hooks(model, ["The server", "Le serveur"],
        ...                                  fwd_hooks=hooks, max_new_tokens=4, return_tokens=True)
        >>> len(texts), all(len(t) <= 4 for t in ids)
        (2, True)
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise LapeError(f"prompts must be a list of strings; received {type(prompts).__name__}")
    if not all(isinstance(p, str) for p in prompts):
        raise LapeError("prompts must all be strings")
    check_positive_int(max_new_tokens, "max_new_tokens")
    check_positive_int(batch_size, "batch_size")
    check_seed(seed)
    adapter = adapt(model, validate=False)
    fwd_hooks = list(fwd_hooks)
    check_fwd_hooks(model, fwd_hooks)  # a LapeError, not TransformerLens' KeyError
    tokenizer = adapter.tokenizer
    if prepend_bos is None:
        prepend_bos = bool(getattr(getattr(model, "cfg", None), "default_prepend_bos", True))
    eos = adapter.eos_token_id
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else (eos if eos is not None else 0)
    encoded = [adapter.encode(p, prepend_bos=prepend_bos) for p in prompts]
    empty = [i for i, ids in enumerate(encoded) if ids.numel() == 0]
    if empty:
        raise LapeError(
            f"prompts {empty} are empty after tokenization and prepend_bos={prepend_bos}; "
            "give them some text or pass prepend_bos=True"
        )
    accepts_mask = "attention_mask" in inspect.signature(model.generate).parameters
    if accepts_mask:
        groups = [
            list(range(i, min(i + batch_size, len(prompts))))
            for i in range(0, len(prompts), batch_size)
        ]
    else:  # no attention mask: batch only prompts of equal length (no padding needed)
        by_length: dict[int, list[int]] = {}
        for i, ids in enumerate(encoded):
            by_length.setdefault(ids.numel(), []).append(i)
        groups = [
            idx[j : j + batch_size]
            for idx in by_length.values()
            for j in range(0, len(idx), batch_size)
        ]
    texts: list[str] = [""] * len(prompts)
    new_tokens: list[Tensor] = [torch.zeros(0, dtype=torch.long)] * len(prompts)
    device = adapter.device
    with (
        torch.random.fork_rng(devices=[]),
        torch.inference_mode(),
        model.hooks(fwd_hooks=fwd_hooks),
    ):
        torch.manual_seed(seed)
        for group in groups:
            reset_positions(fwd_hooks)  # each group is a new generation, never a continuation
            width = max(encoded[i].numel() for i in group)
            tokens = torch.full((len(group), width), pad, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, i in enumerate(group):
                n = encoded[i].numel()
                tokens[row, width - n :] = encoded[i]
                mask[row, width - n :] = 1
            kwargs: dict[str, Any] = {
                "max_new_tokens": max_new_tokens,
                "do_sample": do_sample,
                "use_past_kv_cache": use_kv_cache,
                "stop_at_eos": eos is not None,
                "return_type": "tokens",
                "verbose": False,
            }
            if do_sample:
                kwargs["temperature"] = temperature
            if accepts_mask and not bool(mask.all()):
                kwargs["attention_mask"] = mask.to(device)
            out = model.generate(tokens.to(device), **kwargs)  # batch width+new
            generated = out[:, width:].cpu()
            for row, i in enumerate(group):
                ids = generated[row]
                if eos is not None:
                    stops = torch.nonzero(ids == eos).flatten()
                    if stops.numel():
                        ids = ids[: int(stops[0])]
                new_tokens[i] = ids.clone()
                texts[i] = tokenizer.decode(ids.tolist(), skip_special_tokens=True)
    reset_positions(fwd_hooks)
    if return_tokens:
        return texts, new_tokens
    return texts


def generate_with_hook_sets(
    model: Any,
    prompts: Sequence[str],
    hook_sets: Sequence[Sequence[tuple[str, Callable[..., Any]]]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 256,
    **kwargs: Any,
) -> list[tuple[list[str], list[Tensor]]]:
    """Generate from the same prompts under several sets of hooks at once, one set per row block.

    Equivalent to calling :func:`generate_with_hooks` once per hook set, but the prompts are
    repeated once per set in one batch and each set's hooks act only on its own rows, so a
    sweep over many interventions needs few generation loops (on a CPU most of a generation
    step's time is per-step overhead, not arithmetic).

    Args:
        model: A TransformerLens model.
        prompts: The prompts, shared by all sets.
        hook_sets: One list of forward hooks per intervention (an empty list: no intervention).
        max_new_tokens: Tokens generated per prompt at most.
        batch_size: Sequences (prompt rows, several whole sets) per forward pass.
        **kwargs: Passed to :func:`generate_with_hooks` (``use_kv_cache``, ``prepend_bos``).

    Returns:
        Per hook set, ``(texts, token_ids)`` as :func:`generate_with_hooks` returns them.

    Example:
        >>> from tl_lape.interventions.hooks import steering_hooks
        >>> sets = [steering_hooks(neurons, stats, t, model=model) for t in ("fr", "zh")]
        >>> (fr, _), (zh, _) = generate_with_hook_sets(model, ["Hi"], sets, max_new_tokens=4)
        >>> len(fr), len(zh)
        (1, 1)
    """
    prompts = list(prompts)
    if not prompts:
        raise LapeError("prompts is empty; pass at least one prompt")
    per_call = max(1, batch_size // len(prompts))
    if "attention_mask" not in inspect.signature(model.generate).parameters:
        per_call = 1  # no padded batches: generate_with_hooks regroups rows by prompt length
    results: list[tuple[list[str], list[Tensor]]] = []
    for start in range(0, len(hook_sets), per_call):
        chunk = [list(h) for h in hook_sets[start : start + per_call]]
        combined = chunk[0] if len(chunk) == 1 else _row_block_hooks(chunk, len(prompts))
        texts, tokens = generate_texts_and_tokens(
            model,
            prompts * len(chunk),
            fwd_hooks=combined,
            max_new_tokens=max_new_tokens,
            batch_size=len(prompts) * len(chunk) if len(chunk) > 1 else batch_size,
            **kwargs,
        )
        for s in range(len(chunk)):
            rows = slice(s * len(prompts), (s + 1) * len(prompts))
            results.append((texts[rows], tokens[rows]))
    return results


def _row_block_hooks(hook_sets: list[list[tuple[str, Any]]], rows_per_set: int) -> list[Any]:
    """Hooks that apply ``hook_sets[s]`` to batch rows ``s * rows_per_set`` onwards only."""
    by_name: dict[str, list[tuple[slice, Any]]] = {}
    for s, hooks in enumerate(hook_sets):
        rows = slice(s * rows_per_set, (s + 1) * rows_per_set)
        for name, fn in hooks:
            by_name.setdefault(name, []).append((rows, fn))

    def make(entries: list[tuple[slice, Any]]) -> Any:
        def hook_fn(act: Tensor, *, hook: Any) -> Tensor | None:
            out: Tensor | None = None
            for rows, fn in entries:
                current = act if out is None else out
                result = fn(current[rows], hook=hook)
                if result is not None:
                    if out is None:
                        out = act.clone()
                    out[rows] = result
            return out

        def reset() -> None:
            reset_positions([("", fn) for _, fn in entries])

        return resettable(hook_fn, reset)

    return [(name, make(entries)) for name, entries in by_name.items()]


def generate_texts_and_tokens(
    model: Any, prompts: Sequence[str], **kwargs: Any
) -> tuple[list[str], list[Tensor]]:
    """:func:`generate_with_hooks` with ``return_tokens=True``, typed as such.

    Args:
        model: A TransformerLens model with a tokenizer and ``generate``.
        prompts: The prompts.
        **kwargs: Passed to :func:`generate_with_hooks` (``fwd_hooks``, ``max_new_tokens``,
            ``batch_size``, ...), all but ``return_tokens``.

    Returns:
        ``(texts, token_ids)``: the continuations and their generated token ids, as
        :func:`generate_with_hooks` returns them with ``return_tokens=True``.
    """
    return cast(
        tuple[list[str], list[Tensor]],
        generate_with_hooks(model, prompts, return_tokens=True, **kwargs),
    )
