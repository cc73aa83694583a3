"""A reference count of MLP firing with plain PyTorch hooks on a Hugging Face model.

No TransformerLens involved: a forward hook on every layer's ``mlp.gate_proj`` (Llama, Gemma,
Qwen, Mistral: the gate projection, whose output is ``hook_pre``) counts the positions where it
is above zero. tl_lape's counts through ``TransformerBridge`` or ``HookedTransformer`` must
equal these on the same windows.
"""

from typing import Any

import torch
from torch import Tensor


def hf_firing_counts(
    hf: Any, windows: Tensor, *, batch_size: int = 4, full_forward: bool = False
) -> Tensor:
    """``[n_layers, d_mlp]`` int64: on how many positions of ``windows`` each neuron fires.

    With ``full_forward`` the model runs to logits (as ports of the paper's code do), else
    only its body.
    """
    layers = hf.model.layers
    counts: list[Tensor | None] = [None] * len(layers)

    def make_hook(layer: int) -> Any:
        def hook(module: Any, inputs: Any, output: Tensor) -> None:
            fired = (output > 0).sum(dim=(0, 1))  # d_mlp
            counts[layer] = fired if counts[layer] is None else counts[layer] + fired

        return hook

    handles = [
        block.mlp.gate_proj.register_forward_hook(make_hook(i)) for i, block in enumerate(layers)
    ]
    try:
        with torch.inference_mode():
            for start in range(0, windows.shape[0], batch_size):
                batch = windows[start : start + batch_size]  # batch pos
                run = hf if full_forward else hf.model
                run(input_ids=batch, attention_mask=torch.ones_like(batch))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([c.to(torch.int64).cpu() for c in counts])  # n_layers d_mlp
