"""The ``tl-lape`` command line, end to end on tiny local models and the real handbook."""

import json
from pathlib import Path

import pytest
import torch

import tl_lape
from tl_lape.cli import main
from tl_lape.collection.residual_means import ResidualMeans
from tl_lape.experiments.reports import format_summary


def test_collect_then_identify(tiny_model, text_corpus: Path, tmp_path: Path, capsys) -> None:
    model_dir = tiny_model("llama").path
    stats_path = tmp_path / "stats.safetensors"
    status = main(
        [
            "collect",
            "--model",
            str(model_dir),
            "--corpus",
            f"text:{text_corpus}",
            "--languages",
            "en,fr,zh,ru",
            "--seq-len",
            "16",
            "--batch-size",
            "2",
            "--no-progress",
            "--out",
            str(stats_path),
        ]
    )
    assert status == 0
    stats = tl_lape.ActivationStats.load(stats_path)
    assert stats.languages == ("en", "fr", "zh", "ru")
    assert bool((stats.n_tokens > 0).all())
    assert int(stats.n_tokens[0]) % 16 == 0  # whole windows only
    assert "wrote" in capsys.readouterr().out

    neurons_path = tmp_path / "neurons.json"
    pth_path = tmp_path / "neurons.pth"
    status = main(
        [
            "identify",
            str(stats_path),
            "--top-rate",
            "0.1",
            "--out",
            str(neurons_path),
            "--rucaibox",
            str(pth_path),
        ]
    )
    assert status == 0
    neurons = tl_lape.LanguageNeurons.load(neurons_path)
    expected = tl_lape.identify_language_neurons(stats, top_rate=0.1)
    assert neurons == expected
    assert int(neurons.union().sum()) == round(0.1 * stats.n_layers * stats.d_mlp)
    reloaded = tl_lape.LanguageNeurons.from_rucaibox(
        pth_path, list(neurons.languages), n_layers=neurons.n_layers, d_mlp=neurons.d_mlp
    )
    assert reloaded == neurons
    out = capsys.readouterr().out
    assert "| language | tokens | neurons |" in out


def test_identify_rejects_bad_rate_and_writes_nothing(tmp_path: Path, capsys) -> None:
    counts = torch.randint(0, 50, (2, 32, 2), generator=torch.Generator().manual_seed(0))
    stats = tl_lape.ActivationStats.from_counts(counts, [50, 50], ["en", "fr"])
    stats_path = tmp_path / "stats.safetensors"
    stats.save(stats_path)
    out = tmp_path / "neurons.json"
    status = main(["identify", str(stats_path), "--top-rate", "1.5", "--out", str(out)])
    assert status == 2
    err = capsys.readouterr().err
    assert "top_rate" in err and "1.5" in err
    assert not out.exists()


def test_identify_reports_corrupted_stats(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "stats.safetensors"
    bad.write_bytes(b"not a safetensors file")
    out = tmp_path / "neurons.json"
    assert main(["identify", str(bad), "--out", str(out)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not out.exists()


def test_unknown_corpus_source(tiny_model, tmp_path: Path, capsys) -> None:
    out = tmp_path / "stats.safetensors"
    status = main(
        ["collect", "--model", str(tiny_model("gpt2").path), "--corpus", "ftp:x", "--out", str(out)]
    )
    assert status == 2
    assert "ftp:x" in capsys.readouterr().err
    assert not out.exists()


def test_summary_table_counts_every_language() -> None:
    masks = torch.zeros(3, 4, 10, dtype=torch.bool)  # lang n_layers d_mlp
    masks[0, 0, :3] = True  # en: 3 neurons in the bottom layer
    masks[1, 3, :2] = True  # fr: 2 neurons in the top layer
    masks[2, 3, 1:4] = True  # es: 3 in the top layer, 1 shared with fr
    neurons = tl_lape.LanguageNeurons.from_masks(masks, ["en", "fr", "es"])
    text = format_summary(neurons)
    assert "Selected 7 of 40 MLP neurons (17.50%)" in text
    assert "| en | - | 3 | 3 | 0 | 0 |" in text
    assert "| fr | - | 2 | 0 | 0 | 2 |" in text
    assert "| fr-es | 1 | 0.250 |" in text


def test_demo_writes_a_complete_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    status = main(
        [
            "demo",
            "--model",
            "demo",
            "--out",
            str(out),
            "--max-tokens-per-language",
            "4096",
            "--seq-len",
            "128",
            "--no-progress",
        ]
    )
    assert status == 0
    for name in ("stats.safetensors", "neurons.json", "neurons_per_layer.png", "overlap.png"):
        assert (out / name).stat().st_size > 0, name
    neurons = tl_lape.LanguageNeurons.load(out / "neurons.json")
    stats = tl_lape.ActivationStats.load(out / "stats.safetensors")
    assert set(neurons.languages) == {"en", "zh", "fr", "es", "vi", "id", "ja"}
    assert neurons == tl_lape.identify_language_neurons(stats)
    page = (out / "report.html").read_text(encoding="utf-8")
    for heading in ("Summary", "Neuron set", "Statistics", "Figures", "Neuron cards", "Data files"):
        assert f">{heading}</h2>" in page, heading
    cards = [lang for lang in neurons.languages if neurons.counts()[lang] > 0]
    assert page.count("<h3>") == len(cards)  # one card per language with neurons
    assert page.count("data:image/png;base64,") == 2  # the two figures, inline
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "| language | tokens | neurons |" in summary
    assert json.loads((out / "neurons.json").read_text(encoding="utf-8"))["languages"]
    assert "report written to" in capsys.readouterr().out


def test_evaluate_writes_a_report_with_controls(
    tiny_model, text_corpus: Path, tmp_path: Path, capsys
) -> None:
    model_dir = tiny_model("llama").path
    common = ["--model", str(model_dir), "--corpus", f"text:{text_corpus}"]
    common += ["--languages", "en,fr,zh,ru", "--seq-len", "16", "--no-progress"]
    stats_path = tmp_path / "stats.safetensors"
    assert main(["collect", *common, "--out", str(stats_path)]) == 0
    neurons_path = tmp_path / "neurons.json"
    assert main(["identify", str(stats_path), "--top-rate", "0.1", "--out", str(neurons_path)]) == 0
    out = tmp_path / "evaluation"
    argv = ["evaluate", str(neurons_path), *common, "--stats", str(stats_path)]
    argv += ["--n-random", "2", "--max-tokens-per-language", "64", "--out", str(out)]
    status = main(argv)
    assert status == 0
    report = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert report["lape"]["languages"] == ["en", "fr", "zh", "ru"]
    assert len(report["random"]) == 2  # --n-random draws, each a full matrix
    assert set(report["baselines"]) == {"lap", "lave"}  # --stats given
    text = (out / "evaluation.md").read_text(encoding="utf-8")
    assert "random" in text.lower()
    assert sorted(p.suffix for p in out.iterdir()).count(".png") >= 1
    page = (out / "report.html").read_text(encoding="utf-8")
    assert ">Perplexity under deactivation</h2>" in page and ">Statistics</h2>" in page
    assert page.count("data:image/png;base64,") == len(list(out.glob("*.png")))
    assert 'href="evaluation.json"' in page
    assert "report written to" in capsys.readouterr().out


def test_evaluate_rejects_a_neuron_set_of_another_model(
    tiny_model, text_corpus: Path, tmp_path: Path, capsys
) -> None:
    masks = torch.zeros(1, 5, 7, dtype=torch.bool)  # lang n_layers d_mlp: not the tiny model
    masks[0, 0, 0] = True
    neurons_path = tmp_path / "neurons.json"
    tl_lape.LanguageNeurons.from_masks(masks, ["en"]).save(neurons_path)
    out = tmp_path / "evaluation"
    argv = ["evaluate", str(neurons_path), "--model", str(tiny_model("llama").path)]
    argv += ["--corpus", f"text:{text_corpus}", "--seq-len", "16", "--no-progress"]
    status = main([*argv, "--out", str(out)])
    assert status == 2
    assert "layers" in capsys.readouterr().err
    assert not out.exists()


def test_steer_writes_a_sweep_report(tiny_model, text_corpus: Path, tmp_path: Path, capsys):
    model_dir = tiny_model("llama").path
    common = ["--model", str(model_dir)]
    stats_path = tmp_path / "stats.safetensors"
    argv = ["collect", *common, "--corpus", f"text:{text_corpus}", "--languages", "en,fr,zh,ru"]
    assert main([*argv, "--seq-len", "16", "--no-progress", "--out", str(stats_path)]) == 0
    out = tmp_path / "steering"
    argv = ["steer", str(stats_path), *common, "--reference-corpus", f"text:{text_corpus}"]
    argv += ["--targets", "fr,zh", "--modes", "add,scale", "--strengths", "add=2,5"]
    argv += ["--strengths", "scale=3", "--top-rates", "0.1", "--settings", "neutral"]
    argv += ["--max-new-tokens", "3", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "steering.json").read_text(encoding="utf-8"))
    configs = {(r["mode"], r["strength"], r["top_rate"]) for r in report["results"]}
    assert configs == {("add", 2.0, 0.1), ("add", 5.0, 0.1), ("scale", 3.0, 0.1)}
    assert {r["target"] for r in report["results"]} == {"fr", "zh"}
    assert {r["setting"] for r in report["results"]} == {"neutral"}
    assert set(report["reference_nll"]) == {"en", "fr", "zh", "ru"}
    assert (out / "steering_neutral.png").stat().st_size > 0
    assert "neutral prompts" in (out / "steering.md").read_text(encoding="utf-8")
    assert "report written to" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--strengths", "add", "MODE=V"),
        ("--strengths", "add=x", "comma-separated numbers"),
        ("--top-rates", "1.5", "strictly between 0 and 1"),
        ("--modes", "boost", "modes must be among"),
        ("--targets", "xx", "unknown target"),
        ("--max-new-tokens", "0", "at least 1"),
    ],
)
def test_steer_rejects_bad_options_and_writes_nothing(
    tiny_model, text_corpus: Path, tmp_path: Path, capsys, option: str, value: str, message: str
) -> None:
    stats_path = tmp_path / "stats.safetensors"
    model_dir = str(tiny_model("llama").path)
    argv = ["collect", "--model", model_dir, "--corpus", f"text:{text_corpus}"]
    argv += ["--languages", "en,fr,zh,ru"]
    assert main([*argv, "--seq-len", "16", "--no-progress", "--out", str(stats_path)]) == 0
    capsys.readouterr()
    out = tmp_path / "steering"
    argv = ["steer", str(stats_path), "--model", model_dir, "--reference-corpus", "none"]
    assert main([*argv, option, value, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and value.split("=")[-1] in err
    assert not out.exists()


def _collect_with_means(model_dir: str, corpus: Path, tmp_path: Path) -> tuple[Path, Path]:
    stats_path, means_path = tmp_path / "stats.safetensors", tmp_path / "means.safetensors"
    argv = ["collect", "--model", model_dir, "--corpus", f"text:{corpus}"]
    argv += ["--languages", "en,fr,zh,ru", "--seq-len", "16", "--no-progress", "--prepend-bos"]
    argv += ["--residual-means", str(means_path), "--out", str(stats_path)]
    assert main(argv) == 0
    stats = tl_lape.ActivationStats.load(stats_path)
    assert stats.metadata["prepend_bos"] is True
    assert ResidualMeans.load(means_path).metadata["prepend_bos"] is True
    return stats_path, means_path


def test_steer_study_writes_the_study_report(
    tiny_model, text_corpus: Path, tmp_path: Path, capsys
) -> None:
    model_dir = str(tiny_model("llama").path)
    stats_path, means_path = _collect_with_means(model_dir, text_corpus, tmp_path)
    means = ResidualMeans.load(means_path)
    assert means.languages == tl_lape.ActivationStats.load(stats_path).languages
    out = tmp_path / "study"
    argv = ["steer", str(stats_path), "--model", model_dir, "--study", "--means", str(means_path)]
    argv += ["--reference-corpus", f"text:{text_corpus}", "--targets", "fr,zh"]
    argv += ["--modes", "add", "--strengths", "add=2", "--top-rates", "0.1"]
    argv += ["--diffmean-layers", "1", "--diffmean-strengths", "1", "--n-random", "2"]
    argv += ["--max-new-tokens", "3", "--no-progress", "--out", str(out)]
    argv += ["--positions", "all,new", "--doses", "2"]
    assert main(argv) == 0
    study = json.loads((out / "study.json").read_text(encoding="utf-8"))
    assert set(study["chosen"]) == {"lape", "diffmean", "clas"}
    fresh = [r for r in study["rows"] if r["phase"] == "fresh"]
    steered = {"lape", "diffmean", "clas", "combined"}
    assert {r["method"] for r in fresh} == {
        "none",
        "prompt",
        "random",
        "random_diffmean",
        "random_clas",
        *steered,
        *(f"{m}_new" for m in steered),
    }
    assert {r["dose"] for r in study["rows"] if r.get("dose") is not None} >= {2.0}
    assert {r["setting"] for r in fresh} == {"english", "neutral"}  # no handbook: no content
    # Equal budgets: every method tried as many configurations as the smallest grid holds.
    tuning = study["metadata"]["tuning"]["methods"]
    assert tuning["lape"]["grid"] == 2  # add x2 at 10%, deactivation none and others
    assert {t["configurations"] for t in tuning.values()} == {1}
    assert sorted(p.name for p in out.iterdir()) == [
        ".tl_lape",  # the mark of a folder tl_lape wrote
        "steering_study_english.png",
        "steering_study_neutral.png",
        "study.json",
        "study.md",
    ]
    assert "report written to" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--deactivate", "source"], "'source' is for the sweep only"),
        (["--reference-corpus", "none"], "not 'none'"),
        (["--modes", "add", "--strengths", "scale=2"], "that --modes ['add'] omits"),
        (["--targets", "xx"], "unknown language(s) ['xx']"),
        (["--targets", "en"], "other than the source 'en'"),
        (["--n-random", "0"], "n_random must be an int of at least 1; received 0"),
        (["--n-content", "1"], "at least 2, got 1"),
        (["--diffmean-strengths", "x"], "comma-separated numbers"),
        (["--diffmean-layers", "1.5"], "comma-separated layer numbers, got '1.5'"),
        (["--diffmean-layers", "9"], "diffmean_layers must be ints in 0..1"),
        (["--seed", "3"], "--seed apply to the sweep only"),
        (["--top-rates", "0"], "strictly between 0 and 1"),
        (["--positions", "all,middle"], "positions must be one of"),
        (["--doses", "0"], "doses must be positive multiples"),
        (["--halving-rounds", "-1"], "halving_rounds"),
        (["--dose-prompts", "0"], "dose_prompts"),
        (["--few-shot", "-1"], "--few-shot must be 0 (none) or more, got -1"),
        # The test corpus repeats its sentences, so no train paragraph is outside the held-out
        (["--few-shot", "1"], "paragraphs of 20 to 120 characters outside the evaluation text"),
        (["--dev-budget", "99"], "dev_budget=99 configurations per method"),
        (["--clas-strengths", "x"], "--clas-strengths takes comma-separated numbers"),
    ],
)
def test_steer_study_rejects_bad_options_before_loading_the_model(
    tiny_model,
    text_corpus: Path,
    tmp_path: Path,
    capsys,
    monkeypatch,
    extra: list[str],
    message: str,
) -> None:
    model_dir = str(tiny_model("llama").path)
    stats_path, means_path = _collect_with_means(model_dir, text_corpus, tmp_path)
    capsys.readouterr()

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("tl_lape.cli._load_model", no_model)
    out = tmp_path / "study"
    argv = ["steer", str(stats_path), "--model", model_dir, "--study", "--means", str(means_path)]
    argv += ["--reference-corpus", f"text:{text_corpus}", *extra, "--out", str(out)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_study_options_need_study_and_means_need_a_plain_collection(
    tiny_model, text_corpus: Path, tmp_path: Path, capsys
) -> None:
    model_dir = str(tiny_model("llama").path)
    stats_path, means_path = _collect_with_means(model_dir, text_corpus, tmp_path)
    argv = ["steer", str(stats_path), "--model", model_dir, "--means", str(means_path)]
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert "--means only apply with --study" in capsys.readouterr().err
    argv = ["steer", str(stats_path), "--model", model_dir, "--positions", "new"]
    assert main([*argv, "--halving-rounds", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--halving-rounds, --positions only apply with --study" in capsys.readouterr().err
    argv = ["collect", "--model", model_dir, "--corpus", f"text:{text_corpus}"]
    argv += ["--resume", str(tmp_path / "ck"), "--residual-means", str(tmp_path / "m2")]
    assert main([*argv, "--out", str(tmp_path / "s2")]) == 2
    assert "--residual-means does not work with --resume" in capsys.readouterr().err
    assert not (tmp_path / "s2").exists() and not (tmp_path / "m2").exists()
    argv = ["collect", "--model", model_dir, "--corpus", f"text:{text_corpus}"]
    argv += ["--residual-means", str(tmp_path / "same"), "--out", str(tmp_path / "same")]
    assert main(argv) == 2
    assert "name the same file" in capsys.readouterr().err
    assert not (tmp_path / "same").exists()


def test_demo_evaluate_adds_evaluation_and_steering(tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    argv = ["demo", "--model", "demo", "--out", str(out), "--max-tokens-per-language", "2048"]
    argv += ["--seq-len", "128"]
    argv += ["--evaluate", "--eval-tokens-per-language", "256", "--eval-random", "1"]
    assert main([*argv, "--steer-new-tokens", "4", "--no-progress"]) == 0
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "| language | tokens | neurons |" in summary
    assert "random" in summary.lower()  # the evaluation section, with its controls
    assert "### Steering generation" in summary
    evaluation = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert evaluation["lape"]["languages"] == ["en", "zh", "fr", "es", "vi", "id", "ja"]
    assert len(evaluation["random"]) == 1
    steering = json.loads((out / "steering.json").read_text(encoding="utf-8"))
    assert {r["target"] for r in steering["results"]} == {"zh", "fr", "es", "vi", "id", "ja"}
    assert {r["setting"] for r in steering["results"]} == {"english", "neutral"}
    for name in ("evaluation.json", "steering.json", "steering_english.png"):
        assert name in summary
    assert "[6/6]" in capsys.readouterr().out


def test_demo_on_a_real_model_folder_evaluates_and_steers_by_default(tmp_path: Path) -> None:
    """Any model but 'demo' gets the real-model preset: evaluation and the steering example."""
    from tl_lape.sources.demo_model import demo_model_path

    out = tmp_path / "report"
    argv = ["demo", "--model", str(demo_model_path()), "--out", str(out), "--no-progress"]
    argv += ["--max-tokens-per-language", "1000", "--steer-new-tokens", "4"]
    assert main(argv) == 0
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "### Steering example" in summary
    assert "(1,000 tokens per language at most)" in summary
    evaluation = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert len(evaluation["random"]) == 1  # the real-model preset's one matched random set
    assert evaluation["baselines"] == {}  # no LAP/LAVE at this budget
    example = (out / "steering_example.md").read_text(encoding="utf-8")
    for target in ("fr", "es", "zh"):
        assert f"| {target} |" in example


def test_collect_shards_then_identify_stability(
    tiny_model, text_corpus: Path, tmp_path: Path, capsys
):
    model_dir = tiny_model("llama").path
    stats_path = tmp_path / "stats.safetensors"
    common = ["--model", str(model_dir), "--corpus", f"text:{text_corpus}"]
    common += ["--languages", "en,fr,zh,ru", "--seq-len", "16", "--no-progress"]
    assert main(["collect", *common, "--shards", "3", "--out", str(stats_path)]) == 0
    # a second run with fewer shards replaces the folder's shards (none left over)
    assert main(["collect", *common, "--shards", "4", "--out", str(stats_path)]) == 0
    assert main(["collect", *common, "--shards", "3", "--out", str(stats_path)]) == 0
    shard_paths = sorted((tmp_path / "stats.safetensors.shards").glob("*.safetensors"))
    assert [p.name for p in shard_paths] == [f"shard{i}.safetensors" for i in range(3)]
    shards = [tl_lape.ActivationStats.load(p) for p in shard_paths]
    stats = tl_lape.ActivationStats.load(stats_path)
    assert torch.equal(sum(s.active_counts for s in shards), stats.active_counts)
    assert torch.equal(sum(s.n_tokens for s in shards), stats.n_tokens)

    out, stab = tmp_path / "n.json", tmp_path / "stability.json"
    args = ["identify", str(stats_path), "--top-rate", "0.1", "--out", str(out)]
    assert main([*args, "--stability", str(stab), "--stability-boot", "6"]) == 0
    data = json.loads(stab.read_text())
    neurons = tl_lape.LanguageNeurons.load(out)
    assert data["metadata"]["n_boot"] == 6 and data["metadata"]["n_shards"] == 3
    for lang in neurons.languages:
        assert data["per_language"][lang]["neurons"] == neurons.counts()[lang]
        listed = sum(len(v) for v in data["selected_frequency"][lang].values())
        assert listed == neurons.counts()[lang]
    assert "Selection stability" in capsys.readouterr().out
    assert data["format"] == "tl_lape.SelectionStability"  # tl_lape's: replaced without --overwrite
    assert main([*args, "--stability", str(stab), "--stability-boot", "6"]) == 0

    # Without shards: refused before anything is written, saying how to make them.
    lone = tmp_path / "lone.safetensors"
    stats.save(lone)
    out2 = tmp_path / "n2.json"
    capsys.readouterr()
    argv = ["identify", str(lone), "--out", str(out2), "--stability", str(tmp_path / "s2.json")]
    assert main(argv) == 2
    assert "collect --shards 8" in capsys.readouterr().err
    assert not out2.exists()
    argv = ["collect", *common, "--shards", "2", "--resume", str(tmp_path / "c.pt")]
    assert main([*argv, "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--shards does not work with --resume" in capsys.readouterr().err
