"""The one place in tl_lape that knows how a TransformerLens model is laid out.

Every other module talks to a model through :func:`adapt`, which returns a :class:`ModelAdapter`
describing the model's MLP neurons: the number of layers, the MLP width ``d_mlp``, whether the
MLP is gated (``act_fn(gate) * up``, as in Llama, Qwen2 and Gemma) or not (``act_fn(fc)``, as in
GPT-2 and BLOOM), the activation function, and the hook names of every layer:

* ``blocks.{l}.mlp.hook_pre``: the pre-activation (in a gated MLP, the gate projection);
* ``blocks.{l}.mlp.hook_pre_linear``: the up projection of a gated MLP (absent otherwise);
* ``blocks.{l}.mlp.hook_post``: ``act_fn(hook_pre)``, times ``hook_pre_linear`` if gated;
* ``blocks.{l}.hook_resid_pre``: the residual stream entering block ``l`` (DiffMean reads and
  edits it; :meth:`ModelAdapter.hook_resid_pre`).

Both TransformerLens 4.x ``TransformerBridge`` and 2.x/3.x ``HookedTransformer`` use these names,
so the adapter is duck-typed: anything with ``run_with_hooks``, ``hooks`` and ``hook_dict`` works.

The activation function is not trusted from the configuration alone (TransformerLens 4.3 reports
``relu`` for BLOOM, whose MLP uses a tanh GELU): :func:`adapt` runs one forward pass of a few
tokens and keeps the candidate that reproduces ``hook_post`` from ``hook_pre`` (and
``hook_pre_linear``), preferring the configured one. The same pass checks that every hook exists,
fires, and is ``d_mlp`` wide.
"""

import logging
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from tl_lape.errors import LapeError

__all__ = ["ACTIVATION_FUNCTIONS", "ModelAdapter", "adapt", "resolve_activation"]

logger = logging.getLogger(__name__)

ActFn = Callable[[Tensor], Tensor]


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def _relu_squared(x: Tensor) -> Tensor:
    return F.relu(x).square()


#: Activation functions tl_lape can reproduce, by canonical name. For all of them
#: ``act_fn(x) > 0`` exactly when ``x > 0``, so counting ``hook_pre > 0`` is the paper's
#: ``act_fn(gate) > 0``.
ACTIVATION_FUNCTIONS: dict[str, ActFn] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": _gelu_tanh,
    "relu": F.relu,
    "quick_gelu": _quick_gelu,
    "relu_squared": _relu_squared,
}

# Names used by transformers / TransformerLens configurations -> canonical names above.
_ACT_ALIASES: dict[str, str] = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_accurate": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
    "bloom_gelu": "gelu_tanh",
    "relu": "relu",
    "quick_gelu": "quick_gelu",
    "relu2": "relu_squared",
    "relu_2": "relu_squared",
    "relu_squared": "relu_squared",
}

# HF model types whose config does not name the activation function.
_MODEL_TYPE_ACT: dict[str, str] = {"bloom": "gelu_tanh"}


def resolve_activation(name: str) -> tuple[str, ActFn]:
    """The canonical name and function of an activation named as in a model configuration.

    Args:
        name: A name such as ``"silu"``, ``"gelu_new"`` or ``"gelu_pytorch_tanh"``.

    Returns:
        ``(canonical_name, function)``.

    Raises:
        LapeError: If the name is not one tl_lape can reproduce.

    Example:
        >>> resolve_activation("gelu_pytorch_tanh")[0]
        'gelu_tanh'
    """
    canonical = _ACT_ALIASES.get(str(name).lower())
    if canonical is None:
        raise LapeError(
            f"unsupported MLP activation function {name!r}; tl_lape supports "
            f"{sorted(_ACT_ALIASES)}. Open an issue if your model needs another one."
        )
    return canonical, ACTIVATION_FUNCTIONS[canonical]


@dataclass(frozen=True, eq=False)
class ModelAdapter:
    """What tl_lape needs to know about a model's MLP neurons, resolved once by :func:`adapt`.

    Attributes:
        model: The wrapped model (a ``TransformerBridge`` or ``HookedTransformer``).
        n_layers: Number of transformer blocks.
        d_mlp: Number of MLP neurons per block.
        gated: Whether the MLP is gated (has ``hook_pre_linear``).
        act_fn_name: Canonical name of the MLP activation (a key of ``ACTIVATION_FUNCTIONS``).
        model_name: The model's name as TransformerLens records it.
        validated: Whether a forward pass confirmed the hooks, widths and activation function.
    """

    model: Any
    n_layers: int
    d_mlp: int
    gated: bool
    act_fn_name: str
    model_name: str
    validated: bool = field(default=False)

    @property
    def act_fn(self) -> ActFn:
        """The MLP activation function, ``hook_post = act_fn(hook_pre) [* hook_pre_linear]``."""
        return ACTIVATION_FUNCTIONS[self.act_fn_name]

    def hook_pre(self, layer: int) -> str:
        """Name of layer ``layer``'s pre-activation hook (the gate in a gated MLP)."""
        return f"blocks.{layer}.mlp.hook_pre"

    def hook_pre_linear(self, layer: int) -> str:
        """Name of layer ``layer``'s up-projection hook; a :class:`LapeError` if not gated."""
        if not self.gated:
            raise LapeError(
                f"model {self.model_name!r} has a non-gated MLP: it has no hook_pre_linear"
            )
        return f"blocks.{layer}.mlp.hook_pre_linear"

    def hook_post(self, layer: int) -> str:
        """Name of layer ``layer``'s post-activation hook (the down projection's input)."""
        return f"blocks.{layer}.mlp.hook_post"

    @staticmethod
    def hook_resid_pre(layer: int | str) -> str:
        """Name of the residual stream entering block ``layer`` (``blocks.{layer}.hook_resid_pre``).

        A static method: DiffMean hooks are built without a model at hand, as
        ``ModelAdapter.hook_resid_pre(layer)``. A placeholder such as ``"{l}"`` for ``layer``
        gives the name pattern (for metadata and messages).

        Example:
            >>> ModelAdapter.hook_resid_pre(3)
            'blocks.3.hook_resid_pre'
        """
        return f"blocks.{layer}.hook_resid_pre"

    def hook_patterns(self) -> dict[str, str]:
        """The MLP hook names with a ``{layer}`` placeholder, by kind (for metadata)."""
        kinds = ["pre", "pre_linear", "post"] if self.gated else ["pre", "post"]
        return {kind: f"blocks.{{layer}}.mlp.hook_{kind}" for kind in kinds}

    def hook_names(self) -> dict[str, list[str]]:
        """All MLP hook names used by tl_lape, by kind (``pre``, ``pre_linear``, ``post``)."""
        layers = range(self.n_layers)
        names = {
            "pre": [self.hook_pre(layer) for layer in layers],
            "post": [self.hook_post(layer) for layer in layers],
        }
        if self.gated:
            names["pre_linear"] = [self.hook_pre_linear(layer) for layer in layers]
        return names

    def hook_final_residual(self) -> str:
        """Name of the hook whose output the unembedding reads: the final norm's output.

        ``ln_final.hook_out`` on a ``TransformerBridge``, ``ln_final.hook_normalized`` on a
        ``HookedTransformer`` (after the norm's weight and bias, or folded ones), and the last
        block's ``hook_resid_post`` on a model without a final norm. :meth:`unembed` turns it
        into logits.
        """
        hook_dict = _hook_dict(self.model)
        for name in ("ln_final.hook_out", "ln_final.hook_normalized"):
            if name in hook_dict:
                return name
        return f"blocks.{self.n_layers - 1}.hook_resid_post"

    def hooks_after_final_residual(self) -> list[str]:
        """The hook points that fire after :meth:`hook_final_residual` (the unembedding's)."""
        return [
            name
            for name in _hook_dict(self.model)
            if name.startswith("unembed.") or name == "hook_unembed"
        ]

    def neuron_output_weights(self, layer: int, indices: Sequence[int] | Tensor) -> Tensor:
        """The output weights of neurons ``indices`` of ``layer``: rows ``[k, d_model]`` of
        that layer's ``W_out`` (``[d_mlp, d_model]``; what a neuron's activation adds to the
        residual stream), float32 on the CPU.

        Read per layer, ``blocks[layer].mlp.W_out``, which both a ``TransformerBridge`` (a
        property that reorients the Hugging Face ``down_proj`` weight ``[d_model, d_mlp]``)
        and a ``HookedTransformer`` (a parameter) give in TransformerLens' orientation; the
        stacked ``model.W_out`` (every layer copied at once on a bridge) is the fallback.

        Example:
            >>> adapt(model).neuron_output_weights(1, [5, 7]).shape
            torch.Size([2, 32])
        """
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        try:
            w_out = getattr(self.model.blocks[layer].mlp, "W_out", None)
            if w_out is None:
                w_out = self.model.W_out[layer]
        except (AttributeError, NotImplementedError, IndexError, TypeError) as err:
            raise LapeError(
                f"model {self.model_name!r} exposes no MLP output weight W_out for layer "
                f"{layer} ({err}); reading a neuron's output direction needs TransformerLens' "
                "blocks[l].mlp.W_out or the stacked model.W_out"
            ) from err
        if tuple(w_out.shape[:1]) != (self.d_mlp,):
            raise LapeError(
                f"W_out of layer {layer} of model {self.model_name!r} has shape "
                f"{tuple(w_out.shape)}, expected ({self.d_mlp}, d_model); tl_lape cannot read "
                "this MLP's output weights"
            )
        with torch.inference_mode():
            return w_out.detach()[idx.to(w_out.device)].to(torch.float32).cpu()

    def logit_weights(self, layer: int, indices: Sequence[int] | Tensor) -> Tensor:
        """The direct effect on the logits of neurons ``indices`` of ``layer``:
        ``W_out[layer, i] @ W_U``, ``[k, d_vocab]``, float32 on the CPU (without the final
        norm's scale, which depends on the input).

        Example:
            >>> adapt(model).logit_weights(0, [1]).shape
            torch.Size([1, 320])
        """
        rows = self.neuron_output_weights(layer, indices)  # k d_model
        try:
            w_u = self.model.W_U  # d_model d_vocab
        except (AttributeError, NotImplementedError) as err:
            raise LapeError(
                f"model {self.model_name!r} exposes no unembedding W_U ({err}); a neuron's "
                "promoted tokens need TransformerLens' model.W_U"
            ) from err
        with torch.inference_mode():
            w_u = w_u.detach()
            return (rows.to(w_u.device) @ w_u.to(torch.float32)).cpu()  # k d_vocab

    def unembed(self, resid: Tensor) -> Tensor:
        """Logits ``[..., d_vocab]`` of rows ``[..., d_model]`` of :meth:`hook_final_residual`.

        ``resid @ W_U + b_U`` (as ``F.linear``, the kernel of a Hugging Face ``lm_head``), then
        the model's final logit transform: on a ``TransformerBridge`` its architecture adapter's
        ``apply_output_logits_transform`` (Gemma 2's soft cap, Cohere's or Granite's scaling),
        on a ``HookedTransformer`` ``cfg.output_logits_soft_cap`` when positive. Gemma 3 has no
        final soft cap (``final_logit_softcapping`` is None). Only the rows given are computed.
        """
        model = self.model
        w_u = model.W_U  # d_model d_vocab
        b_u = getattr(model, "b_U", None)  # d_vocab or None
        logits = F.linear(resid, w_u.T, b_u)  # ... d_vocab
        transform = getattr(getattr(model, "adapter", None), "apply_output_logits_transform", None)
        if callable(transform):
            return transform(logits)  # type: ignore[no-any-return]
        cap = getattr(getattr(model, "cfg", None), "output_logits_soft_cap", None)
        if isinstance(cap, (int, float)) and cap > 0:
            logits = cap * torch.tanh(logits / cap)
        return logits

    @property
    def device(self) -> torch.device:
        """The device of the model's inputs (its embedding), where token ids must be sent."""
        cfg_device = getattr(getattr(self.model, "cfg", None), "device", None)
        if cfg_device is not None:
            return torch.device(cfg_device)
        for param in self.model.parameters():
            return param.device
        return torch.device("cpu")

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer; a :class:`LapeError` if it has none."""
        tok = getattr(self.model, "tokenizer", None)
        if tok is None:
            raise LapeError(
                f"model {self.model_name!r} has no tokenizer; pass token ids (a 1-D LongTensor "
                "per language) instead of text"
            )
        return tok

    @property
    def bos_token_id(self) -> int | None:
        """The tokenizer's BOS id (falling back to EOS, as TransformerLens does), or None."""
        tok = getattr(self.model, "tokenizer", None)
        if tok is None:
            return None
        bos = getattr(tok, "bos_token_id", None)
        return bos if bos is not None else getattr(tok, "eos_token_id", None)

    @property
    def eos_token_id(self) -> int | None:
        """The tokenizer's EOS id, or None."""
        tok = getattr(self.model, "tokenizer", None)
        return None if tok is None else getattr(tok, "eos_token_id", None)

    @property
    def n_ctx(self) -> int | None:
        """The model's context length, if it records one."""
        n_ctx = getattr(getattr(self.model, "cfg", None), "n_ctx", None)
        return int(n_ctx) if n_ctx is not None else None

    def check_token_ids(self, ids: Tensor, where: str) -> None:
        """Refuse token ids outside the model's vocabulary (an embedding would raise a raw
        ``IndexError``), naming ``where`` and the range found.

        Example:
            >>> adapt(model).check_token_ids(torch.tensor([0, 1]), "windows")  # doctest: +SKIP
        """
        d_vocab = getattr(getattr(self.model, "cfg", None), "d_vocab", None)
        if not isinstance(ids, Tensor) or ids.numel() == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or (isinstance(d_vocab, int) and hi >= d_vocab):
            raise LapeError(
                f"{where} holds token ids in [{lo}, {hi}], outside the vocabulary [0, {d_vocab}) "
                f"of {self.model_name!r}; were they made with another tokenizer?"
            )

    def encode(self, text: str, *, prepend_bos: bool = False) -> Int[Tensor, " pos"]:
        """Token ids of ``text`` (on the CPU), with no special tokens unless ``prepend_bos``.

        Unlike ``model.to_tokens`` this never truncates to the context length, so it can
        tokenize whole documents for packing into windows.
        """
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if prepend_bos:
            bos = self.bos_token_id
            if bos is None:
                raise LapeError(
                    f"prepend_bos=True but the tokenizer of {self.model_name!r} has no BOS or "
                    "EOS token; pass prepend_bos=False"
                )
            ids = [bos, *ids]
        return torch.tensor(ids, dtype=torch.long)

    def check_hooks_exist(self) -> None:
        """Raise a :class:`LapeError` naming the first MLP hook the model lacks."""
        hook_dict = _hook_dict(self.model)
        for kind, names in self.hook_names().items():
            for name in names:
                if name not in hook_dict:
                    raise LapeError(
                        f"model {self.model_name!r} has no hook point {name!r} ({kind}); "
                        "tl_lape needs blocks.{l}.mlp.hook_pre and hook_post on every layer "
                        "(a dense MLP, not a mixture of experts)"
                    )


_ADAPTERS: "weakref.WeakKeyDictionary[Any, ModelAdapter]" = weakref.WeakKeyDictionary()


def _hook_dict(model: Any) -> dict[str, Any]:
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is None or not callable(getattr(model, "run_with_hooks", None)):
        raise LapeError(
            f"expected a TransformerLens model (a TransformerBridge or HookedTransformer, with "
            f"run_with_hooks and hook_dict), got {type(model).__name__}"
        )
    return dict(hook_dict)


def _configured_activation(model: Any) -> str | None:
    """The activation name the model's configuration gives, if any (HF config first)."""
    hf_model = getattr(model, "original_model", None)
    hf_config = getattr(hf_model, "config", None)
    if hf_config is not None:
        for attr in ("hidden_activation", "activation_function", "hidden_act"):
            name = getattr(hf_config, attr, None)
            if isinstance(name, str):
                return name
        model_type = getattr(hf_config, "model_type", None)
        if model_type in _MODEL_TYPE_ACT:
            return _MODEL_TYPE_ACT[model_type]
    name = getattr(getattr(model, "cfg", None), "act_fn", None)
    return name if isinstance(name, str) else None


def adapt(model: Any, *, validate: bool = True) -> ModelAdapter:
    """Describe ``model``'s MLP neurons for tl_lape, checking them with one small forward pass.

    Args:
        model: A TransformerLens ``TransformerBridge`` or ``HookedTransformer`` (anything with
            ``run_with_hooks``, ``hooks``, ``hook_dict`` and ``blocks.{l}.mlp`` hook points).
        validate: Run a forward pass of a few tokens that checks every MLP hook fires with width
            ``d_mlp`` and identifies the activation function. The result is cached per model.

    Returns:
        A :class:`ModelAdapter`.

    Raises:
        LapeError: If the model is not a TransformerLens model, lacks an MLP hook, has hooks of
            the wrong width or an activation function tl_lape cannot reproduce.

    Example:
        >>> adapter = adapt(model)
        >>> adapter.n_layers, adapter.d_mlp, adapter.gated, adapter.act_fn_name
        (2, 64, True, 'silu')
    """
    cached = _ADAPTERS.get(model)
    if cached is not None and (cached.validated or not validate):
        return cached
    hook_dict = _hook_dict(model)
    cfg = getattr(model, "cfg", None)
    model_name = str(getattr(cfg, "model_name", None) or type(model).__name__)
    n_layers = getattr(cfg, "n_layers", None)
    if n_layers is None:
        n_layers = 0
        while f"blocks.{n_layers}.mlp.hook_pre" in hook_dict:
            n_layers += 1
    n_layers = int(n_layers)
    if n_layers < 1 or "blocks.0.mlp.hook_pre" not in hook_dict:
        raise LapeError(
            f"model {model_name!r} has no MLP hook point 'blocks.0.mlp.hook_pre'; tl_lape needs "
            "a model whose blocks have a dense MLP with hook_pre and hook_post"
        )
    gated = "blocks.0.mlp.hook_pre_linear" in hook_dict
    d_mlp = getattr(cfg, "d_mlp", None)
    configured = _configured_activation(model)
    act_fn_name = resolve_activation(configured)[0] if configured is not None else "silu"
    adapter = ModelAdapter(
        model=model,
        n_layers=n_layers,
        d_mlp=int(d_mlp) if d_mlp is not None else -1,
        gated=gated,
        act_fn_name=act_fn_name,
        model_name=model_name,
    )
    adapter.check_hooks_exist()
    if validate:
        adapter = _validate(adapter, configured)
    elif adapter.d_mlp < 1:
        raise LapeError(f"model {model_name!r} records no d_mlp; call adapt(model, validate=True)")
    _ADAPTERS[model] = adapter
    return adapter


def _validation_tokens(model: Any) -> Tensor:
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    n = 8
    ids = torch.arange(3, 3 + n, dtype=torch.long)
    if d_vocab is not None:
        ids = ids % int(d_vocab)
    return ids.unsqueeze(0)


def _validate(adapter: ModelAdapter, configured: str | None) -> ModelAdapter:
    """Run a few tokens through the model; check widths; identify the activation function."""
    model = adapter.model
    names = adapter.hook_names()
    captured: dict[str, Tensor] = {}

    def capture(act: Tensor, *, hook: Any, name: str) -> None:
        captured[name] = act.detach()

    fwd_hooks = [
        (name, _bind(capture, name=name)) for kind_names in names.values() for name in kind_names
    ]
    tokens = _validation_tokens(model).to(adapter.device)
    with torch.inference_mode():
        model.run_with_hooks(tokens, fwd_hooks=fwd_hooks, return_type=None)
    d_mlp = adapter.d_mlp
    for kind_names in names.values():
        for name in kind_names:
            if name not in captured:
                raise LapeError(
                    f"hook point {name!r} of model {adapter.model_name!r} did not fire in a "
                    "forward pass; tl_lape cannot read that MLP (for a TransformerBridge, check "
                    "that the architecture's MLP hooks are supported)"
                )
            width = captured[name].shape[-1]
            if d_mlp < 1:
                d_mlp = int(width)
            if width != d_mlp:
                raise LapeError(
                    f"hook {name!r} of model {adapter.model_name!r} has last dimension {width}, "
                    f"expected d_mlp={d_mlp}; tl_lape only supports MLPs whose hook_pre, "
                    "hook_pre_linear and hook_post are d_mlp wide"
                )
    act_fn_name = _identify_activation(adapter, captured, configured)
    return ModelAdapter(
        model=model,
        n_layers=adapter.n_layers,
        d_mlp=d_mlp,
        gated=adapter.gated,
        act_fn_name=act_fn_name,
        model_name=adapter.model_name,
        validated=True,
    )


def _bind(fn: Callable[..., None], **bound: Any) -> Callable[..., None]:
    def hook_fn(act: Tensor, hook: Any) -> None:
        fn(act, hook=hook, **bound)

    return hook_fn


def _identify_activation(
    adapter: ModelAdapter, captured: dict[str, Tensor], configured: str | None
) -> str:
    """The first activation (configured one first) that reproduces hook_post on every layer."""
    candidates = [adapter.act_fn_name] + [
        name for name in ACTIVATION_FUNCTIONS if name != adapter.act_fn_name
    ]
    errors: dict[str, float] = {}
    for name in candidates:
        worst = max(
            _reproduction_error(adapter, captured, layer, ACTIVATION_FUNCTIONS[name])
            for layer in range(adapter.n_layers)
        )
        errors[name] = worst
        if worst <= 1.0:
            if name != adapter.act_fn_name:
                logger.info(
                    "model %r: configured activation %r does not reproduce hook_post; "
                    "using %r, which does",
                    adapter.model_name,
                    configured,
                    name,
                )
            return name
    raise LapeError(
        f"no supported activation function reproduces hook_post from hook_pre for model "
        f"{adapter.model_name!r} (configured: {configured!r}; relative error per candidate: "
        f"{ {k: round(v, 3) for k, v in errors.items()} }); tl_lape supports "
        f"{sorted(ACTIVATION_FUNCTIONS)} applied elementwise between hook_pre and hook_post"
    )


def _reproduction_error(
    adapter: ModelAdapter, captured: dict[str, Tensor], layer: int, act_fn: ActFn
) -> float:
    """Max abs error of the reconstruction of hook_post, in units of the dtype's tolerance."""
    pre = captured[adapter.hook_pre(layer)]
    post = captured[adapter.hook_post(layer)]
    expected = act_fn(pre)
    if adapter.gated:
        expected = expected * captured[adapter.hook_pre_linear(layer)]
    eps = torch.finfo(post.dtype).eps if post.is_floating_point() else 1.0
    # Tolerance: a few ulps of the largest value (the MLP may fuse or reorder operations).
    scale = float(post.abs().max().item()) if post.numel() else 1.0
    tol = 64 * eps * max(scale, 1.0)
    err = float((expected.to(post.dtype) - post).abs().max().item()) if post.numel() else 0.0
    return err / tol if tol > 0 else math.inf
