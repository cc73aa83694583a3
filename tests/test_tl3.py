"""The TransformerLens 2.x/3.x ``HookedTransformer`` path (runs in a transformer-lens 3.9 env).

TransformerLens 4 removed ``HookedTransformer``; there this module is skipped. Run it with
``make test-tl3`` (a separate virtual environment with transformer-lens 3.9).
"""

import copy

import pytest
import torch

try:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:
    pytest.skip(
        "needs TransformerLens 2.x/3.x (HookedTransformer was removed in 4.0)",
        allow_module_level=True,
    )

from tl_lape._adapter import adapt
from tl_lape.collect import collect_activation_stats
from tl_lape.hooks import deactivation_hooks, steering_hooks
from tl_lape.neurons import LanguageNeurons
from tl_lape.stats import ActivationStats

pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")

N_LAYERS, D_MLP, D_VOCAB = 2, 64, 50
CONFIGS = {
    "gated-silu": {"act_fn": "silu", "gated_mlp": True, "normalization_type": "RMS"},
    "gelu": {"act_fn": "gelu", "gated_mlp": False, "normalization_type": "LN"},
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=D_MLP,
        d_vocab=D_VOCAB,
        n_ctx=64,
        seed=0,
        device="cpu",
        initializer_range=0.2,
        **CONFIGS[request.param],
    )
    return HookedTransformer(cfg).eval()


def token_ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, D_VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def test_adapter_reads_hooked_transformer(model):
    adapter = adapt(model)
    assert (adapter.n_layers, adapter.d_mlp) == (N_LAYERS, D_MLP)
    assert adapter.gated is model.cfg.gated_mlp
    assert adapter.act_fn_name == model.cfg.act_fn


def test_counts_equal_hand_computation(model):
    corpus = {"en": token_ids(36, 0), "fr": token_ids(16, 1)}
    stats = collect_activation_stats(model, corpus, seq_len=8, batch_size=3, progress=False)
    assert stats.n_tokens.tolist() == [32, 16]
    act_fn = torch.nn.functional.silu if model.cfg.gated_mlp else torch.nn.functional.gelu
    for k, ids in enumerate(corpus.values()):
        windows = ids[: ids.numel() // 8 * 8].reshape(-1, 8)
        _, cache = model.run_with_cache(windows, names_filter=lambda n: "hook_resid_mid" in n)
        for layer, block in enumerate(model.blocks):
            x = block.ln2(cache[f"blocks.{layer}.hook_resid_mid"])  # batch pos d_model
            w = block.mlp.W_gate if model.cfg.gated_mlp else block.mlp.W_in  # d_model d_mlp
            pre = x @ w + (0 if model.cfg.gated_mlp else block.mlp.b_in)  # batch pos d_mlp
            assert torch.equal(stats.active_counts[layer, :, k], (pre > 0).sum(dim=(0, 1)))
            torch.testing.assert_close(
                stats.activation_sums[layer, :, k],
                act_fn(pre).double().sum(dim=(0, 1)),
                rtol=1e-5,
                atol=1e-5,
            )


def test_deactivation_equals_zeroing_w_out(model):
    gen = torch.Generator().manual_seed(2)
    neurons = LanguageNeurons.from_indices(
        {"en": {layer: torch.randperm(D_MLP, generator=gen)[:8] for layer in range(N_LAYERS)}},
        n_layers=N_LAYERS,
        d_mlp=D_MLP,
    )
    tokens = token_ids(20, 3).reshape(2, 10)
    hooked = model.run_with_hooks(tokens, fwd_hooks=deactivation_hooks(neurons, "en", model=model))
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for layer, block in enumerate(edited.blocks):
            block.mlp.W_out[neurons.indices("en", layer)] = 0  # d_mlp d_model
    torch.testing.assert_close(hooked, edited(tokens), rtol=1e-5, atol=1e-5)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_replace_steering_writes_mean_times_pre_linear(model):
    neurons = LanguageNeurons.from_indices(
        {"en": {0: [1, 5, 9], 1: [2]}, "fr": {1: [3, 4]}}, n_layers=N_LAYERS, d_mlp=D_MLP
    )
    sums = torch.randn(N_LAYERS, D_MLP, 2, generator=torch.Generator().manual_seed(4)).double()
    stats = ActivationStats.from_counts(
        torch.zeros(N_LAYERS, D_MLP, 2, dtype=torch.long), [10, 10], ["en", "fr"], sums
    )
    tokens = token_ids(10, 5).reshape(1, 10)
    seen = {}

    def record(act, *, hook):
        seen[hook.name] = act.detach().clone()

    names = ["blocks.0.mlp.hook_post"] + (
        ["blocks.0.mlp.hook_pre_linear"] if model.cfg.gated_mlp else []
    )
    hooks = steering_hooks(neurons, stats, "en", model=model) + [(n, record) for n in names]
    model.run_with_hooks(tokens, fwd_hooks=hooks)
    idx = neurons.indices("en", 0)
    mean = stats.mean_activations[0, idx, 0].float()
    expected = (
        mean * seen["blocks.0.mlp.hook_pre_linear"][..., idx] if model.cfg.gated_mlp else mean
    )
    torch.testing.assert_close(seen["blocks.0.mlp.hook_post"][..., idx], expected.expand(1, 10, 3))
