"""How much an intervention adds to the residual stream, and a control's strength to match it.

A random control is fair only if it pushes as hard as the method it controls. LAPE's hooks
change neuron activations (``blocks.{l}.mlp.hook_post``), which the down projection turns into
a vector added to the residual stream; DiffMean's add a vector to it directly
(``blocks.{l}.hook_resid_pre``). :func:`added_norm` measures, on real prompts, the norm of the
*total* vector a list of hooks adds to the residual stream at each position (summed over the
layers they act on; ``hook_post`` changes times that layer's ``W_out``), averaged over
positions. :func:`matched_strength` finds the strength at which a control's hooks add the
same norm as the method's (a secant search: the norm is linear in the strength for ``add``,
affine for ``replace`` and ``scale``, so it converges in a step or two).

Example:
    >>> lape = steering_hooks(neurons, stats, "fr", strength=2.0, model=model)  # doctest: +SKIP
    >>> target = added_norm(model, lape, ["The server", "To install"])  # doctest: +SKIP
    >>> control = random_matched_neurons(neurons, seed=0)  # doctest: +SKIP
    >>> s, got = matched_strength(  # doctest: +SKIP
    ...     model,
    ...     lambda s: steering_hooks(control, stats, "fr", strength=s, model=model),
    ...     target,
    ...     ["The server", "To install"],
    ...     start=2.0,
    ... )
"""

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from tl_lape._adapter import adapt
from tl_lape.errors import LapeError
from tl_lape.interventions.hooks import FwdHooks, check_fwd_hooks, reset_positions

__all__ = ["added_norm", "matched_strength"]

_POST = re.compile(r"blocks\.(\d+)\.mlp\.hook_post")
_RESID = re.compile(r"blocks\.(\d+)\.hook_resid_pre")
#: Hook points whose hooks only read (they return None): passed through unmeasured.
_READ_ONLY = re.compile(r"blocks\.(\d+)\.mlp\.hook_pre_linear")


def added_norm(model: Any, fwd_hooks: FwdHooks, prompts: Sequence[str]) -> float:
    """The mean norm, over the prompts' positions, of the vector ``fwd_hooks`` add to the
    residual stream (summed over their layers).

    Args:
        model: The TransformerLens model.
        fwd_hooks: Hooks at ``blocks.{l}.mlp.hook_post`` (their change is mapped through
            ``W_out``), ``blocks.{l}.hook_resid_pre`` (taken as it is) and read-only
            ``blocks.{l}.mlp.hook_pre_linear`` hooks (the gated steering hooks' helpers).
        prompts: Texts run one at a time (BOS first, as generation does).
            Each is one forward pass, which position-restricted hooks take as the prompt:
            build hooks with ``positions=None`` to measure them (``"new"`` ones add nothing
            here).

    Returns:
        The mean over all positions of all prompts of ``|sum_l delta_l|``; 0.0 for no hooks.

    Raises:
        LapeError: A hook at another hook point (no way to say what it adds), or no prompts.
    """
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise LapeError(f"prompts must be non-empty texts, at least one; received {prompts!r}")
    check_fwd_hooks(model, fwd_hooks)
    if not fwd_hooks:
        return 0.0
    adapter = adapt(model)
    w_out: dict[int, Tensor] = {}
    added: list[Tensor] = []  # per hook call: pos d_model, float32

    def measuring(name: str, fn: Any) -> Any:
        post, resid = _POST.fullmatch(name), _RESID.fullmatch(name)
        if post is None and resid is None:
            if _READ_ONLY.fullmatch(name):
                return fn
            raise LapeError(
                f"added_norm cannot say what a hook at {name!r} adds to the residual stream; "
                "it measures hooks at blocks.{l}.mlp.hook_post and blocks.{l}.hook_resid_pre"
            )

        def hook_fn(act: Tensor, *, hook: Any) -> Tensor | None:
            before = act.detach().clone()
            out = fn(act, hook=hook)
            if out is None:
                return None
            delta = (out.detach() - before).to(torch.float32)[0]  # pos d_mlp or pos d_model
            if post is not None:
                layer = int(post.group(1))
                if layer not in w_out:
                    every = torch.arange(delta.shape[-1])
                    w_out[layer] = adapter.neuron_output_weights(layer, every)  # d_mlp d_model
                delta = delta.cpu() @ w_out[layer]  # pos d_model
            added.append(delta.cpu())
            return out

        return hook_fn

    wrapped = [(name, measuring(name, fn)) for name, fn in fwd_hooks]
    norms: list[Tensor] = []
    with torch.inference_mode():
        for prompt in prompts:
            added.clear()
            reset_positions(fwd_hooks)
            tokens = model.to_tokens(prompt)  # 1 pos
            model.run_with_hooks(tokens, fwd_hooks=wrapped)
            if added:
                total = torch.stack(added).sum(0)  # pos d_model
                norms.append(total.norm(dim=-1))  # pos
    reset_positions(fwd_hooks)
    if not norms:
        return 0.0
    return float(torch.cat(norms).mean())


def matched_strength(
    model: Any,
    make_hooks: Callable[[float], FwdHooks],
    target_norm: float,
    prompts: Sequence[str],
    *,
    start: float,
    rtol: float = 0.02,
    max_steps: int = 6,
) -> tuple[float, float]:
    """The strength at which ``make_hooks(strength)`` adds ``target_norm`` (see
    :func:`added_norm`) on ``prompts``, by a secant search from ``start``.

    Args:
        model: The TransformerLens model.
        make_hooks: Builds the control's hooks at a strength.
        target_norm: The norm to match (the method's :func:`added_norm`).
        prompts: The texts the norms are measured on.
        start: The first strength tried (the method's own).
        rtol: Stop when the norm is within this fraction of ``target_norm``.
        max_steps: Secant steps at most.

    Returns:
        ``(strength, norm)``: the strength found and the norm it adds (within ``rtol`` of
        ``target_norm`` unless the search ran out of steps; compare them).

    Raises:
        LapeError: ``target_norm`` or ``start`` not a finite number (``target_norm`` >= 0).
    """
    for name, value in (("target_norm", target_norm), ("start", start)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise LapeError(f"{name} must be a finite number; received {value!r}")
    if target_norm < 0:
        raise LapeError(f"target_norm must be at least 0; received {target_norm!r}")

    def norm_at(s: float) -> float:
        return added_norm(model, make_hooks(s), prompts)

    s0, n0 = 0.0, norm_at(0.0)
    s1, n1 = float(start), norm_at(float(start))
    best = (s1, n1)
    for _ in range(max_steps):
        if abs(n1 - target_norm) <= rtol * max(target_norm, 1e-12):
            return s1, n1
        if n1 == n0:
            break  # flat: the strength does not change what is added
        s2 = s1 + (target_norm - n1) * (s1 - s0) / (n1 - n0)
        s0, n0 = s1, n1
        s1, n1 = s2, norm_at(s2)
        if abs(n1 - target_norm) < abs(best[1] - target_norm):
            best = (s1, n1)
    return best
