"""Residual means collected with the firing counts, and DiffMean hooks, on tiny models."""

import pytest
import torch

from tl_lape import LapeError
from tl_lape._adapter import ModelAdapter
from tl_lape.collection.engine import collect_activation_stats
from tl_lape.collection.residual_means import ResidualMeans
from tl_lape.interventions.diffmean import diffmean_hooks, diffmean_vectors
from tl_lape.interventions.generation import generate_with_hook_sets, generate_with_hooks
from tl_lape.sources.demo_model import load_demo_model

SEQ_LEN = 8


def token_corpus(bridge, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    out = {}
    for seed, (lang, n) in enumerate(sizes.items()):
        gen = torch.Generator().manual_seed(seed)
        out[lang] = torch.randint(3, bridge.cfg.d_vocab, (n,), generator=gen)
    return out


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("llama").bridge


@pytest.fixture(scope="module")
def corpus(llama):
    return token_corpus(llama, {"en": 43, "fr": 24, "zh": 32})


@pytest.fixture(scope="module")
def collected(llama, corpus):
    return collect_activation_stats(
        llama, corpus, seq_len=SEQ_LEN, batch_size=2, progress=False, residual_means=True
    )


def hand_means(model, corpus, *, prepend_bos: bool = False) -> torch.Tensor:
    """Mean ``hook_resid_pre`` per layer and language from ``run_with_cache`` on the windows."""
    n_layers = model.cfg.n_layers
    width = SEQ_LEN - int(prepend_bos)
    names = [ModelAdapter.hook_resid_pre(layer) for layer in range(n_layers)]
    columns = []
    for ids in corpus.values():
        n = ids.numel() // width * width
        windows = ids[:n].reshape(-1, width)
        if prepend_bos:
            bos = torch.full((windows.shape[0], 1), model.tokenizer.bos_token_id)
            windows = torch.cat([bos, windows], 1)
        _, cache = model.run_with_cache(windows, names_filter=names)
        skip = int(prepend_bos)
        columns.append(
            torch.stack(
                [cache[name][:, skip:].double().reshape(-1, model.cfg.d_model) for name in names]
            ).mean(1)
        )
    return torch.stack(columns, -1)


def test_stats_are_those_of_collect_activation_stats(llama, corpus, collected):
    stats, _ = collected
    plain = collect_activation_stats(llama, corpus, seq_len=SEQ_LEN, batch_size=2, progress=False)
    assert torch.equal(stats.active_counts, plain.active_counts)
    assert torch.equal(stats.n_tokens, plain.n_tokens)
    torch.testing.assert_close(stats.activation_sums, plain.activation_sums, rtol=0, atol=0)


@pytest.mark.parametrize("prepend_bos", [False, True])
def test_means_equal_hand_computation(llama, corpus, prepend_bos):
    stats, means = collect_activation_stats(
        llama,
        corpus,
        seq_len=SEQ_LEN,
        batch_size=2,
        prepend_bos=prepend_bos,
        progress=False,
        residual_means=True,
    )
    assert means.languages == ("en", "fr", "zh")
    assert means.sums.shape == (llama.cfg.n_layers, llama.cfg.d_model, 3)
    assert torch.equal(means.n_tokens, stats.n_tokens)
    expected = hand_means(llama, corpus, prepend_bos=prepend_bos)
    torch.testing.assert_close(means.means(), expected, rtol=1e-5, atol=1e-6)


def test_direction(collected):
    _, means = collected
    m = means.means()
    torch.testing.assert_close(means.direction("fr", "en"), m[..., 1] - m[..., 0])
    torch.testing.assert_close(means.direction("fr"), m[..., 1] - (m[..., 0] + m[..., 2]) / 2)
    torch.testing.assert_close(means.direction("fr", ["en", "zh"]), means.direction("fr"))


def test_hooks_equal_hand_computed_residual_edit(llama, collected, corpus):
    _, means = collected
    tokens = corpus["en"][:SEQ_LEN][None]
    layer, strength = 1, 3.0
    vector = (means.means()[layer, :, 1] - means.means()[layer, :, 0]).float() * strength

    def by_hand(resid, hook):
        return resid + vector

    expected = llama.run_with_hooks(
        tokens, fwd_hooks=[(ModelAdapter.hook_resid_pre(layer), by_hand)]
    )
    hooks = diffmean_hooks(means, "fr", source="en", layer=layer, strength=strength, model=llama)
    got = llama.run_with_hooks(tokens, fwd_hooks=hooks)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    clean = llama(tokens)
    assert (got - clean).abs().max() > 1e-3  # the edit changes the logits
    zero = diffmean_hooks(means, "fr", source="en", layer=layer, strength=0.0)
    torch.testing.assert_close(llama.run_with_hooks(tokens, fwd_hooks=zero), clean)


def test_hooks_at_selected_positions_leave_the_others_alone(llama, collected, corpus):
    _, means = collected
    tokens = corpus["fr"][:SEQ_LEN][None]
    seen = []

    def spy(resid, hook):
        seen.append(resid.clone())

    hooks = diffmean_hooks(means, "zh", layer=1, strength=5.0, positions=slice(4, None))
    name = "blocks.1.hook_resid_post"
    llama.run_with_hooks(tokens, fwd_hooks=[(name, spy)])
    llama.run_with_hooks(tokens, fwd_hooks=[*hooks, (name, spy)])
    clean, edited = seen
    torch.testing.assert_close(edited[:, :4], clean[:, :4])
    assert (edited[:, 4:] - clean[:, 4:]).abs().max() > 1e-3


def test_batched_generation_with_diffmean_hooks_equals_one_prompt_at_a_time(llama, collected):
    _, means = collected
    prompts = ["The cat", "Le chat dort sur", "猫", "/etc/"]
    sets = [
        diffmean_hooks(means, "fr", source="en", layer=1, strength=4.0, positions="new"),
        diffmean_hooks(means, "zh", layer=[0, 1], strength=2.0),
    ]
    together = generate_with_hook_sets(llama, prompts, sets, max_new_tokens=6)
    for hooks, (texts, _) in zip(sets, together, strict=True):
        one_by_one = [
            generate_with_hooks(llama, [p], fwd_hooks=hooks, max_new_tokens=6)[0] for p in prompts
        ]
        assert texts == one_by_one
    assert together[0][0] != generate_with_hooks(llama, prompts, max_new_tokens=6)


def test_means_are_validated():
    sums = torch.zeros(2, 4, 2, dtype=torch.float64)
    with pytest.raises(LapeError, match="at least one counted token"):
        ResidualMeans(("en", "fr"), sums, torch.tensor([3, 0]))
    with pytest.raises(LapeError, match=r"languages must be distinct; \['en'\] repeated"):
        ResidualMeans(("en", "en"), sums, torch.tensor([3, 3]))
    with pytest.raises(LapeError, match="sums must be finite"):
        ResidualMeans(("en", "fr"), sums + float("nan"), torch.tensor([3, 3]))


def test_save_load_round_trip(collected, tmp_path):
    _, means = collected
    path = tmp_path / "means.safetensors"
    means.save(path)
    back = ResidualMeans.load(path)
    assert back.languages == means.languages
    assert torch.equal(back.sums, means.sums) and torch.equal(back.n_tokens, means.n_tokens)
    assert back.metadata == means.metadata
    assert [p.name for p in tmp_path.iterdir()] == ["means.safetensors"]


def test_bad_input(llama, collected, tmp_path):
    _, means = collected
    with pytest.raises(LapeError, match="unknown language 'xx'"):
        diffmean_hooks(means, "xx", layer=0)
    with pytest.raises(LapeError, match=r"layer must be an int .* in 0\.\.1; received 5"):
        diffmean_hooks(means, "fr", layer=5)
    with pytest.raises(LapeError, match="strength must be finite; received nan"):
        diffmean_hooks(means, "fr", layer=0, strength=float("nan"))
    with pytest.raises(LapeError, match="source languages other than the target 'fr'"):
        means.direction("fr", [])
    with pytest.raises(LapeError, match="source languages other than the target 'fr'"):
        means.direction("fr", ["en", "fr"])
    with pytest.raises(LapeError, match="n_layers=2, d_model=32; the model has n_layers=4"):
        diffmean_hooks(means, "fr", layer=0, model=load_demo_model())
    for layer in (True, [0, True], -1, []):  # (a float is refused by the annotations in tests)
        with pytest.raises(LapeError, match="layer must be an int"):
            diffmean_hooks(means, "fr", layer=layer)  # type: ignore[arg-type]
    with pytest.raises(LapeError, match="no residual-means file"):
        ResidualMeans.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(LapeError, match="is not a readable residual-means file"):
        ResidualMeans.load(bad)
    (_, hook), *_ = diffmean_hooks(means, "fr", layer=0)
    with pytest.raises(LapeError, match=r"received shape \(1, 3, 5\)"):
        hook(torch.zeros(1, 3, 5))


def test_stats_with_extra_hooks_are_those_of_collect_activation_stats(llama, corpus):
    """``fwd_hooks`` and ``residual_means`` together: the hooks act, the means see their edit."""

    def double(resid, hook):
        return resid * 2

    hooks = [(ModelAdapter.hook_resid_pre(1), double)]
    kwargs = {"seq_len": SEQ_LEN, "batch_size": 2, "progress": False, "fwd_hooks": hooks}
    stats, means = collect_activation_stats(llama, corpus, residual_means=True, **kwargs)
    plain = collect_activation_stats(llama, corpus, **kwargs)
    assert torch.equal(stats.active_counts, plain.active_counts)
    torch.testing.assert_close(stats.activation_sums, plain.activation_sums, rtol=0, atol=0)
    _, clean = collect_activation_stats(
        llama, corpus, seq_len=SEQ_LEN, batch_size=2, progress=False, residual_means=True
    )
    torch.testing.assert_close(means.sums[1], clean.sums[1] * 2)
    torch.testing.assert_close(means.sums[0], clean.sums[0])


def test_residual_means_options_are_checked_before_the_model_runs(llama, corpus, tmp_path):
    with pytest.raises(LapeError, match="residual_means=True does not work with checkpoint_path"):
        collect_activation_stats(
            llama, corpus, residual_means=True, checkpoint_path=tmp_path / "x.ckpt"
        )
    assert list(tmp_path.iterdir()) == []


def small_means() -> ResidualMeans:
    gen = torch.Generator().manual_seed(0)
    return ResidualMeans(
        ("en", "zh-Hans"),
        torch.randn(2, 3, 2, generator=gen, dtype=torch.float64),
        torch.tensor([5, 7]),
        {"model_name": "tiny", "hook": "blocks.{l}.hook_resid_pre", "seq_len": 8},
    )


def test_small_means_file_round_trips_with_format_tag_and_checksum(tmp_path):
    from safetensors import safe_open

    means = small_means()
    path = tmp_path / "means.safetensors"
    means.save(path)
    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata()
    assert header["format"] == "tl_lape.ResidualMeans" and header["version"] == "1"
    assert header["checksum"].startswith("sha256:")
    back = ResidualMeans.load(path)
    assert back.languages == means.languages and back.metadata == means.metadata
    assert torch.equal(back.sums, means.sums) and torch.equal(back.n_tokens, means.n_tokens)


def test_means_file_with_any_byte_flipped_is_refused(tmp_path):
    path = tmp_path / "means.safetensors"
    small_means().save(path)
    good = path.read_bytes()
    damaged = tmp_path / "damaged.safetensors"
    for i in range(len(good)):
        damaged.write_bytes(good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :])
        with pytest.raises(LapeError) as info:
            ResidualMeans.load(damaged)
        message = str(info.value)
        assert "damaged.safetensors" in message and "\n" not in message, (i, message)
        assert "collect the residual means again" in message, (i, message)


def test_means_file_of_another_kind_or_version_is_refused(tmp_path):
    from safetensors.torch import save_file

    means = small_means()
    other = tmp_path / "stats.safetensors"
    tensors = {"sums": means.sums, "n_tokens": means.n_tokens}
    save_file(tensors, str(other), metadata={"format": "tl_lape.ActivationStats", "version": "1"})
    with pytest.raises(LapeError, match="is not a tl_lape residual-means file"):
        ResidualMeans.load(other)
    newer = tmp_path / "newer.safetensors"
    header = {"format": "tl_lape.ResidualMeans", "version": "9", "languages": '["en", "zh-Hans"]'}
    save_file(tensors, str(newer), metadata=header)
    with pytest.raises(LapeError, match="of version '9'; this tl_lape reads version 1"):
        ResidualMeans.load(newer)


def test_means_file_written_before_the_format_tag_still_loads(tmp_path):
    """Files of the first release of DiffMean (e.g. benchmarks/results/...) had no tag."""
    from safetensors.torch import save_file

    means = small_means()
    legacy = tmp_path / "legacy.safetensors"
    header = {"languages": '["en", "zh-Hans"]', "metadata": '{"seq_len": 8}'}
    save_file({"sums": means.sums, "n_tokens": means.n_tokens}, str(legacy), metadata=header)
    back = ResidualMeans.load(legacy)
    assert back.languages == ("en", "zh-Hans") and back.metadata == {"seq_len": 8}
    assert torch.equal(back.sums, means.sums)


def test_clas_bench_form_adds_alpha_times_the_unit_direction_at_every_layer_of_a_range(
    llama, collected, corpus
):
    """``normalize=True``: at each layer of the range, alpha * (d / |d|), d that layer's
    difference of means; the same edit by hand gives the same logits."""
    _, means = collected
    tokens = corpus["en"][:SEQ_LEN][None]
    alpha = 2.5
    direction = means.means()[..., 1] - means.means()[..., 0]  # n_layers d_model

    def by_hand(layer):
        vec = (direction[layer] / direction[layer].norm()).float() * alpha
        return (ModelAdapter.hook_resid_pre(layer), lambda resid, hook: resid + vec)

    expected = llama.run_with_hooks(tokens, fwd_hooks=[by_hand(0), by_hand(1)])
    hooks = diffmean_hooks(
        means, "fr", source="en", layer=range(0, 2), strength=alpha, normalize=True
    )
    assert [name for name, _ in hooks] == [ModelAdapter.hook_resid_pre(i) for i in (0, 1)]
    torch.testing.assert_close(llama.run_with_hooks(tokens, fwd_hooks=hooks), expected)
    vectors = diffmean_vectors(
        means, "fr", source="en", layer=range(2), strength=alpha, normalize=True
    )
    for vec in vectors.values():
        assert float(vec.norm()) == pytest.approx(alpha, rel=1e-5)
    with pytest.raises(LapeError, match=r"distinct ints, e.g. range\(2, 6\)"):
        diffmean_hooks(means, "fr", layer=[1, 1])


def test_random_direction_control_matches_the_norm_per_layer_and_points_elsewhere(collected):
    """``random_seed=k``: each layer's vector has DiffMean's norm (or alpha, normalized) but a
    seeded random direction: the same seed the same vector, another seed another one."""
    _, means = collected
    for normalize, strength in ((False, 3.0), (True, 2.0)):
        real = diffmean_vectors(means, "zh", layer=[0, 1], strength=strength, normalize=normalize)
        ctrl = diffmean_vectors(
            means, "zh", layer=[0, 1], strength=strength, normalize=normalize, random_seed=4
        )
        again = diffmean_vectors(
            means, "zh", layer=[0, 1], strength=strength, normalize=normalize, random_seed=4
        )
        other = diffmean_vectors(
            means, "zh", layer=[0, 1], strength=strength, normalize=normalize, random_seed=5
        )
        for lay in (0, 1):
            assert float(ctrl[lay].norm()) == pytest.approx(float(real[lay].norm()), rel=1e-5)
            cos = torch.nn.functional.cosine_similarity(ctrl[lay], real[lay], dim=0)
            assert abs(float(cos)) < 0.6  # 32 dimensions: a random direction is far off
            assert torch.equal(ctrl[lay], again[lay])
            assert not torch.equal(ctrl[lay], other[lay])
    with pytest.raises(LapeError, match="random_seed must be an integer"):
        diffmean_hooks(means, "fr", layer=0, random_seed=-1)
