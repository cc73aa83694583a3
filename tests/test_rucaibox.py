"""Interop with the neuron sets released with the LAPE paper (../shared/reference/rucaibox-neurons).

The facts checked here are those listed in ../shared/reference/README.md.
"""

from pathlib import Path

import pytest
import torch

from tl_lape import LanguageNeurons, LapeError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "rucaibox-neurons"

SIX = ("en", "zh", "fr", "es", "vi", "id")
SEVEN = (*SIX, "ja")
# file -> (languages in file order, n_layers, d_mlp), from the reference README's table.
FILES = {
    "LLaMA-2-7B.neuron.pth": (SEVEN, 32, 11008),
    "LLaMA-2-13B.neuron.pth": (SEVEN, 40, 13824),
    "LLaMA-2-70B.neuron.pth": (SIX, 80, 28672),
    "BLOOM-7B.neuron.pth": (SIX, 30, 16384),
    "Mistral-7B.neuron.pth": (SIX, 32, 14336),
    "OPT-6.7B.neuron.pth": (SIX, 32, 16384),
    "Phi-2-2.7B.neuron.pth": (SIX, 32, 10240),
}

pytestmark = pytest.mark.skipif(
    not REFERENCE.is_dir(),
    reason=f"reference neuron files not found at {REFERENCE} (clone ../shared beside the repo)",
)


def load(name: str) -> LanguageNeurons:
    languages, n_layers, d_mlp = FILES[name]
    return LanguageNeurons.from_rucaibox(
        REFERENCE / name, languages, n_layers=n_layers, d_mlp=d_mlp
    )


def test_every_reference_file_is_known() -> None:
    present = sorted(p.name for p in REFERENCE.glob("*.neuron.pth"))
    assert present == sorted(FILES)


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_file_loads_and_round_trips(name: str, tmp_path: Path) -> None:
    languages, n_layers, d_mlp = FILES[name]
    ln = load(name)
    raw = torch.load(REFERENCE / name, weights_only=True)
    assert ln.languages == languages
    assert (ln.n_layers, ln.d_mlp) == (n_layers, d_mlp)
    # Every (lang, layer) entry survives as is: the released files are sorted and duplicate-free.
    for k, lang in enumerate(languages):
        for layer in range(n_layers):
            assert ln.indices(lang, layer).tolist() == raw[k][layer].tolist()
    assert ln.total() == sum(t.numel() for per_layer in raw for t in per_layer)
    ln.check_compatible(n_layers, d_mlp)

    out = tmp_path / name
    ln.to_rucaibox(out)
    again = torch.load(out, weights_only=True)
    assert len(again) == len(raw)
    for mine, theirs in zip(again, raw, strict=True):
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs, strict=True):
            assert a.dtype == torch.int64
            assert torch.equal(a, b)
    assert LanguageNeurons.from_rucaibox(out, languages, d_mlp=d_mlp) == ln

    ln.save(tmp_path / "n.json")
    assert LanguageNeurons.load(tmp_path / "n.json") == ln


def test_llama2_7b_facts() -> None:
    ln = load("LLaMA-2-7B.neuron.pth")
    assert ln.counts() == {
        "en": 95,
        "zh": 583,
        "fr": 1022,
        "es": 838,
        "vi": 836,
        "id": 1068,
        "ja": 582,
    }
    assert ln.total() == 5024
    per_layer = ln.counts_per_layer().sum(dim=0)
    assert int(per_layer[0]) == 1144
    assert int(per_layer[1]) == 160
    assert ln.indices("zh", 4).tolist() == [6147, 9114, 9292]


def test_bloom_7b_facts() -> None:
    ln = load("BLOOM-7B.neuron.pth")
    assert ln.total() == 6070
    assert int(ln.counts_per_layer().sum(dim=0)[-1]) == 1837


def test_a_set_for_another_model_is_refused() -> None:
    ln = load("LLaMA-2-7B.neuron.pth")
    # LLaMA-2-7B's set on Mistral-7B: same depth, wider MLP -> would silently hit other neurons.
    with pytest.raises(LapeError, match=r"d_mlp=11008, but the model has d_mlp=14336"):
        ln.check_compatible(32, 14336)
    # ... and on LLaMA-2-13B: deeper and wider.
    with pytest.raises(LapeError, match=r"n_layers=32, but the model has n_layers=40"):
        ln.check_compatible(40, 13824)
    # Loading with a too narrow d_mlp is the index-out-of-bounds crash, caught at load time.
    with pytest.raises(LapeError, match=r"neuron index 11007, which does not fit d_mlp=10240"):
        LanguageNeurons.from_rucaibox(REFERENCE / "LLaMA-2-7B.neuron.pth", SEVEN, d_mlp=10240)


def test_wrong_language_count_is_refused() -> None:
    with pytest.raises(LapeError, match=r"holds 7 languages but languages names 6"):
        LanguageNeurons.from_rucaibox(REFERENCE / "LLaMA-2-7B.neuron.pth", SIX)


def test_default_d_mlp_is_a_lower_bound() -> None:
    ln = LanguageNeurons.from_rucaibox(REFERENCE / "LLaMA-2-7B.neuron.pth", SEVEN)
    assert ln.d_mlp == 11008  # the largest index in this file happens to be 11007
    ln = LanguageNeurons.from_rucaibox(REFERENCE / "Phi-2-2.7B.neuron.pth", SIX)
    assert ln.d_mlp <= 10240
