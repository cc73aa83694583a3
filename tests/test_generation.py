"""Hooked greedy generation: with and without a KV cache it must give the same tokens.

This guards a known regression: transformers 5.24 breaks ``TransformerBridge.generate`` with its
default KV cache (5.20-5.23 are fine), and it checks the ``positions="new"``/``"prompt"``
semantics of the intervention hooks across decoding steps.
"""

import pytest
import torch

from tl_lape.hooks import deactivation_hooks, steering_hooks
from tl_lape.neurons import LanguageNeurons
from tl_lape.stats import ActivationStats

PROMPTS = ["The cat sat", "Le chat dort sur le tapis"]
MAX_NEW = 6


@pytest.fixture(scope="module")
def setup(tiny_model):
    tm = tiny_model("llama")
    gen = torch.Generator().manual_seed(1)
    neurons = LanguageNeurons.from_indices(
        {
            lang: {layer: torch.randperm(64, generator=gen)[:16] for layer in range(2)}
            for lang in ("en", "fr")
        },
        n_layers=2,
        d_mlp=64,
    )
    sums = torch.randn(2, 64, 2, generator=gen, dtype=torch.float64) * 40
    stats = ActivationStats.from_counts(
        torch.zeros(2, 64, 2, dtype=torch.long), [20, 20], ["en", "fr"], activation_sums=sums
    )
    return tm.bridge, neurons, stats


def make_hooks(kind, bridge, neurons, stats):
    if kind == "none":
        return []
    if kind == "deactivate":
        return deactivation_hooks(neurons, ["en", "fr"])
    if kind == "steer-new":
        return steering_hooks(neurons, stats, "fr", model=bridge, positions="new")
    return steering_hooks(
        neurons, stats, "fr", "add", deactivate="en", model=bridge, positions="prompt"
    )


def generate(bridge, prompts, hooks_factory, *, cache):
    # Fresh hooks per call: "new"/"prompt" hooks track one generation.
    with bridge.hooks(fwd_hooks=hooks_factory()):
        return bridge.generate(
            prompts,
            max_new_tokens=MAX_NEW,
            do_sample=False,
            use_past_kv_cache=cache,
            stop_at_eos=False,
            verbose=False,
            return_type="tokens",
        )


@pytest.mark.parametrize("kind", ["none", "deactivate", "steer-new", "steer-add-prompt"])
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["single", "left-padded-batch"])
def test_cached_and_uncached_generation_agree(setup, kind, prompts):
    bridge, neurons, stats = setup
    factory = lambda: make_hooks(kind, bridge, neurons, stats)  # noqa: E731
    cached = generate(bridge, prompts, factory, cache=True)
    uncached = generate(bridge, prompts, factory, cache=False)
    assert cached.shape[1] == uncached.shape[1] >= MAX_NEW
    assert torch.equal(cached, uncached)
    assert all(not hp.fwd_hooks for hp in bridge.hook_dict.values())


def test_new_positions_equal_an_explicit_greedy_loop(setup):
    bridge, neurons, stats = setup
    prompt = bridge.to_tokens(PROMPTS[1])  # 1 pos
    n_prompt = prompt.shape[1]
    generated = generate(
        bridge,
        prompt,
        lambda: steering_hooks(neurons, stats, "fr", model=bridge, positions="new"),
        cache=True,
    )
    # Oracle: rerun the whole sequence each step, steering positions >= n_prompt explicitly.
    tokens = prompt
    for _ in range(MAX_NEW):
        hooks = steering_hooks(neurons, stats, "fr", model=bridge, positions=slice(n_prompt, None))
        logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)
    # The first new token comes from the unsteered prompt pass.
    plain = bridge(prompt)[:, -1].argmax(-1)
    assert generated[0, n_prompt] == plain[0]
