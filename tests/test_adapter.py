"""The model adapter: layout, activation function and hook validation of TransformerLens models."""

import pytest
import torch
from tiny_models import ARCHITECTURES, build_toy_model

from tl_lape import LapeError
from tl_lape._adapter import adapt, resolve_activation

# The activation each tiny architecture's HF implementation applies (BLOOM: a tanh GELU, though
# its config names none and TransformerLens 4.3 records "relu").
EXPECTED_ACT = {
    "llama": "silu",
    "qwen2": "silu",
    "gemma": "gelu_tanh",
    "gpt2": "gelu_tanh",
    "bloom": "gelu_tanh",
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_adapter_describes_architecture(tiny_model, arch):
    tm = tiny_model(arch)
    adapter = adapt(tm.bridge)
    assert (adapter.n_layers, adapter.d_mlp) == (2, 64)
    assert adapter.gated is tm.gated
    assert adapter.act_fn_name == EXPECTED_ACT[arch]
    assert adapter.validated
    assert adapt(tm.bridge) is adapter  # cached per model
    for names in adapter.hook_names().values():
        assert len(names) == 2
        assert all(name in tm.bridge.hook_dict for name in names)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_activation_function_reproduces_hook_post(tiny_model, arch):
    tm = tiny_model(arch)
    adapter = adapt(tm.bridge)
    tokens = tm.bridge.to_tokens(["The cat sat on the mat."])
    _, cache = tm.bridge.run_with_cache(tokens, names_filter=lambda n: ".mlp.hook_" in n)
    for layer in range(adapter.n_layers):
        expected = adapter.act_fn(cache[adapter.hook_pre(layer)])
        if adapter.gated:
            expected = expected * cache[adapter.hook_pre_linear(layer)]
        torch.testing.assert_close(expected, cache[adapter.hook_post(layer)])


def test_encode_and_tokens(tiny_model):
    adapter = adapt(tiny_model("llama").bridge)
    plain = adapter.encode("The cat sat.")
    with_bos = adapter.encode("The cat sat.", prepend_bos=True)
    assert plain.dtype == torch.long and plain.ndim == 1
    assert with_bos[0].item() == adapter.bos_token_id
    assert torch.equal(with_bos[1:], plain)
    # encode agrees with the model's own batch tokenizer (the padded to_tokens)
    batch = adapter.model.to_tokens(["The cat sat.", "A dog"], prepend_bos=False)
    assert batch.shape[0] == 2
    assert torch.equal(batch[0, : plain.numel()], plain)


def test_resolve_activation_aliases():
    assert resolve_activation("gelu_new")[0] == "gelu_tanh"
    assert resolve_activation("swish")[0] == "silu"
    with pytest.raises(LapeError, match="unsupported MLP activation function 'softsign'"):
        resolve_activation("softsign")


def test_toy_hooked_root_module_is_supported():
    adapter = adapt(build_toy_model(n_layers=2, d_mlp=8))
    assert (adapter.n_layers, adapter.d_mlp, adapter.gated) == (2, 8, False)
    assert adapter.act_fn_name == "relu"


def test_not_a_transformer_lens_model():
    with pytest.raises(LapeError, match=r"expected a TransformerLens model.*got Linear"):
        adapt(torch.nn.Linear(2, 2))


def test_model_without_mlp_hooks():
    with pytest.raises(LapeError, match=r"no MLP hook point 'blocks\.0\.mlp\.hook_pre'"):
        adapt(build_toy_model(with_mlp_hooks=False))


def test_hook_of_wrong_width():
    model = build_toy_model(d_mlp=8, hook_widths={"pre": 8, "post": 6})
    with pytest.raises(
        LapeError, match=r"'blocks\.0\.mlp\.hook_post'.*last dimension 6, expected d_mlp=8"
    ):
        adapt(model)


def test_unsupported_activation_function():
    with pytest.raises(LapeError, match="no supported activation function reproduces hook_post"):
        adapt(build_toy_model(act="tanh"))
