"""The two windowing policies: collection (EOS between texts, no BOS) and evaluation (EOS BOS)."""

import pytest
import torch
from tiny_models import SENTENCES

from tl_lape._adapter import adapt
from tl_lape.collection.windows import (
    COLLECTION,
    WindowPolicy,
    WindowSettings,
    evaluation_policy,
    iter_window_batches,
    token_windows,
)
from tl_lape.errors import LapeError
from tl_lape.experiments import evaluation

SEQ_LEN = 8


@pytest.fixture(scope="module")
def bridge(tiny_model):
    return tiny_model("llama").bridge


def _stream(bridge, texts, separator):
    ids = [bridge.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    out: list[int] = []
    for piece in (p for p in ids if p):
        if out:
            out += separator
        out += piece
    return torch.tensor(out)


def test_evaluation_windows_are_bos_then_stream_with_eos_bos_between_texts(bridge):
    tok = bridge.tokenizer
    texts = SENTENCES["en"]
    stream = _stream(bridge, texts, [tok.eos_token_id, tok.bos_token_id])
    w = token_windows(bridge, texts, seq_len=SEQ_LEN, prepend_bos=True)
    assert (w[:, 0] == tok.bos_token_id).all()
    assert torch.equal(w[:, 1:].flatten(), stream[: w.shape[0] * (SEQ_LEN - 1)])
    assert torch.equal(w, token_windows(bridge, texts, seq_len=SEQ_LEN, policy=evaluation_policy()))
    assert evaluation.token_windows is token_windows  # the old import keeps working


def test_collection_policy_gives_the_windows_collection_counts(bridge):
    texts = SENTENCES["fr"]
    stream = _stream(bridge, texts, [bridge.tokenizer.eos_token_id])
    settings = WindowSettings(SEQ_LEN, 2, None, prepend_bos=False, drop_last=True)
    assert settings.policy == COLLECTION
    batches = list(iter_window_batches(adapt(bridge), {"fr": texts}, settings))
    counted = torch.cat([b.tokens for b in batches])
    assert torch.equal(counted.flatten(), stream[: counted.numel()])
    assert torch.equal(counted, token_windows(bridge, texts, seq_len=SEQ_LEN, policy=COLLECTION))


def test_policy_checks_its_tokens():
    with pytest.raises(LapeError, match="separator tokens must be 'eos' or 'bos'; received 'pad'"):
        WindowPolicy(separator=("eos", "pad"))
