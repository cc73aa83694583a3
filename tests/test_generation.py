"""Hooked greedy generation: with and without a KV cache it must give the same tokens.

This guards a known regression: transformers 5.24 breaks ``TransformerBridge.generate`` with its
default KV cache (5.20-5.23 are fine), and it checks the ``positions="new"``/``"prompt"``
semantics of the intervention hooks across decoding steps.
"""

import pytest
import torch

from tl_lape._adapter import adapt
from tl_lape.interventions.generation import generate_with_hook_sets, generate_with_hooks
from tl_lape.interventions.hooks import deactivation_hooks, steering_hooks
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
        neurons, stats, "fr", mode="add", deactivate=["en"], model=bridge, positions="prompt"
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


def _pass_count(bridge, prompt: str, hooks) -> int:
    """How many positions the hooks see when generating from ``prompt`` (KV cache)."""
    seen: list[int] = []

    def count(act, *, hook):
        seen.append(act.shape[1])

    fwd_hooks = [*hooks, ("blocks.0.mlp.hook_post", count)]
    generate_with_hooks(bridge, [prompt], fwd_hooks=fwd_hooks, max_new_tokens=MAX_NEW)
    return sum(seen)


def _prompt_of_length(bridge, n: int) -> str:
    text = "Le chat dort sur le tapis pendant que la pluie tombe."
    for end in range(1, len(text) + 1):
        if adapt(bridge).encode(text[:end], prepend_bos=True).numel() == n:
            return text[:end]
    raise AssertionError(f"no prefix of {text!r} encodes to {n} tokens")


@pytest.mark.parametrize("positions", ["new", "prompt"])
@pytest.mark.parametrize("second", ["one-token", "one-longer"])
def test_reused_hooks_start_afresh_for_every_prompt_group(setup, positions, second):
    """Bug 2: a later group whose prompt is one token long, or one position longer than the
    sequence so far, was read as a continuation of the previous group and steered wrongly."""
    bridge, neurons, stats = setup

    def make():
        return steering_hooks(
            neurons, stats, "fr", mode="add", strength=8.0, model=bridge, positions=positions
        )

    first = "The cat"
    if second == "one-token":
        other = ""  # BOS alone: a prompt of one position
        assert adapt(bridge).encode(other, prepend_bos=True).numel() == 1
    else:
        other = _prompt_of_length(bridge, _pass_count(bridge, first, make()) + 1)

    prompts = [first, other]
    hooks = make()

    def run(prompts, hooks):
        """Generated tokens, and the steered activations of every forward pass."""
        seen: list[torch.Tensor] = []

        def record(act, *, hook):
            seen.append(act.clone())

        _, tokens = generate_with_hooks(
            bridge,
            prompts,
            fwd_hooks=[*hooks, ("blocks.1.mlp.hook_post", record)],
            batch_size=1,
            max_new_tokens=MAX_NEW,
            return_tokens=True,
        )
        return [t.tolist() for t in tokens], seen

    together, acts = run(prompts, hooks)
    alone = [run([p], make()) for p in prompts]
    assert together == alone[0][0] + alone[1][0]
    expected = alone[0][1] + alone[1][1]
    assert len(acts) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(acts, expected, strict=True))
    # The same hooks again, in another call: they start afresh there too.
    again, _ = run(prompts[::-1], hooks)
    assert again == alone[1][0] + alone[0][0]
    # Hook sets generated together are reset through the row-block wrappers as well.
    sets = [make(), make()]
    generate_with_hook_sets(bridge, [first], sets, max_new_tokens=MAX_NEW)
    (_, fr_a), (_, fr_b) = generate_with_hook_sets(bridge, [other], sets, max_new_tokens=MAX_NEW)
    assert [fr_a[0].tolist()] == [fr_b[0].tolist()] == alone[1][0]
    assert all(not hp.fwd_hooks for hp in bridge.hook_dict.values())
