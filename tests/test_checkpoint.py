"""Resumable collection: identical results after a SIGKILL, refusal of foreign checkpoints."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tiny_models import SENTENCES

from tl_lape import LapeError
from tl_lape.collection.checkpoint import CollectionCheckpoint
from tl_lape.collection.engine import collect_activation_stats

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN, BATCH = 8, 2


def token_corpus(d_vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "en": torch.randint(3, d_vocab, (8 * 23 + 5,), generator=gen),  # 23 windows + 5 dropped
        "fr": torch.randint(3, d_vocab, (8 * 9,), generator=gen),
    }


def assert_identical(a, b) -> None:
    assert a.languages == b.languages
    assert torch.equal(a.n_tokens, b.n_tokens)
    assert torch.equal(a.active_counts, b.active_counts)
    assert torch.equal(a.activation_sums, b.activation_sums)  # bitwise, not approximately
    assert a.metadata == b.metadata


def test_uninterrupted_run_equals_collect_and_finished_checkpoint_is_reused(tiny_model, tmp_path):
    bridge = tiny_model("llama").bridge
    corpus = token_corpus(bridge.cfg.d_vocab)
    kwargs = {"seq_len": SEQ_LEN, "batch_size": BATCH, "progress": False}
    reference = collect_activation_stats(bridge, corpus, **kwargs)
    path = tmp_path / "run.ckpt"
    stats = collect_activation_stats(
        bridge, corpus, checkpoint_path=path, checkpoint_every=3, **kwargs
    )
    assert_identical(stats, reference)
    checkpoint = CollectionCheckpoint.load(path)
    assert checkpoint.finished
    assert checkpoint.next_batch == 12 + 5  # en: 23 windows in 12 batches, fr: 9 in 5

    forward_passes = []
    with bridge.hooks(
        fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: forward_passes.append(1))]
    ):
        again = collect_activation_stats(bridge, corpus, checkpoint_path=path, **kwargs)
    assert forward_passes == []  # the finished checkpoint answered; the model did not run
    assert_identical(again, reference)


CHILD = textwrap.dedent(
    """
    import os, sys, time
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from tl_lape.collection.engine import collect_activation_stats

    model_dir, checkpoint, n_threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(n_threads)
    bridge = TransformerBridge.boot_transformers(model_dir, device="cpu")
    bridge.eval()
    gen = torch.Generator().manual_seed(1)
    d_vocab = bridge.cfg.d_vocab
    corpus = {
        "en": torch.randint(3, d_vocab, (8 * 23 + 5,), generator=gen),
        "fr": torch.randint(3, d_vocab, (8 * 9,), generator=gen),
    }

    def stall_once_checkpointed(act, hook):
        # Keeps the process busy after its first checkpoint, so that the SIGKILL lands mid-run.
        if os.path.exists(checkpoint):
            time.sleep(60)

    collect_activation_stats(
        bridge, corpus, checkpoint_path=checkpoint, checkpoint_every=3, seq_len=8, batch_size=2,
        progress=False, fwd_hooks=[("blocks.0.hook_resid_pre", stall_once_checkpointed)],
    )
    """
)


def test_resume_after_sigkill_equals_uninterrupted_run(tiny_model, tmp_path):
    tm = tiny_model("llama")
    corpus = token_corpus(tm.bridge.cfg.d_vocab)
    path = tmp_path / "run.ckpt"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [sys.executable, str(script), str(tm.path), str(path), str(torch.get_num_threads())],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not path.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert path.exists(), child.stderr.read().decode()[-3000:] if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stderr:
            child.stderr.close()

    interrupted = CollectionCheckpoint.load(path)
    assert not interrupted.finished
    assert 0 < interrupted.next_batch < 17
    assert 0 < int(interrupted.n_tokens.sum()) < (23 + 9) * SEQ_LEN

    def idle(act, hook):  # the same hook name as the killed run, without the stall
        return None

    kwargs = {
        "seq_len": SEQ_LEN,
        "batch_size": BATCH,
        "progress": False,
        "fwd_hooks": [("blocks.0.hook_resid_pre", idle)],
    }
    resumed = collect_activation_stats(
        tm.bridge, corpus, checkpoint_path=path, checkpoint_every=3, **kwargs
    )
    reference = collect_activation_stats(tm.bridge, corpus, **kwargs)
    assert_identical(resumed, reference)
    assert CollectionCheckpoint.load(path).finished


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"seq_len": 4}, r"settings\.seq_len: 8 in the checkpoint, 4 now"),
        ({"batch_size": 3}, r"settings\.batch_size: 2 in the checkpoint, 3 now"),
        ({"max_tokens_per_language": 40}, r"settings\.max_tokens_per_language: None"),
        ({"corpus": "other"}, r"corpus\.token_ids_sha256\.en"),
        ({"corpus": "languages"}, r"corpus\.languages"),
        ({"model": "qwen2"}, r"model\.name|model\.weights_sample_sha256"),
    ],
)
def test_refuses_checkpoint_of_another_run(tiny_model, tmp_path, change, match):
    bridge = tiny_model("llama").bridge
    corpus = token_corpus(bridge.cfg.d_vocab)
    kwargs = {"seq_len": SEQ_LEN, "batch_size": BATCH, "progress": False}
    path = tmp_path / "run.ckpt"
    collect_activation_stats(bridge, corpus, checkpoint_path=path, checkpoint_every=5, **kwargs)
    before = path.read_bytes()

    model = bridge
    if change.get("model"):
        model = tiny_model(change["model"]).bridge
    if change.get("corpus") == "other":
        corpus = {**corpus, "en": corpus["en"].flip(0)}
    elif change.get("corpus") == "languages":
        corpus = {"fr": corpus["fr"], "en": corpus["en"]}
    kwargs.update({k: v for k, v in change.items() if k not in ("model", "corpus")})
    with pytest.raises(LapeError, match=match) as info:
        collect_activation_stats(model, corpus, checkpoint_path=path, **kwargs)
    assert "delete the checkpoint" in str(info.value)
    assert path.read_bytes() == before  # refused before any work: nothing written


def test_refuses_text_corpus_that_tokenizes_differently(tiny_model, tmp_path):
    bridge = tiny_model("llama").bridge
    kwargs = {"seq_len": 6, "batch_size": 1, "progress": False}
    path = tmp_path / "run.ckpt"
    corpus = {"en": SENTENCES["en"], "fr": SENTENCES["fr"]}
    collect_activation_stats(bridge, corpus, checkpoint_path=path, **kwargs)
    other = {"en": SENTENCES["en"][::-1], "fr": SENTENCES["fr"]}
    with pytest.raises(LapeError, match="belongs to another corpus: the token ids of its first"):
        collect_activation_stats(bridge, other, checkpoint_path=path, **kwargs)
    # The same text again is accepted (answered by the finished checkpoint).
    again = collect_activation_stats(bridge, corpus, checkpoint_path=path, **kwargs)
    assert_identical(again, collect_activation_stats(bridge, corpus, **kwargs))


def test_bad_checkpoint_files_and_settings(tiny_model, tmp_path):
    bridge = tiny_model("llama").bridge
    corpus = token_corpus(bridge.cfg.d_vocab)
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(b"not a checkpoint at all")
    with pytest.raises(LapeError, match=r"not a readable collection checkpoint.*delete it"):
        collect_activation_stats(
            bridge, corpus, checkpoint_path=damaged, seq_len=SEQ_LEN, progress=False
        )
    assert damaged.read_bytes() == b"not a checkpoint at all"

    stats_file = tmp_path / "stats.safetensors"
    collect_activation_stats(bridge, corpus, seq_len=SEQ_LEN, progress=False).save(stats_file)
    with pytest.raises(LapeError, match="not a tl_lape collection checkpoint"):
        CollectionCheckpoint.load(stats_file)

    for every in (0, -1, True):
        with pytest.raises(LapeError, match=f"checkpoint_every must be a positive int.*{every!r}"):
            collect_activation_stats(
                bridge,
                corpus,
                checkpoint_path=tmp_path / "x.ckpt",
                checkpoint_every=every,
                progress=False,
            )
    with pytest.raises(LapeError, match="does not exist"):
        collect_activation_stats(
            bridge,
            corpus,
            checkpoint_path=tmp_path / "no" / "dir" / "x.ckpt",
            seq_len=SEQ_LEN,
            progress=False,
        )
    assert not (tmp_path / "x.ckpt").exists()


def small_checkpoint() -> CollectionCheckpoint:
    gen = torch.Generator().manual_seed(0)
    return CollectionCheckpoint(
        fingerprint={"model": {"name": "m", "d_mlp": 3}, "share": {"rank": 0, "world_size": 1}},
        next_batch=7,
        tokens_sha256="ab" * 32,
        finished=False,
        n_tokens=torch.tensor([40, 24]),
        n_windows=torch.tensor([5, 3]),
        active_counts=torch.randint(0, 24, (2, 3, 2), generator=gen),
        activation_sums=torch.rand(2, 3, 2, generator=gen, dtype=torch.float64),
    )


def test_checkpoint_file_round_trips(tmp_path):
    checkpoint = small_checkpoint()
    path = tmp_path / "run.ckpt"
    checkpoint.save(path)
    back = CollectionCheckpoint.load(path)
    assert back.fingerprint == checkpoint.fingerprint
    assert (back.next_batch, back.tokens_sha256, back.finished) == (7, "ab" * 32, False)
    for name in ("n_tokens", "n_windows", "active_counts", "activation_sums"):
        assert torch.equal(getattr(back, name), getattr(checkpoint, name)), name
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]  # no temporary file left


def test_checkpoint_with_any_byte_flipped_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    small_checkpoint().save(path)
    good = path.read_bytes()
    damaged = tmp_path / "damaged.ckpt"
    for i in range(len(good)):
        damaged.write_bytes(good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :])
        with pytest.raises(LapeError) as info:
            CollectionCheckpoint.load(damaged)
        message = str(info.value)
        assert "damaged.ckpt" in message and "\n" not in message, (i, message)
        assert "delete it to start the collection afresh" in message, (i, message)


def test_damaged_checkpoint_is_refused_before_resuming(tiny_model, tmp_path):
    bridge = tiny_model("llama").bridge
    corpus = token_corpus(bridge.cfg.d_vocab)
    kwargs = {"seq_len": SEQ_LEN, "batch_size": BATCH, "progress": False}
    path = tmp_path / "run.ckpt"
    collect_activation_stats(bridge, corpus, checkpoint_path=path, checkpoint_every=5, **kwargs)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a bit of the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(LapeError, match=r"run\.ckpt' is damaged: the checksum of its content"):
        collect_activation_stats(bridge, corpus, checkpoint_path=path, **kwargs)
    assert path.read_bytes() == bytes(data)  # left alone for the user to inspect


def test_unreadable_weights_leave_the_fingerprint_without_a_sample_and_say_so(caplog):
    from tl_lape.collection.checkpoint import _weights_sample

    meta = torch.nn.Linear(4, 4, device="meta")
    with caplog.at_level("WARNING", logger="tl_lape.collection.checkpoint"):
        assert _weights_sample(meta) == (None, None)
        assert _weights_sample(object()) == (None, None)
    assert "meta tensor" in caplog.text and "no readable parameters" in caplog.text
    with pytest.raises(ZeroDivisionError):  # anything else is a bug, not a missing sample

        class Broken(torch.nn.Module):
            def parameters(self, recurse=True):
                raise ZeroDivisionError

        _weights_sample(Broken())
