"""The steering study's prompts from held-out text, and its few-shot examples from train text."""

from pathlib import Path

import pytest

from tl_lape import LapeError
from tl_lape.experiments.steering_prompts import (
    few_shot_examples,
    few_shot_prompt,
    heldout_prompts,
    neutral_strings,
    text_supply,
)
from tl_lape.sources.corpora import PAPER_LANGUAGES, load_debian_handbook


@pytest.fixture(scope="module")
def heldout(handbook_cache: Path) -> dict[str, list[str]]:
    return load_debian_handbook(PAPER_LANGUAGES, split="heldout", cache_dir=handbook_cache)


@pytest.fixture(scope="module")
def train(handbook_cache: Path) -> dict[str, list[str]]:
    return load_debian_handbook(PAPER_LANGUAGES, split="train", cache_dir=handbook_cache)


def test_48_fresh_prompts_per_setting_from_the_handbook_alone(heldout, train):
    """The handbook's held-out English gives 16 development and 48 fresh prompts per setting,
    disjoint, each English prompt the start of a held-out paragraph and no train paragraph."""
    p = heldout_prompts([heldout], n_dev=16, n_fresh=48, n_words=8, seed=0)
    assert p == heldout_prompts([heldout], n_dev=16, n_fresh=48, n_words=8, seed=0)
    for setting in ("english", "neutral"):
        dev, fresh = p["dev"][setting], p["fresh"][setting]
        assert (len(dev), len(fresh)) == (16, 48)
        assert len(set(dev + fresh)) == 64  # distinct, so the phases are disjoint
    for prompt in p["dev"]["english"] + p["fresh"]["english"]:
        assert len(prompt.split()) == 8
        assert any(t.startswith(prompt) for t in heldout["en"])
        assert not any(t.startswith(prompt) for t in train["en"])
    letters = sum(c.isalpha() for s in p["fresh"]["neutral"] for c in s)
    assert all(neutral_strings([s]) == [s] for s in p["fresh"]["neutral"])
    assert letters / sum(len(s) for s in p["fresh"]["neutral"]) < 0.8  # paths and numbers
    other = heldout_prompts([heldout], n_dev=16, n_fresh=48, seed=1)
    assert other["fresh"]["english"] != p["fresh"]["english"]


def test_too_little_text_is_refused_with_what_it_gives(heldout):
    with pytest.raises(LapeError, match=r"gives \d+ distinct english prompts; n_dev \+ n_fresh"):
        heldout_prompts([{"en": heldout["en"][:20]}], n_dev=16, n_fresh=48)
    with pytest.raises(LapeError, match="n_fresh must be a positive int; received 0"):
        heldout_prompts([heldout], n_dev=16, n_fresh=0)


def test_text_supply_per_language(heldout):
    supply = text_supply(heldout, PAPER_LANGUAGES)
    assert supply["en"]["paragraphs"] == len(heldout["en"])
    assert supply["vi"]["chars"] == sum(len(t) for t in heldout["vi"])
    # Every study language has held-out text for the fluency yardstick (natural-text NLL).
    assert min(s["paragraphs"] for s in supply.values()) >= 40


def test_few_shot_examples_come_from_train_text_and_never_from_evaluation_text(train, heldout):
    targets = ["fr", "zh", "vi"]
    evaluation = [t for lang in targets for t in heldout[lang]]
    ex = few_shot_examples(train, targets, k=3, exclude=evaluation)
    assert ex == few_shot_examples(train, targets, k=3, exclude=evaluation)
    for lang in targets:
        assert len(ex[lang]) == len(set(ex[lang])) == 3
        normalised = {" ".join(t.split()) for t in train[lang]}
        assert all(e in normalised and 20 <= len(e) <= 120 for e in ex[lang])
        assert not any(e in h or h in e for e in ex[lang] for h in heldout[lang])
    # An example that is also evaluation text is never chosen.
    banned = ex["fr"][0]
    again = few_shot_examples(train, ["fr"], k=3, exclude=[*evaluation, banned])
    assert banned not in again["fr"]
    assert few_shot_prompt(ex["fr"], "The server") == "\n".join(ex["fr"]) + "\nThe server"
    with pytest.raises(LapeError, match=r"'fr' has 1 paragraphs .* needs k=3"):
        few_shot_examples({"fr": ["Une phrase assez longue pour compter."]}, ["fr"], k=3)
