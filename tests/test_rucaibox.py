"""Interop with the neuron sets released with the LAPE paper (../shared/reference/rucaibox-neurons).

The facts checked here are those listed in ../shared/reference/README.md.
"""

from pathlib import Path

import pytest
import torch
from tiny_models import build_toy_model

from tl_lape import LanguageNeurons, LapeError, deactivation_hooks

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


def test_without_a_width_the_width_is_unknown() -> None:
    # The largest index says nothing certain about the width: it is not guessed from it.
    ln = LanguageNeurons.from_rucaibox(REFERENCE / "LLaMA-2-7B.neuron.pth", SEVEN)
    assert ln.d_mlp is None
    assert ln == LanguageNeurons.from_rucaibox(REFERENCE / "LLaMA-2-7B.neuron.pth", SEVEN)
    assert ln != load("LLaMA-2-7B.neuron.pth")
    ln.check_compatible(32, 11008)
    with pytest.raises(
        LapeError, match=r"neuron indices up to 11007, but the model has d_mlp=10240"
    ):
        ln.check_compatible(32, 10240)
    with pytest.raises(LapeError, match=r"mask\(\) needs the MLP width.*for_model\(model\)"):
        ln.mask("en")


# file -> the largest neuron index in it; four of seven lie below d_mlp - 1, so a width taken as
# the largest index + 1 would be wrong for them (issue 13, bug 1).
MAX_INDEX = {
    "LLaMA-2-7B.neuron.pth": 11007,
    "LLaMA-2-13B.neuron.pth": 13823,
    "LLaMA-2-70B.neuron.pth": 28669,
    "BLOOM-7B.neuron.pth": 16381,
    "Mistral-7B.neuron.pth": 14332,
    "OPT-6.7B.neuron.pth": 16382,
    "Phi-2-2.7B.neuron.pth": 10239,
}


def test_four_released_files_have_their_largest_index_below_d_mlp_minus_one() -> None:
    found = {
        name: LanguageNeurons.from_rucaibox(REFERENCE / name, FILES[name][0]).max_index()
        for name in FILES
    }
    assert found == MAX_INDEX
    assert sum(found[name] < FILES[name][2] - 1 for name in FILES) == 4


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_released_file_applies_to_a_model_of_its_real_width(name: str) -> None:
    """Bug 1: loaded as the docs show (no width), every file hooks a model of its real shape."""
    languages, n_layers, d_mlp = FILES[name]
    model = build_toy_model(n_layers=n_layers, d_mlp=d_mlp)
    released = LanguageNeurons.from_rucaibox(REFERENCE / name, languages)
    fitted = released.for_model(model)
    assert (fitted.n_layers, fitted.d_mlp) == (n_layers, d_mlp)
    assert fitted == load(name)
    assert LanguageNeurons.from_rucaibox(REFERENCE / name, languages, model=model) == fitted
    assert fitted.for_model(model) is fitted

    # The hooks of the width-less set zero exactly the released neurons of the real model.
    tokens = torch.arange(4).unsqueeze(0)
    names = [f"blocks.{layer}.mlp.hook_post" for layer in range(n_layers)]

    def run(fwd_hooks: list) -> dict[str, torch.Tensor]:
        seen: dict[str, torch.Tensor] = {}

        def record(act: torch.Tensor, *, hook) -> None:
            seen[hook.name] = act.detach().clone()

        model.run_with_hooks(tokens, fwd_hooks=fwd_hooks + [(n, record) for n in names])
        return seen

    clean = run([])
    chosen = fitted.union()  # n_layers d_mlp
    ablated = run(deactivation_hooks(released, languages, model=model))
    # Layer 0 sees the clean input: exactly the chosen neurons are zeroed there.
    assert torch.equal(ablated[names[0]], clean[names[0]].masked_fill(chosen[0], 0.0))
    for layer, hook_name in enumerate(names):
        assert not bool(ablated[hook_name][..., chosen[layer]].any())
    # The set with its width recorded gives the same run.
    again = run(deactivation_hooks(fitted, languages, model=model))
    assert all(torch.equal(again[n], ablated[n]) for n in names)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
