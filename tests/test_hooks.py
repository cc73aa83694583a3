"""Intervention hooks against the same interventions done by hand on the Hugging Face modules."""

import dataclasses
import types
import weakref
from collections.abc import Callable

import pytest
import torch
from tiny_models import ARCHITECTURES, hf_down_projection, hf_mlp_modules

from tl_lape import LapeError
from tl_lape.interventions.hooks import deactivation_hooks, patching_hooks, steering_hooks
from tl_lape.neurons import LanguageNeurons
from tl_lape.stats import ActivationStats

N_LAYERS, D_MLP = 2, 64
PROMPTS = ["The cat sat on the warm mat.", "Le chat dort sur le tapis."]


def random_neurons(seed: int = 0, per_layer: int = 6, languages=("en", "fr", "zh")):
    gen = torch.Generator().manual_seed(seed)
    indices = {
        lang: {layer: torch.randperm(D_MLP, generator=gen)[:per_layer] for layer in range(N_LAYERS)}
        for lang in languages
    }
    return LanguageNeurons.from_indices(indices, n_layers=N_LAYERS, d_mlp=D_MLP)


def random_stats(seed: int = 0, languages=("en", "fr", "zh")) -> ActivationStats:
    gen = torch.Generator().manual_seed(seed)
    n = len(languages)
    counts = torch.randint(0, 50, (N_LAYERS, D_MLP, n), generator=gen)
    sums = torch.randn(N_LAYERS, D_MLP, n, generator=gen, dtype=torch.float64) * 30
    return ActivationStats.from_counts(counts, [50] * n, list(languages), activation_sums=sums)


def tokens_for(bridge) -> torch.Tensor:
    # Same-length prompts without padding, so the HF model needs no attention mask.
    return torch.stack([bridge.to_tokens(p)[0, :8] for p in PROMPTS])


def hf_logits(hf, tokens, edit: Callable | None = None) -> torch.Tensor:
    """HF logits; ``edit(layer, down_input, up_output) -> new down_input`` if given."""
    handles = []
    ups: dict[int, torch.Tensor] = {}
    if edit is not None:
        for layer, mlp in enumerate(hf_mlp_modules(hf)):
            if hasattr(mlp, "up_proj"):
                handles.append(
                    mlp.up_proj.register_forward_hook(
                        lambda _m, _i, out, layer=layer: ups.__setitem__(layer, out)
                    )
                )
            handles.append(
                hf_down_projection(mlp).register_forward_pre_hook(
                    lambda _m, args, layer=layer: (edit(layer, args[0].clone(), ups.get(layer)),)
                )
            )
    try:
        with torch.no_grad():
            return hf(input_ids=tokens, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


def assert_no_hooks_attached(bridge) -> None:
    assert all(not hp.fwd_hooks for hp in bridge.hook_dict.values())


@pytest.fixture(scope="module")
def hf_copies(tiny_model):
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = tiny_model(arch).hf_model()
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_deactivation_equals_zeroing_down_projection(tiny_model, hf_copies, arch):
    tm = tiny_model(arch)
    neurons = random_neurons()
    tokens = tokens_for(tm.bridge)
    hooked = tm.bridge.run_with_hooks(tokens, fwd_hooks=deactivation_hooks(neurons, ["en", "zh"]))
    assert_no_hooks_attached(tm.bridge)

    hf = tm.hf_model()  # a private copy: its weights get edited
    torch.testing.assert_close(hf_logits(hf, tokens), tm.bridge(tokens), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for layer, mlp in enumerate(hf_mlp_modules(hf)):
            idx = torch.cat([neurons.indices("en", layer), neurons.indices("zh", layer)])
            down = hf_down_projection(mlp)
            if isinstance(down, torch.nn.Linear):
                down.weight[:, idx] = 0  # d_model d_mlp
            else:  # GPT-2's Conv1D stores the transpose
                down.weight[idx, :] = 0  # d_mlp d_model
    torch.testing.assert_close(hooked, hf_logits(hf, tokens), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hooked, tm.bridge(tokens), atol=1e-4)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_replace_steering_equals_hand_computation(tiny_model, hf_copies, arch):
    tm = tiny_model(arch)
    neurons, stats = random_neurons(), random_stats()
    tokens = tokens_for(tm.bridge)
    hooks = steering_hooks(neurons, stats, "fr", mode="replace", model=tm.bridge)
    hooked = tm.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    means = stats.mean_activations[..., 1].float()

    def edit(layer, x, up):
        idx = neurons.indices("fr", layer)
        x[..., idx] = means[layer, idx] * up[..., idx] if tm.gated else means[layer, idx]
        return x

    torch.testing.assert_close(hooked, hf_logits(hf_copies(arch), tokens, edit))
    assert_no_hooks_attached(tm.bridge)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["add", "scale"])
def test_add_and_scale_steering_equal_hand_computation(tiny_model, hf_copies, arch, mode):
    tm = tiny_model(arch)
    neurons, stats = random_neurons(), random_stats()
    tokens = tokens_for(tm.bridge)
    hooks = steering_hooks(neurons, stats, "zh", mode=mode, strength=2.5, model=tm.bridge)
    hooked = tm.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    means = stats.mean_activations[..., 2].float()

    def edit(layer, x, up):
        idx = neurons.indices("zh", layer)
        if mode == "scale":
            x[..., idx] = 2.5 * x[..., idx]
        else:
            x[..., idx] += 2.5 * means[layer, idx] * (up[..., idx] if tm.gated else 1.0)
        return x

    torch.testing.assert_close(hooked, hf_logits(hf_copies(arch), tokens, edit))


def test_strength_that_overflows_is_refused_never_nan_logits(tiny_model):
    """add=1e308 times a mean activation is beyond float32: refused when the hooks are built;
    scale=1e39 passes that check (no means involved) but its hook raises on the first
    non-finite activation instead of letting NaN logits through."""
    tm = tiny_model("llama")
    neurons, stats = random_neurons(), random_stats()
    with pytest.raises(LapeError, match=r"strength 1e\+308 times the mean activation"):
        steering_hooks(neurons, stats, "zh", mode="add", strength=1e308, model=tm.bridge)
    hooks = steering_hooks(neurons, stats, "zh", mode="scale", strength=1e39, model=tm.bridge)
    with pytest.raises(LapeError, match=r"produced a non-finite activation in torch.float32"):
        tm.bridge.run_with_hooks(tokens_for(tm.bridge), fwd_hooks=hooks)
    assert_no_hooks_attached(tm.bridge)
    # The largest strengths that pass both checks: the values are finite in the hooks, and the
    # later layers' norms keep the logits finite (nonsense, but never NaN).
    for mode, strength in (("add", 1e38), ("scale", 3e37)):
        hooks = steering_hooks(neurons, stats, "zh", mode=mode, strength=strength, model=tm.bridge)
        logits = tm.bridge.run_with_hooks(tokens_for(tm.bridge), fwd_hooks=hooks)
        assert bool(torch.isfinite(logits).all()), (mode, strength)


def test_steering_with_deactivation_target_wins(tiny_model, hf_copies):
    tm = tiny_model("llama")
    neurons = LanguageNeurons.from_indices(
        {"en": {0: [1, 2, 3], 1: [5]}, "fr": {0: [3, 4], 1: [6]}}, n_layers=N_LAYERS, d_mlp=D_MLP
    )
    stats = random_stats(languages=("en", "fr"))
    tokens = tokens_for(tm.bridge)
    hooks = steering_hooks(neurons, stats, "fr", mode="replace", deactivate=["en"], model=tm.bridge)
    hooked = tm.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    means = stats.mean_activations[..., 1].float()

    def edit(layer, x, up):
        x[..., neurons.indices("en", layer)] = 0
        idx = neurons.indices("fr", layer)  # neuron 3 of layer 0 is steered, not zeroed
        x[..., idx] = means[layer, idx] * up[..., idx]
        return x

    torch.testing.assert_close(hooked, hf_logits(hf_copies("llama"), tokens, edit))


def test_steering_gated_from_stats_metadata(tiny_model):
    tm = tiny_model("llama")
    neurons, plain = random_neurons(), random_stats()
    tokens = tokens_for(tm.bridge)
    with_meta = ActivationStats.from_counts(
        plain.active_counts,
        plain.n_tokens,
        list(plain.languages),
        activation_sums=plain.activation_sums,
        metadata={"gated": True},
    )
    by_model = tm.bridge.run_with_hooks(
        tokens, fwd_hooks=steering_hooks(neurons, plain, "en", model=tm.bridge)
    )
    by_meta = tm.bridge.run_with_hooks(tokens, fwd_hooks=steering_hooks(neurons, with_meta, "en"))
    torch.testing.assert_close(by_model, by_meta)
    with pytest.raises(LapeError, match="cannot tell whether the model's MLP is gated"):
        steering_hooks(neurons, plain, "en")


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_patching_own_activations_changes_nothing(tiny_model, arch):
    tm = tiny_model(arch)
    tokens = tokens_for(tm.bridge)
    logits, cache = tm.bridge.run_with_cache(tokens, names_filter=lambda n: "mlp.hook_post" in n)
    hooks = patching_hooks(random_neurons(), "en", cache, model=tm.bridge)
    assert len(hooks) == N_LAYERS
    torch.testing.assert_close(tm.bridge.run_with_hooks(tokens, fwd_hooks=hooks), logits)


def test_patching_from_another_run_equals_hand_computation(tiny_model, hf_copies):
    tm = tiny_model("qwen2")
    neurons = random_neurons(seed=3)
    tokens = tokens_for(tm.bridge)
    other = tokens.flip(0)  # the other prompt in each row
    _, cache = tm.bridge.run_with_cache(other, names_filter=lambda n: "mlp.hook_post" in n)
    source = {name: cache[name] for name in cache}  # a plain dict works too
    hooked = tm.bridge.run_with_hooks(tokens, fwd_hooks=patching_hooks(neurons, "fr", source))

    def edit(layer, x, up):
        idx = neurons.indices("fr", layer)
        x[..., idx] = source[f"blocks.{layer}.mlp.hook_post"][..., idx]
        return x

    torch.testing.assert_close(hooked, hf_logits(hf_copies("qwen2"), tokens, edit))


@pytest.mark.parametrize(
    ("positions", "chosen"),
    [
        (slice(3, None), [3, 4, 5, 6, 7]),
        (-1, [7]),
        ([2, 5], [2, 5]),
        (torch.tensor([False, True] * 4), [1, 3, 5, 7]),
    ],
)
def test_positions_restrict_deactivation(tiny_model, hf_copies, positions, chosen):
    tm = tiny_model("gemma")
    neurons = random_neurons()
    tokens = tokens_for(tm.bridge)
    hooks = deactivation_hooks(neurons, "en", positions=positions)
    hooked = tm.bridge.run_with_hooks(tokens, fwd_hooks=hooks)

    def edit(layer, x, up):
        idx = neurons.indices("en", layer)
        x[:, torch.tensor(chosen)[:, None], idx[None, :]] = 0
        return x

    torch.testing.assert_close(hooked, hf_logits(hf_copies("gemma"), tokens, edit))
    first = min(chosen)
    torch.testing.assert_close(hooked[:, :first], tm.bridge(tokens)[:, :first])


def test_patching_selected_positions_from_a_shorter_run(tiny_model):
    tm = tiny_model("llama")
    neurons = random_neurons()
    tokens = tokens_for(tm.bridge)
    _, cache = tm.bridge.run_with_cache(tokens, names_filter=lambda n: "mlp.hook_post" in n)
    last_only = {k: cache[k][:, -1:] for k in cache}  # batch 1-position d_mlp
    full = patching_hooks(neurons, "en", cache, positions=-1)
    short = patching_hooks(neurons, "en", last_only, positions=-1)
    torch.testing.assert_close(
        tm.bridge.run_with_hooks(tokens, fwd_hooks=full),
        tm.bridge.run_with_hooks(tokens, fwd_hooks=short),
    )


def test_empty_interventions_change_nothing(tiny_model):
    tm = tiny_model("llama")
    tokens = tokens_for(tm.bridge)
    baseline = tm.bridge(tokens)
    empty = LanguageNeurons.from_indices({"en": {}, "fr": {}}, n_layers=N_LAYERS, d_mlp=D_MLP)
    stats = random_stats(languages=("en", "fr"))
    assert deactivation_hooks(empty, ["en", "fr"]) == []
    assert steering_hooks(empty, stats, "fr", deactivate=["en"], model=tm.bridge) == []
    neurons = random_neurons(languages=("en", "fr"))
    for hooks in (
        steering_hooks(neurons, stats, "fr", mode="scale", strength=1.0, model=tm.bridge),
        steering_hooks(neurons, stats, "fr", mode="add", strength=0.0, model=tm.bridge),
        deactivation_hooks(neurons, "fr", positions=[]),
    ):
        torch.testing.assert_close(tm.bridge.run_with_hooks(tokens, fwd_hooks=hooks), baseline)


def test_hooks_context_manager_and_composition_with_user_hooks(tiny_model):
    tm = tiny_model("bloom")
    neurons = random_neurons()
    tokens = tokens_for(tm.bridge)
    seen: dict[str, torch.Tensor] = {}

    def user_hook(act, *, hook):
        seen["post0"] = act.detach().clone()

    hooks = [*deactivation_hooks(neurons, "fr"), ("blocks.0.mlp.hook_post", user_hook)]
    by_run = tm.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    assert bool((seen["post0"][..., neurons.indices("fr", 0)] == 0).all())
    with tm.bridge.hooks(fwd_hooks=hooks):
        by_context = tm.bridge(tokens)
    assert_no_hooks_attached(tm.bridge)
    torch.testing.assert_close(by_run, by_context)


def test_unknown_language_and_foreign_neuron_sets(tiny_model):
    tm = tiny_model("llama")
    tokens = tokens_for(tm.bridge)
    neurons, stats = random_neurons(), random_stats()
    with pytest.raises(LapeError, match=r"unknown languages \['de'\]; the neuron set has"):
        deactivation_hooks(neurons, ["en", "de"])
    with pytest.raises(LapeError, match=r"unknown target \['de'\]"):
        steering_hooks(neurons, stats, "de", model=tm.bridge)
    with pytest.raises(LapeError, match=r"unknown language \['de'\]"):
        patching_hooks(neurons, "de", {})
    wide = LanguageNeurons.from_indices({"en": {0: [100]}}, n_layers=N_LAYERS, d_mlp=128)
    with pytest.raises(LapeError, match="made for a model with d_mlp=128, but the model has"):
        deactivation_hooks(wide, "en", model=tm.bridge)
    deep = LanguageNeurons.from_indices({"en": {0: [1]}}, n_layers=3, d_mlp=D_MLP)
    with pytest.raises(LapeError, match="n_layers=3, but the model has n_layers=2"):
        steering_hooks(deep, random_stats(), "en", mode="scale", model=tm.bridge)
    # Without model=, the width is checked when the hook runs.
    with pytest.raises(LapeError, match="has width 64, but the neuron set was made for d_mlp=128"):
        tm.bridge.run_with_hooks(tokens, fwd_hooks=deactivation_hooks(wide, "en"))
    assert_no_hooks_attached(tm.bridge)
    # A set of unknown width: only the indices are checked, with model= and when the hook runs.
    unknown = LanguageNeurons.from_indices({"en": {0: [100]}}, n_layers=N_LAYERS, d_mlp=None)
    with pytest.raises(LapeError, match="neuron indices up to 100, but the model has d_mlp=64"):
        deactivation_hooks(unknown, "en", model=tm.bridge)
    with pytest.raises(LapeError, match="has width 64, but the neuron set has neuron index 100"):
        tm.bridge.run_with_hooks(tokens, fwd_hooks=deactivation_hooks(unknown, "en"))
    assert_no_hooks_attached(tm.bridge)


def test_a_set_of_unknown_width_acts_like_the_same_set_of_known_width(tiny_model):
    tm = tiny_model("llama")
    tokens = tokens_for(tm.bridge)
    known, stats = random_neurons(), random_stats()
    unknown = dataclasses.replace(known, d_mlp=None)
    _, cache = tm.bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_post"))
    for make in (
        lambda ln: deactivation_hooks(ln, ["en", "fr"], model=tm.bridge),
        lambda ln: steering_hooks(
            ln, stats, "fr", mode="add", strength=3.0, deactivate=["en"], model=tm.bridge
        ),
        lambda ln: patching_hooks(ln, "fr", cache, positions=-1),
    ):
        expected = tm.bridge.run_with_hooks(tokens, fwd_hooks=make(known))
        got = tm.bridge.run_with_hooks(tokens, fwd_hooks=make(unknown))
        assert torch.equal(got, expected)
    assert_no_hooks_attached(tm.bridge)


def test_bad_positions_and_sources(tiny_model):
    tm = tiny_model("llama")
    tokens = tokens_for(tm.bridge)
    neurons = random_neurons()
    with pytest.raises(LapeError, match=r"positions \[9\] are out of range .* pos=8"):
        tm.bridge.run_with_hooks(tokens, fwd_hooks=deactivation_hooks(neurons, "en", positions=9))
    mask = torch.ones(5, dtype=torch.bool)
    with pytest.raises(LapeError, match=r"positions mask has length 5 but .* pos=8"):
        tm.bridge.run_with_hooks(
            tokens, fwd_hooks=deactivation_hooks(neurons, "en", positions=mask)
        )
    with pytest.raises(LapeError, match=r"source has no activation 'blocks\.0\.mlp\.hook_post'"):
        patching_hooks(neurons, "en", {})
    wrong = {f"blocks.{layer}.mlp.hook_post": torch.zeros(2, 5, D_MLP) for layer in range(2)}
    with pytest.raises(LapeError, match=r"has shape \(2, 5, 64\) but the patched run has"):
        tm.bridge.run_with_hooks(tokens, fwd_hooks=patching_hooks(neurons, "en", wrong))
    stats = random_stats(languages=("en", "fr"))
    with pytest.raises(LapeError, match=r"target 'zh' is not among the languages of stats"):
        steering_hooks(neurons, stats, "zh", model=tm.bridge)
    assert_no_hooks_attached(tm.bridge)


def test_hook_fn_with_a_plain_hook_object(tiny_model):
    """``fn(act, hook=hook)`` works with any object with a ``.name``, weak-referenceable or not."""
    tm = tiny_model("llama")
    neurons = random_neurons()
    stats = random_stats()
    act = torch.randn(2, 5, D_MLP)
    factories = [
        deactivation_hooks(neurons, ["fr"]),
        steering_hooks(neurons, stats, "fr", mode="scale", strength=2.0),
        steering_hooks(neurons, stats, "fr", mode="add", strength=2.0, gated=False),
    ]
    for hooks in factories:
        for name, fn in hooks:
            hook = types.SimpleNamespace(name=name)
            with pytest.raises(TypeError):
                weakref.ref(hook)  # the point of the test: not weak-referenceable
            out = fn(act, hook=hook)
            assert out is None or out.shape == act.shape
            out = fn(act, hook=hook)  # and again: no state left half-made
    # A wrong model is still caught when the hooks run inside its forward pass.
    deeper = LanguageNeurons.from_indices({"en": {0: [1]}}, n_layers=N_LAYERS + 2, d_mlp=D_MLP)
    first_layer = deactivation_hooks(deeper, "en")  # hooks for layer 0 only
    with pytest.raises(LapeError, match=f"n_layers={N_LAYERS + 2}"):
        tm.bridge.run_with_hooks(tokens_for(tm.bridge), fwd_hooks=first_layer)
    # ... also when a hook of your own passes a plain stand-in on, inside the model's pass.
    ((name, fn),) = first_layer

    def passes_a_stand_in(act, *, hook):
        return fn(act, hook=types.SimpleNamespace(name=hook.name))

    with pytest.raises(LapeError, match=f"n_layers={N_LAYERS + 2}"):
        tm.bridge.run_with_hooks(tokens_for(tm.bridge), fwd_hooks=[(name, passes_a_stand_in)])
