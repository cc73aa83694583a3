"""Generation under steering hooks, output judging and the steering sweep, on tiny models."""

import inspect
import json

import pytest
import torch
from matplotlib.figure import Figure
from tiny_models import CORPUS, SENTENCES

from tl_lape.collection.engine import collect_activation_stats
from tl_lape.errors import LapeError
from tl_lape.experiments import steering as steering_module
from tl_lape.experiments.steering import (
    DEFAULT_MAX_NEW_TOKENS,
    ENGLISH_PROMPTS,
    NEUTRAL_PROMPTS,
    SteeringConfig,
    SteeringReport,
    config_hooks,
    run_steering_sweep,
    steer,
)
from tl_lape.experiments.steering_study import run_steering_study
from tl_lape.interventions.generation import generate_with_hook_sets, generate_with_hooks
from tl_lape.interventions.hooks import DEFAULT_MODE, steering_hooks
from tl_lape.judging.identification import LanguageIdentifier, language_id_accuracy
from tl_lape.judging.metrics import reference_nll, repetition_rate, sequence_nll
from tl_lape.judging.nll import window_nll
from tl_lape.judging.outputs import DEFAULT_MAX_REPETITION, DEFAULT_NLL_MARGIN
from tl_lape.neurons import LanguageNeurons
from tl_lape.selection import identify_language_neurons

PROMPTS = ["The cat", "Le chat dort sur", "猫", "/etc/"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_generation_equals_one_prompt_at_a_time(tiny_model, arch):
    model = tiny_model(arch).bridge
    batched = generate_with_hooks(model, PROMPTS, max_new_tokens=6)
    single = [generate_with_hooks(model, [p], max_new_tokens=6)[0] for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) > 1


def test_hooked_generation_with_and_without_kv_cache_agree(llama, neurons, stats):
    """Guards the KV-cache path (transformers 5.24 broke it): steered tokens must not change."""
    hooks = steering_hooks(neurons, stats, "fr", mode="add", strength=8.0, model=llama.bridge)
    cached, cached_ids = generate_with_hooks(
        llama.bridge, PROMPTS, fwd_hooks=hooks, max_new_tokens=8, return_tokens=True
    )
    uncached, uncached_ids = generate_with_hooks(
        llama.bridge,
        PROMPTS,
        fwd_hooks=hooks,
        max_new_tokens=8,
        use_kv_cache=False,
        return_tokens=True,
    )
    assert cached == uncached
    assert all(torch.equal(a, b) for a, b in zip(cached_ids, uncached_ids, strict=True))
    # The hooks act: steered output differs from unsteered output, and nothing stays attached.
    plain = generate_with_hooks(llama.bridge, PROMPTS, max_new_tokens=8)
    assert plain != cached
    assert generate_with_hooks(llama.bridge, PROMPTS, max_new_tokens=8) == plain


def test_hook_sets_in_one_batch_equal_separate_runs(llama, neurons, stats):
    model = llama.bridge
    hook_sets = [
        steering_hooks(neurons, stats, "fr", mode="add", strength=8.0, model=model),
        [],
        steering_hooks(
            neurons, stats, "zh", mode="replace", strength=3.0, deactivate=["en"], model=model
        ),
    ]
    together = generate_with_hook_sets(model, PROMPTS, hook_sets, max_new_tokens=6)
    for hooks, (texts, ids) in zip(hook_sets, together, strict=True):
        alone, alone_ids = generate_with_hooks(
            model, PROMPTS, fwd_hooks=hooks, max_new_tokens=6, return_tokens=True
        )
        assert texts == alone
        assert all(torch.equal(a, b) for a, b in zip(ids, alone_ids, strict=True))
    assert together[0][0] != together[1][0]
    # Several batches of whole sets give the same result as one batch.
    split = generate_with_hook_sets(model, PROMPTS, hook_sets, max_new_tokens=6, batch_size=4)
    assert [t for t, _ in split] == [t for t, _ in together]


def test_greedy_tokens_are_argmax_of_hooked_forward(llama, neurons, stats):
    hooks = steering_hooks(neurons, stats, "zh", mode="scale", strength=5.0, model=llama.bridge)
    _, (ids,) = generate_with_hooks(
        llama.bridge, ["Le chat"], fwd_hooks=hooks, max_new_tokens=5, return_tokens=True
    )
    prompt = llama.bridge.to_tokens("Le chat")
    seq = torch.cat([prompt[0], ids])
    logits = llama.bridge.run_with_hooks(seq[None], fwd_hooks=hooks)
    expected = logits[0, prompt.shape[1] - 1 : -1].argmax(-1)
    assert torch.equal(expected, ids)


def test_sampling_is_seeded(llama):
    a = generate_with_hooks(llama.bridge, PROMPTS, max_new_tokens=5, do_sample=True, seed=3)
    b = generate_with_hooks(llama.bridge, PROMPTS, max_new_tokens=5, do_sample=True, seed=3)
    assert a == b


@pytest.mark.parametrize("backend", ["py3langid", "lingua"])
def test_language_identifier(backend):
    if backend == "lingua":
        pytest.importorskip("lingua", reason="optional: pip install lingua-language-detector")
    lid = LanguageIdentifier(["en", "fr", "zh", "ru"], backend=backend)
    for lang, texts in SENTENCES.items():
        assert lid.identify_many(texts) == [lang] * len(texts)
    assert lid("  a ") is None
    acc = language_id_accuracy(lid, SENTENCES, max_texts_per_language=2, min_chars=5)
    assert acc == {"en": 1.0, "fr": 1.0, "zh": 1.0, "ru": 1.0, "overall": 1.0}


def test_language_identifier_bad_input():
    with pytest.raises(LapeError, match="backend must be"):
        LanguageIdentifier(["en"], backend="cld3")  # type: ignore[arg-type]
    with pytest.raises(LapeError, match="does not know languages"):
        LanguageIdentifier(["en", "tlh"])
    with pytest.raises(LapeError, match="no text of at least 20 characters"):
        language_id_accuracy(LanguageIdentifier(["en"]), {"en": ["short"]})


def test_repetition_rate():
    assert repetition_rate([1, 2, 3, 4, 5, 6]) == 0.0
    assert repetition_rate([]) == 0.0
    loop = [7, 8] * 20
    grams = [tuple(loop[i : i + 3]) for i in range(len(loop) - 2)]
    assert repetition_rate(loop) == pytest.approx(1 - len(set(grams)) / len(grams))
    assert repetition_rate(torch.tensor(loop), n=1) == pytest.approx(1 - 2 / 40)


def test_sequence_nll_matches_window_nll_and_ignores_padding(llama):
    tok = llama.bridge.tokenizer
    seqs = [torch.tensor(tok(t, add_special_tokens=False)["input_ids"]) for t in SENTENCES["fr"]]
    batched = sequence_nll(llama.bridge, seqs)
    bos = tok.bos_token_id
    for i, seq in enumerate(seqs):
        total, count = window_nll(llama.bridge, torch.cat([torch.tensor([bos]), seq])[None])
        assert float(batched[i]) == pytest.approx(total / count, abs=1e-5)
    assert torch.isnan(sequence_nll(llama.bridge, [torch.zeros(0, dtype=torch.long)])).all()
    ref = reference_nll(llama.bridge, CORPUS, n_tokens=6)
    assert set(ref) == set(CORPUS) and all(v > 0 for v in ref.values())


def test_steer_judges_outputs(llama, neurons, stats):
    out = steer(
        llama.bridge,
        neurons,
        stats,
        "fr",
        PROMPTS,
        mode="add",
        strength=4.0,
        max_new_tokens=6,
        reference=reference_nll(llama.bridge, CORPUS, n_tokens=6),
    )
    assert len(out.texts) == len(PROMPTS) and out.nll.shape == (len(PROMPTS),)
    assert 0.0 <= out.success_rate("fr") <= out.rate("fr") <= 1.0
    assert sum(out.language_counts().values()) == len(PROMPTS)
    assert out.off_target_rate("fr", "en") + out.rate("fr") + out.rate("en") <= 1.0 + 1e-9


def test_sweep_report(llama, stats):
    report = run_steering_sweep(
        llama.bridge,
        stats,
        reference_corpus=CORPUS,
        targets=["fr", "zh"],
        modes=["add", "replace"],
        strengths={"add": [4.0], "replace": [1.0]},
        top_rates=[0.1],
        prompts={"english": ENGLISH_PROMPTS[:3], "neutral": NEUTRAL_PROMPTS[:3]},
        max_new_tokens=4,
        progress=False,
    )
    assert isinstance(report, SteeringReport)
    assert len(report.results) == 2 * 2 * 2  # configs x settings x targets
    for r in report.results:
        for rate in (r.success_rate, r.target_rate, r.fluent_rate, r.off_target_rate):
            assert 0.0 <= rate <= 1.0
        assert r.success_rate <= min(r.target_rate, r.fluent_rate)
    assert set(report.baseline) == {"english", "neutral"}
    assert sum(report.baseline["english"].values()) == 3
    assert report.best("english") is not None
    text = report.to_markdown()
    assert "english prompts" in text and "neutral prompts" in text
    json.dumps(report.to_dict())
    assert all(isinstance(f, Figure) for f in report.figures().values())


def test_bad_input(llama, neurons, stats):
    with pytest.raises(LapeError, match="prompts must be a list"):
        generate_with_hooks(llama.bridge, "The cat")  # type: ignore[arg-type]
    with pytest.raises(LapeError, match="max_new_tokens must be a positive int"):
        generate_with_hooks(llama.bridge, ["x"], max_new_tokens=0)
    with pytest.raises(LapeError, match="unknown target language 'xx'"):
        steer(llama.bridge, neurons, stats, "xx", PROMPTS)
    with pytest.raises(LapeError, match="deactivate must be"):
        steer(llama.bridge, neurons, stats, "fr", PROMPTS, deactivate="all")  # type: ignore[arg-type]
    with pytest.raises(LapeError, match=r"unknown target language\(s\) \['xx'\]"):
        run_steering_sweep(llama.bridge, stats, targets=["xx"])
    with pytest.raises(LapeError, match="modes must be among"):
        run_steering_sweep(llama.bridge, stats, modes=["boost"])  # type: ignore[list-item]
    with pytest.raises(LapeError, match="strengths gives no value"):
        run_steering_sweep(llama.bridge, stats, modes=["add"], strengths={"scale": [2.0]})
    other = LanguageNeurons.from_indices({"fr": {0: [1]}}, n_layers=2, d_mlp=32)
    with pytest.raises(LapeError, match="d_mlp"):
        steer(llama.bridge, other, stats, "fr", PROMPTS)


def test_one_configuration_makes_the_hooks_everywhere(llama, neurons, stats):
    """steer, the sweep and the study build hooks through config_hooks; it equals the hooks of
    steering_hooks with the languages deactivated_languages names."""
    model = llama.bridge
    config = SteeringConfig(mode="replace", strength=3.0, deactivate="others")
    ours = config_hooks(config, neurons, stats, "zh", model=model)
    theirs = steering_hooks(
        neurons, stats, "zh", mode="replace", strength=3.0, deactivate=["en", "fr", "ru"],
        model=model,
    )  # fmt: skip
    tokens = model.to_tokens(PROMPTS[1])
    torch.testing.assert_close(
        model.run_with_hooks(tokens, fwd_hooks=ours), model.run_with_hooks(tokens, fwd_hooks=theirs)
    )
    assert SteeringConfig().mode == DEFAULT_MODE == "add"
    with pytest.raises(LapeError, match=r"mode must be one of .*received 'boost'"):
        SteeringConfig(mode="boost")
    with pytest.raises(LapeError, match=r"deactivate must be one of .*received 'all'"):
        SteeringConfig(deactivate="all")
    with pytest.raises(LapeError, match="needs the prompts' language; received source=None"):
        config_hooks(SteeringConfig(deactivate="source"), neurons, stats, "fr", model=model)


def test_each_steering_option_has_one_default():
    from tl_lape.cli import _build_parser

    for fn in (steer, run_steering_sweep, run_steering_study):
        params = inspect.signature(fn).parameters
        assert params["max_new_tokens"].default == DEFAULT_MAX_NEW_TOKENS, fn.__name__
        assert params["nll_margin"].default == DEFAULT_NLL_MARGIN, fn.__name__
        assert params["max_repetition"].default == DEFAULT_MAX_REPETITION, fn.__name__
        assert "random_seed" not in params, fn.__name__
        for name in ("mode", "strength", "nll_margin", "max_repetition", "filter_rate"):
            if name in params:
                assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, (fn.__name__, name)
    assert inspect.signature(steer).parameters["mode"].default == DEFAULT_MODE
    args = _build_parser().parse_args(["steer", "s.safetensors", "--model", "m", "--out", "o"])
    assert args.max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    assert args.filter_rate is None and args.activation_bar_ratio is None  # the selection's


def test_cli_steer_thresholds_reach_the_neuron_selection(llama, stats, tmp_path, monkeypatch):
    """``tl-lape steer --filter-rate/--activation-bar-ratio`` select the steered neurons with
    those thresholds, not the paper's defaults."""
    from tl_lape.cli import main

    real = steering_module.identify_language_neurons
    seen = []

    def spy(stats, **kwargs):
        seen.append(kwargs)
        return real(stats, **kwargs)

    monkeypatch.setattr(steering_module, "identify_language_neurons", spy)
    stats_path = tmp_path / "stats.safetensors"
    stats.save(stats_path)
    argv = ["steer", str(stats_path), "--model", str(llama.path), "--reference-corpus", "none"]
    argv += ["--targets", "fr", "--modes", "add", "--strengths", "add=4", "--top-rates", "0.1"]
    argv += ["--settings", "neutral", "--max-new-tokens", "2", "--no-progress"]
    argv += ["--filter-rate", "0.5", "--activation-bar-ratio", "0.9"]
    assert main([*argv, "--out", str(tmp_path / "steering")]) == 0
    assert seen == [{"top_rate": 0.1, "filter_rate": 0.5, "activation_bar_ratio": 0.9}]
    report = json.loads((tmp_path / "steering" / "steering.json").read_text(encoding="utf-8"))
    assert report["metadata"]["selection_thresholds"] == {
        "filter_rate": 0.5,
        "activation_bar_ratio": 0.9,
    }
    expected = identify_language_neurons(
        stats, top_rate=0.1, filter_rate=0.5, activation_bar_ratio=0.9
    )
    assert report["metadata"]["neuron_counts"]["0.1"] == expected.counts()
    assert expected.counts() != identify_language_neurons(stats, top_rate=0.1).counts()
    # A bad threshold is refused before the model is loaded, and nothing is written.
    bad = tmp_path / "bad"
    assert main([*argv[:-4], "--filter-rate", "1.5", "--out", str(bad)]) == 2
    assert not bad.exists()


def test_cli_steer_study_thresholds_reach_the_neuron_selection(llama, tmp_path, monkeypatch):
    """``tl-lape steer --study --filter-rate`` selects with that threshold too (stopped at the
    first selection; the study itself is tested in test_steering_study.py and test_cli.py)."""
    from tl_lape.cli import main
    from tl_lape.experiments import steering_study as study_module

    class Selected(Exception):
        pass

    seen = []

    def spy(stats, **kwargs):
        seen.append(kwargs)
        raise Selected

    monkeypatch.setattr(study_module, "identify_language_neurons", spy)
    stats, means = collect_activation_stats(
        llama.bridge, CORPUS, seq_len=16, residual_means=True, progress=False
    )
    stats_path, means_path = tmp_path / "stats.safetensors", tmp_path / "means.safetensors"
    stats.save(stats_path)
    means.save(means_path)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang, sentences in SENTENCES.items():
        (corpus / f"{lang}.txt").write_text("\n".join(sentences * 3), encoding="utf-8")
    argv = ["steer", str(stats_path), "--model", str(llama.path), "--study"]
    argv += ["--means", str(means_path), "--reference-corpus", f"text:{corpus}"]
    argv += ["--targets", "fr", "--modes", "add", "--strengths", "add=4", "--top-rates", "0.1"]
    argv += ["--max-new-tokens", "2", "--no-progress", "--filter-rate", "0.5"]
    with pytest.raises(Selected):
        main([*argv, "--out", str(tmp_path / "study")])
    assert seen == [{"top_rate": 0.1, "filter_rate": 0.5}]
