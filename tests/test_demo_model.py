"""Tests for the shipped demo model (tl_lape.sources.demo_model) and the script that trains it."""

import importlib.util
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tl_lape.errors import LapeError
from tl_lape.sources import demo_model as demo
from tl_lape.sources.corpora import PAPER_LANGUAGES, load_debian_handbook
from tl_lape.sources.demo_model import demo_model_path, demo_training_log, load_demo_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_demo_model.py"


@pytest.fixture(scope="module")
def model() -> Any:
    return load_demo_model()


def test_files_are_complete_16_bit_and_small() -> None:
    path = demo_model_path()
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_log.json"} <= names
    assert sum(p.stat().st_size for p in path.iterdir()) <= 25_000_000
    with safe_open(str(path / "model.safetensors"), framework="pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}  # noqa: SIM118
    assert dtypes == {"BF16"}


def test_is_a_llama_style_gated_model_with_the_logged_config(model: Any) -> None:
    args = demo_training_log()["args"]
    config = json.loads((demo_model_path() / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "llama"
    assert config["hidden_act"] == "silu"
    assert config["tie_word_embeddings"] is True
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.d_mlp, cfg.n_heads) == (
        args["n_layers"],
        args["d_model"],
        args["d_mlp"],
        args["n_heads"],
    )
    assert cfg.gated_mlp is True
    assert cfg.act_fn == "silu"
    assert cfg.d_vocab == len(model.tokenizer)
    assert cfg.normalization_type == "RMS"
    assert cfg.positional_embedding_type == "rotary"
    assert type(model.original_model).__name__ == "LlamaForCausalLM"
    # The hooks LAPE reads exist for every layer, with the MLP width.
    tokens = model.to_tokens("apt-get install debian-handbook")
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("mlp.hook_pre"))
    assert len(cache) == cfg.n_layers
    assert cache["blocks.0.mlp.hook_pre"].shape == (1, tokens.shape[1], cfg.d_mlp)


def test_tokenizer_prepends_bos_and_round_trips(model: Any) -> None:
    tokenizer = model.tokenizer
    bos = tokenizer.bos_token_id
    assert bos is not None and tokenizer.eos_token_id is not None and bos != tokenizer.eos_token_id
    for text in ["Bonjour le monde", "软件包管理系统", "パッケージ", "Gói phần mềm", "apt"]:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == bos and bos not in ids[1:], text
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        tokens = model.to_tokens(text)
        assert tokens[0, 0].item() == bos and tokens[0].tolist().count(bos) == 1


def _unigram_nll(counts: Counter, total: int, vocab: int, ids: list[int]) -> float:
    return -sum(math.log((counts.get(t, 0) + 1) / (total + vocab)) for t in ids) / len(ids)


def test_heldout_loss_beats_unigram_baseline(model: Any, handbook_cache: Path) -> None:
    tokenizer = model.tokenizer
    train = load_debian_handbook(PAPER_LANGUAGES, "train", cache_dir=handbook_cache)
    heldout = load_debian_handbook(PAPER_LANGUAGES, "heldout", cache_dir=handbook_cache)
    vocab = len(tokenizer)
    for lang in PAPER_LANGUAGES:
        counts = Counter(
            t for ids in tokenizer(train[lang], add_special_tokens=False)["input_ids"] for t in ids
        )
        total = sum(counts.values())
        # Twelve held-out paragraphs of at least 40 tokens, cut to 128 tokens after <s>.
        rows = [ids[:129] for ids in tokenizer(heldout[lang])["input_ids"] if len(ids) > 40][:12]
        assert len(rows) == 12, lang
        model_nll, unigram_nll = [], []
        with torch.inference_mode():
            for ids in rows:
                tokens = torch.tensor([ids])
                logits = model(tokens)  # [1, pos, d_vocab]
                logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)  # [pos-1, d_vocab]
                model_nll.append(-logp.gather(-1, tokens[0, 1:, None]).mean().item())
                unigram_nll.append(_unigram_nll(counts, total, vocab, ids[1:]))
        model_mean = sum(model_nll) / len(model_nll)
        unigram_mean = sum(unigram_nll) / len(unigram_nll)
        assert model_mean < unigram_mean - 0.5, (lang, model_mean, unigram_mean)


def test_training_log_reports_heldout_losses_per_language() -> None:
    log = demo_training_log()
    assert set(log["heldout"]) == set(PAPER_LANGUAGES)
    for lang, entry in log["heldout"].items():
        assert entry["heldout_loss"] < entry["unigram_baseline"], lang
    assert len(log["losses"]) == log["steps_done"]
    first, last = log["losses"][0]["loss"], log["losses"][-1]["loss"]
    assert last < first - 3.0


def test_offline_context_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    with demo.hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ
    assert os.environ["TRANSFORMERS_OFFLINE"] == "0"


def test_missing_model_files_give_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "demo_model_path", lambda: tmp_path)
    with pytest.raises(LapeError, match=r"missing \['config.json', 'model.safetensors'"):
        load_demo_model()


@pytest.mark.slow
def test_training_script_runs_end_to_end(
    tmp_path: Path, handbook_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TL_LAPE_CACHE", str(handbook_cache))
    spec = importlib.util.spec_from_file_location("train_demo_model", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "model"
    argv = ["--out", str(out), "--languages", "fr", "vi", "--vocab-size", "400"]
    argv += ["--n-layers", "1", "--d-model", "32", "--d-mlp", "64", "--n-heads", "2"]
    argv += ["--seq-len", "32", "--windows-per-language", "2", "--steps", "6", "--warmup", "2"]
    argv += ["--monitor-every", "3", "--monitor-paragraphs", "2", "--max-minutes", "0"]
    argv += ["--dropout", "0.1"]
    script.main(argv)
    log = json.loads((out / "training_log.json").read_text(encoding="utf-8"))
    assert log["steps_done"] == 6 and len(log["losses"]) == 6
    assert log["args"]["dropout"] == 0.1
    assert [m["step"] for m in log["monitor"]] == [3, 6]
    assert set(log["monitor"][0]) == {"step", "fr", "vi"}
    assert set(log["heldout"]) == {"fr", "vi"}
    assert log["corpus"]["vi"]["train_tokens"] > 0
    from transformers import AutoTokenizer, LlamaForCausalLM

    reloaded = LlamaForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 1 and reloaded.config.intermediate_size == 64
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("Bonjour")["input_ids"][0] == tokenizer.bos_token_id
    # --replay reruns the logged settings and learning rates, reproducing the losses exactly.
    script.main(["--out", str(tmp_path / "again"), "--replay", str(out / "training_log.json")])
    again = json.loads((tmp_path / "again" / "training_log.json").read_text(encoding="utf-8"))
    assert again["args"]["n_layers"] == 1 and again["args"]["languages"] == ["fr", "vi"]
    assert [x["loss"] for x in again["losses"]] == [x["loss"] for x in log["losses"]]
