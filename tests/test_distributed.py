"""Data-parallel collection: 2 CPU processes (gloo) give the statistics of a single process."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tl_lape import LapeError
from tl_lape.collection.checkpoint import CollectionCheckpoint
from tl_lape.collection.distributed import rank_checkpoint_path
from tl_lape.collection.engine import collect_activation_stats
from tl_lape.collection.residual_means import ResidualMeans
from tl_lape.stats import ActivationStats

REPO = Path(__file__).resolve().parents[1]
WORLD = 2

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no gloo backend",
)

WORKER = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    from transformer_lens.model_bridge import TransformerBridge
    from tl_lape.collection.engine import collect_activation_stats

    model_dir, out_dir, init, rank, world, seq_len = sys.argv[1:7]
    rank, world = int(rank), int(world)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        bridge = TransformerBridge.boot_transformers(model_dir, device="cpu")
        bridge.eval()
        gen = torch.Generator().manual_seed(3)
        d_vocab = bridge.cfg.d_vocab
        corpus = {
            "en": torch.randint(3, d_vocab, (8 * 7 + 3,), generator=gen),  # 4 batches of <= 2
            "fr": torch.randint(3, d_vocab, (8 * 3,), generator=gen),  # 2 batches
            "zh": torch.randint(3, d_vocab, (8 * 1,), generator=gen),  # 1 batch: rank 0 only
        }
        # The process group is initialised: the one entry point splits the work.
        stats = collect_activation_stats(
            bridge, corpus, seq_len=int(seq_len), batch_size=2, progress=False,
            checkpoint_path=f"{out_dir}/run.ckpt", checkpoint_every=2,
        )
        stats.save(f"{out_dir}/rank{rank}.safetensors")
        with_means, means = collect_activation_stats(
            bridge, corpus, seq_len=int(seq_len), batch_size=2, progress=False,
            residual_means=True, group=dist.group.WORLD,
        )
        with_means.save(f"{out_dir}/rank{rank}.with-means.safetensors")
        means.save(f"{out_dir}/rank{rank}.means.safetensors")
    finally:
        dist.destroy_process_group()
    """
)


def corpus_for(d_vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return {
        "en": torch.randint(3, d_vocab, (8 * 7 + 3,), generator=gen),
        "fr": torch.randint(3, d_vocab, (8 * 3,), generator=gen),
        "zh": torch.randint(3, d_vocab, (8 * 1,), generator=gen),
    }


def launch(
    tmp_path: Path, model_dir: Path, seq_lens: list[int]
) -> list[subprocess.CompletedProcess]:
    """Run WORKER as ``len(seq_lens)`` processes of one gloo group, like torchrun would."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    init = f"file://{tmp_path / 'rendezvous'}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # no dependence on the host name resolving
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(model_dir),
                str(tmp_path),
                init,
                str(rank),
                str(len(seq_lens)),
                str(seq_len),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, seq_len in enumerate(seq_lens)
    ]
    results = []
    for proc in procs:
        try:
            _, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr))
    return results


@pytest.mark.slow
@needs_gloo
def test_two_processes_equal_one(tiny_model, tmp_path):
    tm = tiny_model("llama")
    results = launch(tmp_path, tm.path, [8] * WORLD)
    for rank, result in enumerate(results):
        assert result.returncode == 0, f"rank {rank}:\n{result.stderr[-3000:]}"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting, so that the matmuls round the same way
    try:
        single, single_means = collect_activation_stats(
            tm.bridge,
            corpus_for(tm.bridge.cfg.d_vocab),
            seq_len=8,
            batch_size=2,
            progress=False,
            residual_means=True,
        )
    finally:
        torch.set_num_threads(threads)

    for rank in range(WORLD):
        stats = ActivationStats.load(tmp_path / f"rank{rank}.safetensors")
        assert stats.languages == single.languages
        assert torch.equal(stats.n_tokens, single.n_tokens)
        assert torch.equal(stats.active_counts, single.active_counts)  # exactly
        # float64 sums added in another order: equal to float64 rounding.
        torch.testing.assert_close(
            stats.activation_sums, single.activation_sums, rtol=1e-12, atol=1e-12
        )
        assert stats.metadata == single.metadata
        # The same pass with residual means: the same statistics, and the means of the corpus.
        with_means = ActivationStats.load(tmp_path / f"rank{rank}.with-means.safetensors")
        assert torch.equal(with_means.active_counts, single.active_counts)
        assert torch.equal(with_means.n_tokens, single.n_tokens)
        means = ResidualMeans.load(tmp_path / f"rank{rank}.means.safetensors")
        assert means.languages == single_means.languages
        assert torch.equal(means.n_tokens, single_means.n_tokens)
        torch.testing.assert_close(means.sums, single_means.sums, rtol=1e-12, atol=1e-9)
        assert means.metadata == single_means.metadata
        # Each process checkpointed its own share, and only its share.
        share = CollectionCheckpoint.load(rank_checkpoint_path(tmp_path / "run.ckpt", rank, WORLD))
        assert share.finished
        assert share.fingerprint["share"] == {"rank": rank, "world_size": WORLD}
        assert 0 < int(share.n_tokens.sum()) < int(single.n_tokens.sum())

    shares = [
        CollectionCheckpoint.load(rank_checkpoint_path(tmp_path / "run.ckpt", r, WORLD))
        for r in range(WORLD)
    ]
    assert torch.equal(shares[0].active_counts + shares[1].active_counts, single.active_counts)
    assert shares[1].n_tokens[2] == 0  # zh's single batch went to rank 0


@pytest.mark.slow
@needs_gloo
def test_processes_with_different_settings_are_refused(tiny_model, tmp_path):
    results = launch(tmp_path, tiny_model("llama").path, [8, 4])
    for result in results:
        assert result.returncode != 0
        assert "LapeError: process 1 of 2 was given another run than process 0" in result.stderr
        assert "settings.seq_len: 8 vs 4" in result.stderr
    assert not list(tmp_path.glob("rank*.safetensors"))


def test_group_needs_an_initialised_process_group(tiny_model):
    bridge = tiny_model("llama").bridge
    assert not torch.distributed.is_initialized()
    with pytest.raises(LapeError, match=r"needs an initialised torch\.distributed process group"):
        collect_activation_stats(
            bridge, corpus_for(bridge.cfg.d_vocab), seq_len=8, group="my-group", progress=False
        )


def test_model_split_by_device_map_counts_identically(tiny_model, tmp_path):
    """A model dispatched over several devices (here CPU plus disk offload, the only split a
    CPU-only machine has) gives the counts of the same model on one device."""
    pytest.importorskip("accelerate")
    from transformer_lens.model_bridge import TransformerBridge

    tm = tiny_model("llama")
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    split = TransformerBridge.boot_transformers(
        str(tm.path), device_map=device_map, offload_folder=str(tmp_path / "offload")
    )
    split.eval()
    assert split.cfg.n_devices > 1
    corpus = corpus_for(tm.bridge.cfg.d_vocab)
    kwargs = {"seq_len": 8, "batch_size": 2, "progress": False}
    whole = collect_activation_stats(tm.bridge, corpus, **kwargs)
    stats = collect_activation_stats(split, corpus, **kwargs)
    assert torch.equal(stats.active_counts, whole.active_counts)
    assert torch.equal(stats.n_tokens, whole.n_tokens)
    torch.testing.assert_close(stats.activation_sums, whole.activation_sums, rtol=1e-12, atol=0)
