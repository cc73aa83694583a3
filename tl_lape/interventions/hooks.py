"""Intervention hooks on language-specific neurons, in TransformerLens' hook protocol.

Each factory returns a list of ``(hook_name, fn)`` pairs, ``fn(act, *, hook)``, to pass to
``model.run_with_hooks(tokens, fwd_hooks=...)``, ``with model.hooks(fwd_hooks=...)`` or
``model.generate`` inside such a block; they compose with your own hooks (concatenate the lists)
and are attached only for the duration of that call or block. All of them act on
``blocks.{l}.mlp.hook_post``, the input of the down projection:

* :func:`deactivation_hooks` sets the chosen neurons to zero (the paper's deactivation; the same
  as zeroing those columns of the down projection).
* :func:`steering_hooks` sets, adds to, or scales the activation value ``act_fn(gate)`` of a
  target language's neurons. In a gated MLP (``hook_post = act_fn(gate) * up``) setting the
  value to ``v`` writes ``v * up``, reading ``up`` (``hook_pre_linear``) in the same forward pass.
* :func:`patching_hooks` copies a language's neuron activations from another run.

Positions: every factory takes ``positions=``: ``None`` (all), an int, a slice, a sequence or
tensor of indices, or a bool mask over the ``pos`` axis of each forward pass, or one of the
strings ``"new"`` and ``"prompt"`` for generation. Explicit positions index the positions of each
forward pass as it comes: with a KV cache every decoding step is a pass of one position, so
``positions=slice(0, 5)`` would also hit each new token. ``"new"`` affects only newly generated
tokens and ``"prompt"`` only the prompt, with or without a KV cache: the first pass a hook sees
is taken as the prompt; a later pass of one position (KV cache), or one longer by one position
than the sequence so far (no cache), continues it. Such hooks follow one generation at a time:
:func:`~tl_lape.interventions.generation.generate_with_hooks`, :func:`steered` and
:func:`deactivated` start
them afresh at every generation; with ``model.hooks(...)`` make fresh hooks for every
``generate`` call, or call :func:`reset_positions` between calls. A slice that selects no
position of the first pass a hook sees (since it was made or reset: the prompt, when
generating) raises a :class:`~tl_lape.errors.LapeError`, unless it starts just past that pass
(``slice(n, None)`` on a pass of ``n`` positions: the positions a longer re-run of the sequence
adds). A later pass may select nothing, as a cached decoding step (one position) does with
``slice(1, None)``.

The model: a neuron set applies only to the model it was selected on. With ``model=`` the
factories check the set against the model when they build the hooks (:func:`deactivated` and
:func:`steered` always do, and :func:`~tl_lape.interventions.generation.generate_with_hooks` and
:func:`~tl_lape.judging.nll.window_nll` check the hooks before attaching them). Hooks built
without it check, the first time they fire at a hook point, that the model whose forward pass
calls them (found up the call stack) has the set's layer count, and raise a ``LapeError``
naming both counts otherwise; later passes cost one set lookup. With a bare
``model.hooks(...)`` or ``run_with_hooks``, a set of more layers than the model has hooks for
layers the model lacks, and TransformerLens raises its ``KeyError`` while attaching them, before
any of these hooks runs: pass ``model=`` to get the ``LapeError`` when the hooks are built.

For the common case, :func:`deactivated` and :func:`steered` are context managers that build the
hooks, check them against the model and attach them for a ``with`` block, nesting with your own
``model.hooks(...)``.

Example:
    >>> fwd_hooks = deactivation_hooks(neurons, ["fr"])
    >>> logits = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
    >>> steer = steering_hooks(neurons, stats, "fr", model=model, positions="new")
    >>> with model.hooks(fwd_hooks=steer):
    ...     text = model.generate("The weather today", max_new_tokens=20, verbose=False)
    >>> with steered(model, neurons, stats, "fr", positions="new"):
    ...     text = model.generate("The weather today", max_new_tokens=20, verbose=False)
"""

import contextlib
import functools
import math
import operator
import sys
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from tl_lape.checks import check_choice, check_languages
from tl_lape.errors import LapeError
from tl_lape.neurons import LanguageNeurons
from tl_lape.stats import ActivationStats

__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "Mode",
    "PositionSelector",
    "Positions",
    "deactivated",
    "deactivation_hooks",
    "patching_hooks",
    "reset_positions",
    "resettable",
    "steered",
    "steering_hooks",
]

#: What ``positions=`` accepts.
Positions = int | slice | Sequence[int] | Tensor | Literal["new", "prompt"] | None
HookFn = Callable[..., Tensor | None]
FwdHooks = list[tuple[str, HookFn]]

#: What ``mode=`` of :func:`steering_hooks` and :func:`steered` accepts.
Mode = Literal["replace", "add", "scale"]
#: The steering modes, in the order the docs list them.
MODES: tuple[Mode, ...] = get_args(Mode)
#: The steering mode of every function here that has a default one (and of ``tl-lape steer``).
DEFAULT_MODE: Mode = "add"


def _post_name(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


def _pre_linear_name(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_pre_linear"


# --------------------------------------------------------------------------- positions


#: Positions beyond any sequence a model can run (int64 indexing stays exact below it).
_MAX_POSITION = 2**62


def _check_position(value: int) -> int:
    """An int position, refused with a LapeError if no sequence could have it."""
    if not -_MAX_POSITION < value < _MAX_POSITION:
        raise LapeError(
            f"positions holds {value}, beyond any sequence; give positions within the "
            "sequence, such as 0 or -1"
        )
    return value


def _check_slice(positions: slice) -> slice:
    """A ``positions=`` slice with int (or None) bounds and a positive step, or a LapeError."""
    for part in ("start", "stop", "step"):
        value = getattr(positions, part)
        if value is None:
            continue
        try:
            _check_position(operator.index(value))
        except TypeError:
            raise LapeError(
                f"positions={positions!r}: its {part} must be an int or None; received "
                f"{type(value).__name__}"
            ) from None
    if positions.step is not None and operator.index(positions.step) < 1:
        raise LapeError(
            f"positions={positions!r}: the step must be a positive int (torch indexes no "
            "slice backwards, and a step of 0 selects nothing); give e.g. slice(0, None, 2)"
        )
    return positions


def _starts_at_end(positions: slice, pos_len: int) -> bool:
    """Whether ``positions`` starts just past the last of ``pos_len`` positions: ``slice(n, ...)``.

    Such a slice selects the positions after the first ``pos_len``: none yet, but some in a
    longer pass of the same sequence (a re-run with more tokens, as in generation without a
    KV cache), so an empty selection is not an error.
    """
    if positions.step is not None and positions.step < 0:
        return False
    try:
        start = 0 if positions.start is None else operator.index(positions.start)
    except TypeError:
        return False
    return (start + pos_len if start < 0 else start) == pos_len


class PositionSelector:
    """Turns ``positions=`` into the position indices of one forward pass (None = all).

    The position logic of every hook here, for hooks of your own (the DiffMean hooks of
    :mod:`tl_lape.interventions.diffmean` use it): make one per hook from its ``positions=``, call
    :meth:`select` with each pass's ``pos`` length, and :meth:`reset` before a new generation.
    """

    def __init__(self, positions: Any) -> None:
        self.kind: str
        self.static: Tensor | None = None
        self.prompt_len: int | None = None
        self.total = 0
        if positions is None:
            self.kind = "all"
        elif isinstance(positions, str):
            if positions not in ("new", "prompt"):
                raise LapeError(
                    f"positions must be None, an int, a slice, indices, a bool mask, 'new' or "
                    f"'prompt'; received the string {positions!r}"
                )
            self.kind = positions
        elif isinstance(positions, slice):
            self.kind = "slice"
            self.slice = _check_slice(positions)
        elif isinstance(positions, bool):
            raise LapeError(f"positions must not be a bool; received {positions!r}")
        elif isinstance(positions, int):
            self.kind = "index"
            self.static = torch.tensor([_check_position(positions)], dtype=torch.long)
        elif isinstance(positions, Tensor) and positions.dtype == torch.bool:
            if positions.ndim != 1:
                raise LapeError(
                    f"a bool positions mask must be 1-D over pos; received shape "
                    f"{tuple(positions.shape)}"
                )
            self.kind = "mask"
            self.static = positions.detach().cpu()
        else:
            try:
                idx = torch.as_tensor(positions)
            except (TypeError, ValueError, RuntimeError, OverflowError):
                raise LapeError(
                    f"positions must be None, an int, a slice, indices, a bool mask, 'new' or "
                    f"'prompt'; received {type(positions).__name__}"
                ) from None
            if idx.numel() == 0:
                idx = idx.reshape(0).to(torch.long)
            if idx.ndim != 1 or idx.is_floating_point() or idx.dtype == torch.bool:
                raise LapeError(
                    f"position indices must be a 1-D sequence of ints; received {positions!r}"
                )
            self.kind = "index"
            self.static = idx.detach().cpu().to(torch.long)

    def reset(self) -> None:
        """Forget the sequence so far: the next pass is taken as a new prompt."""
        self.prompt_len, self.total = None, 0

    def select(self, pos_len: int, hook_name: str) -> Tensor | None:
        """Indices (CPU, int64) of the positions to change in a pass of ``pos_len``; None = all."""
        if self.kind == "all":
            return None
        if self.kind == "slice":
            chosen = torch.arange(pos_len)[self.slice]
            if self.prompt_len is None:  # the first pass since made or reset: the prompt
                self.prompt_len = self.total = pos_len
                if pos_len and not chosen.numel() and not _starts_at_end(self.slice, pos_len):
                    raise LapeError(
                        f"positions={self.slice!r} selects no position of the first forward "
                        f"pass at {hook_name!r}, which has pos={pos_len}; positions index the "
                        f"positions of each pass (0..{pos_len - 1} here): give a slice that "
                        "selects some of them, or positions=None for all"
                    )
            return chosen
        if self.kind == "mask":
            assert self.static is not None
            if self.static.shape[0] != pos_len:
                raise LapeError(
                    f"positions mask has length {self.static.shape[0]} but the activation at "
                    f"{hook_name!r} has pos={pos_len}; give a mask as long as the sequence"
                )
            return torch.nonzero(self.static).flatten()
        if self.kind == "index":
            assert self.static is not None
            idx = self.static
            if idx.numel() and (int(idx.min()) < -pos_len or int(idx.max()) >= pos_len):
                raise LapeError(
                    f"positions {idx.tolist()} are out of range for the activation at "
                    f"{hook_name!r} with pos={pos_len}"
                )
            return idx % pos_len if idx.numel() else idx
        # "new" / "prompt": track the sequence across generation steps.
        if self.prompt_len is None or (pos_len > 1 and pos_len != self.total + 1):
            self.prompt_len, self.total = pos_len, pos_len  # a new prompt
            new = torch.zeros(pos_len, dtype=torch.bool)
        elif pos_len == 1:  # a decoding step with a KV cache
            self.total += 1
            new = torch.ones(1, dtype=torch.bool)
        else:  # the sequence re-run with one more token (no KV cache)
            self.total = pos_len
            new = torch.arange(pos_len) >= self.prompt_len
        chosen = new if self.kind == "new" else ~new
        return torch.nonzero(chosen).flatten()


# --------------------------------------------------------------------------- shared helpers


class _DeviceCache:
    """A CPU tensor, copied once per (device, dtype) it is needed on."""

    def __init__(self, value: Tensor) -> None:
        self.value = value
        self._copies: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def on(self, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
        key = (device, dtype if dtype is not None else self.value.dtype)
        copy = self._copies.get(key)
        if copy is None:
            copy = self._copies[key] = self.value.to(device=device, dtype=key[1])
        return copy


#: How many frames up :func:`_running_model` looks for the model whose forward pass calls a hook.
_MAX_FRAMES = 200


def _model_n_layers(model: Any) -> int:
    """The layer count of ``model``: ``cfg.n_layers``, else its ``blocks.{l}.mlp.hook_post``."""
    n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
    if isinstance(n_layers, int) and not isinstance(n_layers, bool):
        return n_layers
    hook_dict = model.hook_dict
    count = 0
    while _post_name(count) in hook_dict:
        count += 1
    return count


def _running_model(point: Any) -> Any:
    """The TransformerLens model whose forward pass is calling the hook point ``point``, or None.

    A hook point does not know its model, so this looks up the call stack for the nearest
    ``self`` that is a TransformerLens model (``run_with_hooks`` and a ``hook_dict`` holding
    ``point``). It runs once per hook point (see :class:`_Fit`), never on later passes. Any
    other object with a ``.name`` (the documented ``fn(act, *, hook)`` protocol, e.g. a hook of
    your own passing a stand-in on) matches the nearest model with a hook point of that name.
    """
    by_name = None if isinstance(point, torch.nn.Module) else getattr(point, "name", None)
    frame: FrameType | None = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if (
            isinstance(owner, torch.nn.Module)
            and owner is not point
            and callable(getattr(type(owner), "run_with_hooks", None))
        ):
            try:
                hook_dict = owner.hook_dict
            except Exception:  # not a model we can read: look further up
                hook_dict = None
            if isinstance(hook_dict, Mapping) and (
                any(p is point for p in hook_dict.values())
                or (isinstance(by_name, str) and by_name in hook_dict)
            ):
                return owner
        frame = frame.f_back
    return None


class _Fit:
    """What the hooks made from one neuron set check their activations and their model against.

    Every pass: the activation's shape and width (``d_mlp``, or the largest index of a set of
    unknown width). The first time a hook fires at a hook point, whether built with ``model=`` or
    not: the layer count of the model running it (see :func:`_running_model`), which must equal
    the set's. The hook points of a model that passed are remembered (weakly), so a later pass
    costs one set lookup; where no model is found (not a TransformerLens model's forward pass),
    only the width is checked. A ``hook`` that cannot be weakly referenced (any object with a
    ``.name`` will do, as the hook protocol says) is not remembered: it is checked at every
    pass it is given to.
    """

    def __init__(self, neurons: LanguageNeurons) -> None:
        self.d_mlp = neurons.d_mlp
        self.max_index = neurons.max_index()
        self.n_layers = neurons.n_layers
        self.model_name = neurons.metadata.get("model_name")
        self._checked: weakref.WeakSet[Any] = weakref.WeakSet()

    def check_model(self, hook: Any) -> None:
        """Check, once per hook point, that the model ``hook`` belongs to has our layer count."""
        if hook is None:
            return
        point = getattr(hook, "_target", hook)  # TransformerLens' aliased view of a hook point
        # WeakSet membership is False (never an error) for an object it cannot refer to weakly.
        if hook in self._checked or point in self._checked:
            return
        model = _running_model(point)
        if model is None:
            self._remember(point)
            return
        n_layers = _model_n_layers(model)
        if n_layers != self.n_layers:
            made_for = f" ({self.model_name})" if self.model_name else ""
            raise LapeError(
                f"the neuron set was made for a model{made_for} with n_layers={self.n_layers}, "
                f"but the model these hooks run in has n_layers={n_layers}; a neuron set applies "
                "only to the model it was selected on: use the set made for this model, and "
                "build the hooks with model=model (or check the set first with "
                "neurons.for_model(model)) to have this caught before anything runs"
            )
        self._checked.update(model.hook_dict.values())
        self._remember(point)

    def _remember(self, point: Any) -> None:
        """Remember ``point`` as checked, if it can be referred to weakly (else check it again)."""
        with contextlib.suppress(TypeError):  # e.g. types.SimpleNamespace(name=...)
            self._checked.add(point)


def _check_act(act: Tensor, hook: Any, fit: _Fit, name: str) -> None:
    if act.ndim != 3:
        raise LapeError(
            f"expected a [batch, pos, d_mlp] activation at {name!r}; received shape "
            f"{tuple(act.shape)} (remove_batch_dim is not supported)"
        )
    d_mlp, max_index = fit.d_mlp, fit.max_index
    if d_mlp is not None and act.shape[-1] != d_mlp:
        raise LapeError(
            f"the activation at {name!r} has width {act.shape[-1]}, but the neuron set was made "
            f"for d_mlp={d_mlp}; a neuron set applies only to the model it was selected on "
            "(check it before hooking with model=model, or neurons.for_model(model))"
        )
    if d_mlp is None and max_index >= act.shape[-1]:
        raise LapeError(
            f"the activation at {name!r} has width {act.shape[-1]}, but the neuron set has "
            f"neuron index {max_index}; the set was made for a wider model: use the set made "
            "for this model"
        )
    fit.check_model(hook)


def _language_list(
    languages: str | Sequence[str], neurons: LanguageNeurons, what: str
) -> list[str]:
    langs = [languages] if isinstance(languages, str) else list(languages)
    unknown = [k for k in langs if k not in neurons.languages]
    if unknown:
        raise LapeError(
            f"unknown {what} {unknown!r}; the neuron set has languages {list(neurons.languages)!r}"
        )
    return langs


def _union_indices(neurons: LanguageNeurons, languages: Sequence[str], layer: int) -> Tensor:
    if not languages:
        return torch.zeros(0, dtype=torch.long)
    return torch.unique(torch.cat([neurons.indices(k, layer) for k in languages]))  # sorted


def _check_model(neurons: LanguageNeurons, model: Any) -> bool | None:
    """Check the neuron set fits ``model`` (if given); return whether its MLP is gated."""
    if model is None:
        return None
    from tl_lape._adapter import adapt

    adapter = adapt(model)
    neurons.check_compatible(adapter.n_layers, adapter.d_mlp)
    return adapter.gated


def _check_neurons(neurons: Any) -> LanguageNeurons:
    if not isinstance(neurons, LanguageNeurons):
        raise LapeError(f"neurons must be a LanguageNeurons; received {type(neurons).__name__}")
    return neurons


def _select(act: Tensor, pos: Tensor | None, idx: Tensor) -> Tensor:
    """``act[:, pos][..., idx]`` -> ``[batch, n_pos, k]`` (all positions if ``pos`` is None)."""
    if pos is None:
        return act[..., idx]  # batch pos k
    return act[:, pos[:, None], idx[None, :]]  # batch n_pos k


def _write(act: Tensor, pos: Tensor | None, idx: Tensor, values: Tensor) -> Tensor:
    """A copy of ``act`` with ``act[:, pos][..., idx] = values`` (autograd-safe)."""
    if pos is not None and pos.numel() == 0:
        return act
    out = act.clone()
    if pos is None:
        out[..., idx] = values.to(out.dtype)
    else:
        out[:, pos[:, None], idx[None, :]] = values.to(out.dtype)
    return out


def _positions_on(pos: Tensor | None, device: torch.device) -> Tensor | None:
    return None if pos is None else pos.to(device)


#: The attribute under which a hook function made here keeps the reset of its position state.
_RESET = "reset_positions"


def resettable(fn: HookFn, reset: Callable[[], None]) -> HookFn:
    """Give ``fn`` a ``reset_positions()`` that :func:`reset_positions` calls; returns ``fn``.

    The one position-reset protocol: a hook of your own that keeps position state (e.g. with a
    :class:`PositionSelector`) registers its reset here, e.g.
    ``resettable(fn, selector.reset)``.
    """
    setattr(fn, _RESET, reset)
    return fn


#: The attribute under which a hook function made here keeps the :class:`_Fit` of its set.
_FIT = "_lape_fit"


def _fitted(fn: HookFn, fit: _Fit) -> HookFn:
    """Record on ``fn`` the :class:`_Fit` of its neuron set, for :func:`check_fwd_hooks`."""
    setattr(fn, _FIT, fit)
    return fn


def check_fwd_hooks(model: Any, fwd_hooks: Sequence[tuple[Any, HookFn]]) -> None:
    """Before attaching ``fwd_hooks`` to ``model``: the hooks made here must fit its layer count.

    Raises a :class:`LapeError` naming both layer counts for a hook made here from a set of
    another layer count, before TransformerLens would raise a ``KeyError`` for a layer the model
    lacks (or the hooks would touch the first layers only). Your own hooks are left alone.
    """
    n_layers: int | None = None
    for name, fn in fwd_hooks:
        fit = getattr(fn, _FIT, None)
        if not isinstance(fit, _Fit):
            continue
        if n_layers is None:
            n_layers = _model_n_layers(model)
        if fit.n_layers != n_layers:
            raise LapeError(
                f"the hook {name!r} was made from a neuron set with n_layers={fit.n_layers}, but "
                f"the model has n_layers={n_layers}; a neuron set applies only to the model it "
                "was selected on: use the set made for this model, and build the hooks with "
                "model=model (or check the set first with neurons.for_model(model))"
            )


def reset_positions(fwd_hooks: Sequence[tuple[str, HookFn]]) -> None:
    """Make ``positions="new"``/``"prompt"`` hooks take their next forward pass as a new prompt.

    Such hooks follow one generation across its forward passes. Call this between two
    generations that reuse the same hooks
    (:func:`~tl_lape.interventions.generation.generate_with_hooks`,
    :func:`steered` and :func:`deactivated` do it at every ``generate`` call); otherwise a
    prompt of one position, or one position longer than the sequence so far, would be read as
    a continuation. Hooks without such state (and your own hooks) are left alone.

    Args:
        fwd_hooks: ``(hook_name, fn)`` pairs, as the factories here return them.

    Example:
        >>> hooks = steering_hooks(neurons, stats, "fr", model=model, positions="new")
        >>> with model.hooks(fwd_hooks=hooks):
        ...     first = model.generate("The weather", max_new_tokens=8, verbose=False)
        ...     reset_positions(hooks)
        ...     second = model.generate("A", max_new_tokens=8, verbose=False)
    """
    for _, fn in fwd_hooks:
        reset = getattr(fn, _RESET, None)
        if callable(reset):
            reset()


# --------------------------------------------------------------------------- deactivation


def deactivation_hooks(
    neurons: LanguageNeurons,
    languages: str | Sequence[str],
    *,
    positions: Positions = None,
    model: Any = None,
) -> FwdHooks:
    """Hooks that set the neurons of ``languages`` to zero (the paper's deactivation).

    Zeroing ``hook_post`` at a neuron equals zeroing that neuron's column of the down
    projection, in gated and non-gated MLPs alike.

    Args:
        neurons: The language-specific neurons.
        languages: A language code or several; their neurons are united.
        positions: Which positions to affect (see the module docstring); default all.
        model: If given, check that ``neurons`` fit this model before returning.

    Returns:
        ``[(hook_name, fn), ...]`` for ``fwd_hooks=``; empty if there is nothing to deactivate.

    Example:
        >>> logits = model.run_with_hooks(tokens, fwd_hooks=deactivation_hooks(neurons, "zh"))
        >>> clean = model(tokens)
        >>> bool((logits != clean).any())  # the Chinese neurons matter, even on English text
        True
    """
    neurons = _check_neurons(neurons)
    langs = _language_list(languages, neurons, "languages")
    _check_model(neurons, model)
    fit = _Fit(neurons)
    hooks: FwdHooks = []
    for layer in range(neurons.n_layers):
        idx = _union_indices(neurons, langs, layer)
        if idx.numel():
            hooks.append((_post_name(layer), _zero_hook(idx, fit, layer, positions)))
    return hooks


def _zero_hook(idx: Tensor, fit: _Fit, layer: int, positions: Positions) -> HookFn:
    indices = _DeviceCache(idx)
    selector = PositionSelector(positions)
    name = _post_name(layer)

    def deactivate(act: Tensor, *, hook: Any) -> Tensor:
        _check_act(act, hook, fit, name)
        pos = _positions_on(selector.select(act.shape[1], name), act.device)
        i = indices.on(act.device)
        return _write(act, pos, i, torch.zeros((), dtype=act.dtype, device=act.device))

    return _fitted(resettable(deactivate, selector.reset), fit)


# --------------------------------------------------------------------------- steering


def steering_hooks(
    neurons: LanguageNeurons,
    stats: ActivationStats,
    target: str,
    *,
    mode: Mode = DEFAULT_MODE,
    strength: float | int = 1.0,
    deactivate: Sequence[str] | None = None,
    positions: Positions = None,
    model: Any = None,
    gated: bool | None = None,
) -> FwdHooks:
    """Hooks that push the activations of ``target``'s neurons towards that language.

    For each of ``target``'s neurons, with ``m`` its mean activation on ``target``'s text
    (``stats.mean_activations``) and ``a = act_fn(gate)`` its current activation value:

    * ``mode="replace"``: set ``a`` to ``strength * m`` (``strength=1``: the mean);
    * ``mode="add"``: set ``a`` to ``a + strength * m``;
    * ``mode="scale"``: set ``a`` to ``strength * a``.

    In a gated MLP the neuron's output is ``a * up`` and the hooks write ``new_a * up``, reading
    ``up`` from ``hook_pre_linear`` in the same pass. ``deactivate`` languages' neurons are set
    to zero in the same pass; a neuron that is also ``target``'s is steered, not zeroed.

    Args:
        neurons: The language-specific neurons.
        stats: Activation statistics of the same model, with ``target`` among its languages
            (for ``m``; not used by ``"scale"``).
        target: The language to steer towards.
        mode: ``"replace"``, ``"add"`` or ``"scale"`` (default :data:`DEFAULT_MODE`, ``"add"``).
        strength: The factor described above.
        deactivate: A sequence of language codes whose neurons to zero in the same pass, or
            None.
        positions: Which positions to affect (see the module docstring); default all.
        model: The model the hooks are for: checks that ``neurons`` fit it and tells whether
            its MLP is gated. Without it, ``gated`` or ``stats.metadata["gated"]`` is used.
        gated: Whether the MLP is gated, if ``model`` is not given.

    Returns:
        ``[(hook_name, fn), ...]`` for ``fwd_hooks=``.

    Example:
        >>> hooks = steering_hooks(neurons, stats, "fr", model=model)
        >>> with model.hooks(fwd_hooks=hooks):
        ...     out = model.generate("Once upon a time", max_new_tokens=20, verbose=False)
    """
    neurons = _check_neurons(neurons)
    if not isinstance(stats, ActivationStats):
        raise LapeError(f"stats must be an ActivationStats; received {type(stats).__name__}")
    mode = check_choice(mode, MODES, "mode")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise LapeError(f"strength must be a number; received {strength!r}")
    if not math.isfinite(strength):
        raise LapeError(
            f"strength must be a finite number; received {strength!r}: a NaN or infinite "
            "strength turns every activation it touches (and so every logit) into NaN"
        )
    if not isinstance(target, str):
        raise LapeError(f"target must be one language code; received {target!r}")
    (target,) = _language_list([target], neurons, "target")
    off = (
        []
        if deactivate is None
        else _language_list(
            check_languages(deactivate, "deactivate"), neurons, "deactivate languages"
        )
    )
    model_gated = _check_model(neurons, model)
    fits = stats.d_mlp == neurons.d_mlp or (
        neurons.d_mlp is None and neurons.max_index() < stats.d_mlp
    )
    if stats.n_layers != neurons.n_layers or not fits:
        raise LapeError(
            f"stats (n_layers={stats.n_layers}, d_mlp={stats.d_mlp}) and neurons "
            f"(n_layers={neurons.n_layers}, d_mlp={neurons.d_mlp}) come from different models"
        )
    if mode != "scale" and target not in stats.languages:
        raise LapeError(
            f"target {target!r} is not among the languages of stats {list(stats.languages)!r}; "
            "collect statistics for it"
        )
    if model_gated is not None:
        gated = model_gated
    elif gated is None:
        meta_gated = stats.metadata.get("gated")
        gated = meta_gated if isinstance(meta_gated, bool) else None
    if gated is None and mode != "scale":
        raise LapeError(
            "cannot tell whether the model's MLP is gated: pass model=model (or gated=True/False)"
        )
    means = stats.mean_activations[..., stats.languages.index(target)] if mode != "scale" else None
    fit = _Fit(neurons)
    hooks: FwdHooks = []
    for layer in range(neurons.n_layers):
        idx = neurons.indices(target, layer)
        zero_idx = _union_indices(neurons, off, layer)
        if idx.numel():
            zero_idx = zero_idx[~torch.isin(zero_idx, idx)]
        if not idx.numel() and not zero_idx.numel():
            continue
        value = (strength * means[layer, idx]) if means is not None else None  # k, float64
        if value is not None and value.numel() and float(value.abs().max()) > _FLOAT32_MAX:
            raise LapeError(
                f"strength {strength!r} times the mean activation of {target!r}'s neurons in "
                f"layer {layer} is {float(value.abs().max()):.3g}, beyond the largest float32 "
                f"({_FLOAT32_MAX:.3g}): every steered activation would be infinite. Pass a "
                "strength of a few units to a few tens"
            )
        hooks.extend(
            _steer_layer_hooks(
                layer,
                idx,
                zero_idx,
                mode,
                float(strength),
                value,
                bool(gated),
                fit,
                positions,
            )
        )
    return hooks


#: The largest finite float32 (bfloat16 shares its range): a steered value beyond it is infinite.
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _steer_layer_hooks(
    layer: int,
    idx: Tensor,
    zero_idx: Tensor,
    mode: str,
    strength: float,
    value: Tensor | None,
    gated: bool,
    fit: _Fit,
    positions: Positions,
) -> FwdHooks:
    indices, zero_indices = _DeviceCache(idx), _DeviceCache(zero_idx)
    values = _DeviceCache(value) if value is not None else None
    selector = PositionSelector(positions)
    name = _post_name(layer)
    needs_up = gated and mode in ("replace", "add") and idx.numel() > 0
    stash: dict[str, Tensor] = {}

    def stash_up(act: Tensor, *, hook: Any) -> None:
        _check_act(act, hook, fit, _pre_linear_name(layer))
        stash["up"] = act[..., indices.on(act.device)]  # batch pos k

    def steer(act: Tensor, *, hook: Any) -> Tensor:
        _check_act(act, hook, fit, name)
        pos = _positions_on(selector.select(act.shape[1], name), act.device)
        out = act
        if zero_idx.numel():
            zero = torch.zeros((), dtype=act.dtype, device=act.device)
            out = _write(out, pos, zero_indices.on(act.device), zero)
        if not idx.numel():
            return out
        i = indices.on(act.device)
        current = _select(act, pos, i)  # batch n_pos k
        if mode == "scale":
            new = current * strength
        else:
            assert values is not None
            v = values.on(act.device, act.dtype)  # k
            if gated:
                up = stash.pop("up", None)
                if up is None or up.shape[:2] != act.shape[:2]:
                    raise LapeError(
                        f"{_pre_linear_name(layer)!r} did not fire before {name!r} in this "
                        "pass; is the model's MLP really gated? (pass model=model)"
                    )
                up = up if pos is None else up[:, pos]  # batch n_pos k
                new = v * up if mode == "replace" else current + v * up
            else:
                new = v.expand_as(current) if mode == "replace" else current + v
        if not bool(torch.isfinite(new).all()):
            raise LapeError(
                f"steering {name!r} (mode={mode!r}, strength={strength!r}) produced a "
                f"non-finite activation in {act.dtype}: the model's logits would be NaN. Pass "
                "a smaller strength"
            )
        return _write(out, pos, i, new)

    def reset() -> None:
        selector.reset()
        stash.clear()

    hooks: FwdHooks = []
    if needs_up:
        hooks.append((_pre_linear_name(layer), _fitted(stash_up, fit)))
    hooks.append((name, _fitted(resettable(steer, reset), fit)))
    return hooks


# --------------------------------------------------------------------------- patching


def patching_hooks(
    neurons: LanguageNeurons,
    language: str,
    source: Mapping[str, Tensor] | Any,
    *,
    positions: Positions = None,
    model: Any = None,
) -> FwdHooks:
    """Hooks that copy ``language``'s neuron activations (``hook_post``) from another run.

    Args:
        neurons: The language-specific neurons.
        language: Whose neurons to patch.
        source: Activations of the other run: an ``ActivationCache`` or a mapping from
            ``blocks.{l}.mlp.hook_post`` to ``[batch, pos, d_mlp]`` tensors, e.g. from
            ``model.run_with_cache(other_tokens, names_filter=lambda n: n.endswith("hook_post"))``.
            Each must have the patched run's shape (batch 1 broadcasts over the batch), or
            ``[batch, n_positions, d_mlp]`` for exactly the selected ``positions``.
        positions: Which positions to patch (see the module docstring); default all.
        model: If given, check that ``neurons`` fit this model before returning.

    Returns:
        ``[(hook_name, fn), ...]`` for ``fwd_hooks=``.

    Example:
        >>> _, cache = model.run_with_cache(
        ...     fr_tokens, names_filter=lambda n: n.endswith("mlp.hook_post"))
        >>> last = {name: act[:, -1:] for name, act in cache.items()}  # French, last position
        >>> logits = model.run_with_hooks(
        ...     en_tokens, fwd_hooks=patching_hooks(neurons, "fr", last, positions=-1))
    """
    neurons = _check_neurons(neurons)
    if not isinstance(language, str):
        raise LapeError(f"language must be one language code; received {language!r}")
    (language,) = _language_list([language], neurons, "language")
    _check_model(neurons, model)
    fit = _Fit(neurons)
    hooks: FwdHooks = []
    for layer in range(neurons.n_layers):
        idx = neurons.indices(language, layer)
        if not idx.numel():
            continue
        name = _post_name(layer)
        try:
            src = source[name]
        except (KeyError, TypeError, IndexError):
            raise LapeError(
                f"source has no activation {name!r}; cache it with model.run_with_cache(tokens, "
                "names_filter=lambda name: name.endswith('mlp.hook_post'))"
            ) from None
        if (
            not isinstance(src, Tensor)
            or src.ndim != 3
            or (neurons.d_mlp is not None and src.shape[-1] != neurons.d_mlp)
            or src.shape[-1] <= fit.max_index
        ):
            got = tuple(src.shape) if isinstance(src, Tensor) else type(src).__name__
            want = neurons.d_mlp if neurons.d_mlp is not None else f"> {fit.max_index}"
            raise LapeError(
                f"source[{name!r}] must be a [batch, pos, d_mlp={want}] tensor; received {got}"
            )
        hooks.append((name, _patch_hook(idx, src, fit, layer, positions)))
    return hooks


def _patch_hook(idx: Tensor, src: Tensor, fit: _Fit, layer: int, positions: Positions) -> HookFn:
    indices = _DeviceCache(idx)
    sources = _DeviceCache(src.detach())
    selector = PositionSelector(positions)
    name = _post_name(layer)

    def patch(act: Tensor, *, hook: Any) -> Tensor:
        _check_act(act, hook, fit, name)
        pos = selector.select(act.shape[1], name)
        pos_dev = _positions_on(pos, act.device)
        i = indices.on(act.device)
        s = sources.on(act.device, act.dtype)
        n_pos = act.shape[1] if pos is None else pos.numel()
        batch_ok = s.shape[0] in (1, act.shape[0])
        if batch_ok and s.shape[1] == act.shape[1]:
            values = _select(s, pos_dev, i)
        elif batch_ok and pos is not None and s.shape[1] == n_pos:
            values = s[..., i]
        else:
            raise LapeError(
                f"source activation for {name!r} has shape {tuple(s.shape)} but the patched run "
                f"has {tuple(act.shape)} ({n_pos} positions selected); give activations of the "
                "same batch and sequence length (or batch 1, or one entry per selected position)"
            )
        return _write(act, pos_dev, i, values.expand(act.shape[0], -1, -1))

    return _fitted(resettable(patch, selector.reset), fit)


# --------------------------------------------------------------------------- scoped interventions


#: The attribute of the ``generate`` wrapper that :func:`_attached` puts on a model.
_SCOPES = "_lape_scopes"
_MISSING = object()


class _GenerateScopes:
    """The one ``generate`` wrapper of a model while tl_lape blocks are open on it.

    The first block to open puts it on the instance, remembering the attribute it replaces;
    every open block registers its hooks; the last one to close (in whatever order they close)
    puts the old attribute back, so no stale wrapper stays behind.
    """

    def __init__(self, model: Any, inner: Callable[..., Any]) -> None:
        self.previous = vars(model).get("generate", _MISSING)
        self.open: dict[int, FwdHooks] = {}
        self._next = 0

        @functools.wraps(inner)
        def generate_afresh(*args: Any, **kwargs: Any) -> Any:
            for hooks in list(self.open.values()):
                reset_positions(hooks)
            return inner(*args, **kwargs)

        setattr(generate_afresh, _SCOPES, self)
        self.wrapper = generate_afresh
        model.generate = generate_afresh

    @staticmethod
    def on(model: Any) -> "_GenerateScopes | None":
        """The scopes whose wrapper is ``model.generate`` now, if any."""
        return getattr(vars(model).get("generate"), _SCOPES, None)

    def enter(self, hooks: FwdHooks) -> int:
        self._next += 1
        self.open[self._next] = hooks
        return self._next

    def exit(self, model: Any, key: int) -> None:
        self.open.pop(key, None)
        if self.open or vars(model).get("generate") is not self.wrapper:
            return  # blocks still open, or someone replaced the wrapper: leave theirs alone
        if self.previous is _MISSING:
            del model.generate
        else:
            model.generate = self.previous


@contextlib.contextmanager
def _attached(model: Any, hooks: FwdHooks) -> Iterator[Any]:
    """Attach ``hooks`` to ``model`` for the block; reset their positions at each ``generate``.

    The hooks go through ``model.hooks(...)``, so they nest with the caller's own blocks and are
    removed on exit, exception or not. For the block, ``model.generate`` is wrapped (on the
    instance, one wrapper for all open blocks) so that every generation starts with fresh
    ``"new"``/``"prompt"`` position state; when the last open block exits, in whatever order
    the blocks exit, the attribute it replaced is restored.
    """
    scopes: _GenerateScopes | None = None
    key = 0
    generate = getattr(model, "generate", None)
    if callable(generate):
        scopes = _GenerateScopes.on(model) or _GenerateScopes(model, generate)
        key = scopes.enter(hooks)
    try:
        with model.hooks(fwd_hooks=hooks):
            yield model
    finally:
        reset_positions(hooks)
        if scopes is not None:
            scopes.exit(model, key)


@contextlib.contextmanager
def deactivated(
    model: Any,
    neurons: LanguageNeurons,
    languages: str | Sequence[str],
    *,
    positions: Positions = None,
) -> Iterator[Any]:
    """Within the block, the neurons of ``languages`` are off in every forward pass of ``model``.

    Built on :func:`deactivation_hooks` (checked against ``model``) and ``model.hooks(...)``:
    it composes and nests with your own ``with model.hooks(...)`` blocks and other tl_lape
    blocks, and leaves no hook attached when the block ends, by an exception or not. Each
    ``model.generate`` call in the block starts with fresh ``"new"``/``"prompt"`` positions.

    Args:
        model: The TransformerLens model.
        neurons: The language-specific neurons.
        languages: A language code or several; their neurons are united.
        positions: Which positions to affect (see the module docstring); default all.

    Yields:
        ``model``, as ``model.hooks(...)`` does.

    Example:
        >>> with deactivated(model, neurons, "fr"):
        ...     loss = model(tokens, return_type="loss")
        >>> bool(loss != model(tokens, return_type="loss"))  # outside the block: the clean loss
        True
    """
    hooks = deactivation_hooks(neurons, languages, positions=positions, model=model)
    with _attached(model, hooks) as attached:
        yield attached


@contextlib.contextmanager
def steered(
    model: Any,
    neurons: LanguageNeurons,
    stats: ActivationStats,
    target: str,
    *,
    mode: Mode = DEFAULT_MODE,
    strength: float | int = 1.0,
    deactivate: Sequence[str] | None = None,
    positions: Positions = None,
) -> Iterator[Any]:
    """Within the block, ``model`` is steered towards ``target`` (see :func:`steering_hooks`).

    Built on :func:`steering_hooks` (checked against ``model``, which also tells whether its
    MLP is gated) and ``model.hooks(...)``: it composes and nests with your own
    ``with model.hooks(...)`` blocks and other tl_lape blocks, and leaves no hook attached when
    the block ends, by an exception or not. Each ``model.generate`` call in the block starts
    with fresh ``"new"``/``"prompt"`` positions, so several generations in one block are each
    steered at their own new tokens.

    Args:
        model: The TransformerLens model.
        neurons: The language-specific neurons.
        stats: Activation statistics of the same model (see :func:`steering_hooks`).
        target: The language to steer towards.
        mode: ``"replace"``, ``"add"`` or ``"scale"`` (default :data:`DEFAULT_MODE`, ``"add"``).
        strength: The factor of ``mode``.
        deactivate: A sequence of language codes whose neurons to zero in the same pass, or
            None.
        positions: Which positions to affect (see the module docstring); default all,
            ``"new"`` for the generated tokens only.

    Yields:
        ``model``, as ``model.hooks(...)`` does.

    Example:
        >>> with steered(model, neurons, stats, "fr", mode="add", strength=4.0, positions="new"):
        ...     text = model.generate("The weather today", max_new_tokens=20, verbose=False)
        >>> isinstance(text, str)
        True
    """
    hooks = steering_hooks(
        neurons,
        stats,
        target,
        mode=mode,
        strength=strength,
        deactivate=deactivate,
        positions=positions,
        model=model,
    )
    with _attached(model, hooks) as attached:
        yield attached
