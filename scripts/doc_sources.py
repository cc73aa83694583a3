"""Where the model card's numbers come from (issue 20, point 7): recomputed from committed files.

Reads only files (no model is loaded, nothing is run through a network):

- ``benchmarks/results/2026-12-02-gemma-3-270m/``: ``neurons_1pct.json``, ``evaluation_*.json``,
  ``summary.json``, and ``summary.json`` as each of the two runs wrote it (commits a415783 and
  8d398a5, read with ``git show``);
- ``benchmarks/results/2026-12-02-gemma-steering/study.json``;
- the LAPE paper's released ``LLaMA-2-7B.neuron.pth`` (``--reference``, by default
  ``../shared/reference/rucaibox-neurons`` beside the repository; its sha256 is recorded);
- the SAE-LAPE paper's perplexity files are not in this repository: the numbers below are
  recorded from them with their provenance (``SAE_LAPE``); with ``--sae-lape-repo`` (a checkout of
  the repository named there) they are read again and checked.

Writes ``doc_sources.json`` and ``README.md`` to ``--out``. Deterministic: the same inputs give
byte-identical outputs.

Usage::

    python scripts/doc_sources.py --out benchmarks/results/2026-12-04-doc-sources
"""

import argparse
import hashlib
import json
import math
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEMMA = ROOT / "benchmarks/results/2026-12-02-gemma-3-270m"
STEERING = ROOT / "benchmarks/results/2026-12-02-gemma-steering"
LANGS = ["en", "zh", "fr", "es", "vi", "id", "ja"]
FIRST_SUMMARY_COMMIT = "a415783"  # summary.json as written by run 1 (statistics, 1%)
SECOND_SUMMARY_COMMIT = "8d398a5"  # summary.json as written by run 2 (--resume, 2% and 5%)

# The SAE-LAPE paper: "Sparse Autoencoders Can Capture Language-Specific Concepts Across Diverse
# Languages", arXiv 2507.11230. Its implementation's README calls itself the official one; the
# copy read here is github.com/rm-3284/language-specific-features at the commit below.
# Files: ppl/meta-llama/Llama-3.2-1B/openlanguagedata/flores_plus/normal/ppl.pt (no intervention)
# and .../neuron_intervention/fixed_0/ppl_<lang>.pt (written by shell/neuron_intervene_ppl.sh:
# that language's LAPE *neurons*, from mlp_acts_specific/.../lape_neuron.pt, set to 0 at
# model.layers.{0..15}.mlp.act_fn). Each holds, per evaluated language, 'perplexities' (one per
# FLORES+ devtest sentence: exp of the sentence's mean token NLL; 1,000 in the normal file and
# 1,001 in each intervened one, as stored, for --start 0 --end 1000) and
# 'mean_perplexity' (their arithmetic mean). Values: mean_perplexity, and the geometric mean of
# 'perplexities' (exp of the mean per-sentence NLL), read at full precision.
SAE_LAPE = {
    "paper": "Sparse Autoencoders Can Capture Language-Specific Concepts Across Diverse "
    "Languages, arXiv:2507.11230",
    "repository": "https://github.com/rm-3284/language-specific-features",
    "commit": "7090523bf220b1074a7d3281c86fd8c0bd8f38a5",
    "model": "meta-llama/Llama-3.2-1B",
    "corpus": "openlanguagedata/flores_plus, devtest, --start 0 --end 1000 (the files hold 1,000 "
    "per-sentence perplexities without intervention and 1,001 with, per language)",
    "n_sentences": {"normal": 1000, "own_deactivated": 1001},
    "what": "LAPE neurons (the paper's neuron baseline, selected over 15 languages), not SAE-LAPE "
    "features, set to 0 in all 16 layers; ratio = intervened / normal",
    "files": {
        "normal": (
            "ppl/meta-llama/Llama-3.2-1B/openlanguagedata/flores_plus/normal/ppl.pt",
            "3b2af3dc70e73d011d39b32c9ae3cabcbc2100cc",
        ),
        "en": ("eng_Latn", "English", "d2afbee9daaea286858e7f7cea08e58cf3288f3e"),
        "zh": ("cmn_Hans", "Chinese", "40f67ee6bc302fe23f0db460d9874ffbff612e37"),
        "fr": ("fra_Latn", "French", "18853c4d56265f07cf21f1fd6ccc74c97b2533d5"),
        "es": ("spa_Latn", "Spanish", "4c697c072a107eb4e1a81e58cc5ab4e279c4a7dd"),
        "vi": ("vie_Latn", "Vietnamese", "2fa41c9f6384c75a169eca69bed17dbe9b774a7e"),
        "ja": ("jpn_Jpan", "Japanese", "5fb6ed05a339c2399a91aa5374aeb4fcb2d84328"),
    },
}
SAE_LAPE_DIR = (
    "ppl/meta-llama/Llama-3.2-1B/openlanguagedata/flores_plus/neuron_intervention/fixed_0"
)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def _ranking(ratios: dict[str, float]) -> list[str]:
    return sorted(ratios, key=lambda k: -ratios[k])


def _spearman(a: dict[str, float], b: dict[str, float]) -> float:
    keys = sorted(a)
    ra = {k: i for i, k in enumerate(_ranking({k: a[k] for k in keys}))}
    rb = {k: i for i, k in enumerate(_ranking({k: b[k] for k in keys}))}
    n = len(keys)
    return 1 - 6 * sum((ra[k] - rb[k]) ** 2 for k in keys) / (n * (n * n - 1))


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> list[float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [centre - half, centre + half]


def layer_shares(reference: Path) -> dict:
    """Layer 0 of LLaMA-2-7B's released set and of Gemma's 1% set, in both units."""
    import torch

    gemma = _load(GEMMA / "neurons_1pct.json")
    n_layers = gemma["n_layers"]
    per_layer: dict[int, dict[str, set[int]]] = {k: {} for k in range(n_layers)}
    for lang, layers in gemma["neurons"].items():
        for layer, idx in layers.items():
            per_layer[int(layer)][lang] = set(idx)

    def summarise(per_layer_sets: dict[int, dict[str, set[int]]]) -> dict:
        memberships = [
            sum(len(s) for s in per_layer_sets[k].values()) for k in sorted(per_layer_sets)
        ]
        distinct = [len(set().union(*per_layer_sets[k].values())) for k in sorted(per_layer_sets)]
        return {
            "memberships_per_layer": memberships,
            "distinct_per_layer": distinct,
            "memberships_total": sum(memberships),
            "distinct_total": sum(distinct),
            "layer0_memberships": memberships[0],
            "layer0_distinct": distinct[0],
            "layer0_share_of_memberships": memberships[0] / sum(memberships),
            "layer0_share_of_distinct": distinct[0] / sum(distinct),
            "last_two_layers_distinct": sum(distinct[-2:]),
        }

    out = {"gemma_3_270m_1pct": {"file": str(GEMMA.relative_to(ROOT) / "neurons_1pct.json")}}
    out["gemma_3_270m_1pct"].update(summarise(per_layer))
    g = out["gemma_3_270m_1pct"]
    g["layers_1_to_6_distinct"] = sum(g["distinct_per_layer"][1:7])

    path = reference / "LLaMA-2-7B.neuron.pth"
    released = torch.load(path, weights_only=True)
    llama: dict[int, dict[str, set[int]]] = {
        k: {lang: set(released[i][k].tolist()) for i, lang in enumerate(LANGS)}
        for k in range(len(released[0]))
    }
    out["llama_2_7b_released"] = {
        "file": "LLaMA-2-7B.neuron.pth (released with the LAPE paper, Tang et al., ACL 2024; "
        "github.com/RUCAIBox/Language-Specific-Neurons); read from --reference",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "counts": {lang: sum(len(llama[k][lang]) for k in llama) for lang in LANGS},
    }
    out["llama_2_7b_released"].update(summarise(llama))
    out["units"] = (
        "memberships: (language, neuron) pairs, a neuron assigned to two languages counted twice "
        "(the per-language counts add up to this); distinct: neurons"
    )
    return out


def selectivity_ratios() -> dict:
    """LAPE's mean selectivity over the random sets', with both denominators, per budget."""
    summary = _load(GEMMA / "summary.json")
    out = {}
    for tag in ("1pct", "2pct", "5pct"):
        ev = _load(GEMMA / f"evaluation_{tag}.json")
        lape = _mean(ev["selectivity"])
        draws = ev["random_selectivity"]
        signed = _mean(x for d in draws for x in d)
        absolute = _mean(abs(x) for d in draws for x in d)
        reported = summary["budgets"][tag]["evaluation"]
        assert math.isclose(lape, reported["mean_selectivity"], rel_tol=1e-12)
        assert math.isclose(signed, reported["random_mean_selectivity"], rel_tol=1e-12)
        assert math.isclose(absolute, reported["random_mean_abs_selectivity"], rel_tol=1e-12)
        assert math.isclose(lape / absolute, reported["selectivity_ratio"], rel_tol=1e-12)
        out[tag] = {
            "lape_mean_selectivity": lape,
            "random_mean_selectivity_signed": signed,
            "random_mean_abs_selectivity": absolute,
            "ratio_over_mean_abs": lape / absolute,
            "ratio_over_signed_mean": lape / signed,
            "per_draw_ratio_over_mean_abs": [lape / _mean(abs(x) for x in d) for d in draws],
            "per_draw_ratio_over_signed_mean": [lape / _mean(d) for d in draws],
            "n_random": len(draws),
            "summary_json_selectivity_ratio": reported["selectivity_ratio"],
        }
    return out


def own_ratios(tag: str) -> dict[str, float]:
    ev = _load(GEMMA / f"evaluation_{tag}.json")
    lape = ev["lape"]
    return {
        lang: math.exp(lape["delta"][i][lape["languages"].index(lang)])
        for i, lang in enumerate(lape["deactivated"])
    }


def sae_lape(sae_repo: Path | None) -> dict:
    """The SAE-LAPE paper's LAPE-neuron deactivation on Llama-3.2-1B against Gemma's 1% set."""
    values = {
        # language: normal mean, intervened mean, normal geometric mean, intervened geometric mean
        "en": (40.093706072807315, 40.45011244763385, 30.791639448024593, 30.993285752507234),
        "zh": (49.4281595544815, 299.515034025842, 39.22920994207429, 193.2505727708082),
        "fr": (18.368652058124542, 31.812341640521954, 15.687609123567526, 26.385976577556413),
        "es": (25.235853157520292, 29.51214087759698, 20.90841892799933, 24.17556972074873),
        "vi": (44.934881813526154, 222.05390895306172, 33.5308427447754, 156.45475622309345),
        "ja": (32.67301502943039, 368.00726038068683, 28.00664164394873, 269.67036533722825),
    }
    if sae_repo is not None:
        import torch

        base = sae_repo / SAE_LAPE["files"]["normal"][0]
        normal = torch.load(base, weights_only=True)
        for lang, (code, name, _blob) in (
            (k, v) for k, v in SAE_LAPE["files"].items() if k != "normal"
        ):
            hit = torch.load(sae_repo / SAE_LAPE_DIR / f"ppl_{code}.pt", weights_only=True)
            got = (
                normal[name]["mean_perplexity"],
                hit[name]["mean_perplexity"],
                math.exp(_mean(math.log(p) for p in normal[name]["perplexities"])),
                math.exp(_mean(math.log(p) for p in hit[name]["perplexities"])),
            )
            for a, b in zip(got, values[lang], strict=True):
                assert math.isclose(a, b, rel_tol=1e-12), (lang, got, values[lang])
            counts = (len(normal[name]["perplexities"]), len(hit[name]["perplexities"]))
            assert counts == (1000, 1001), (lang, counts)
    llama = {lang: v[1] / v[0] for lang, v in values.items()}
    llama_geo = {lang: v[3] / v[2] for lang, v in values.items()}
    gemma_all = own_ratios("1pct")
    gemma = {lang: gemma_all[lang] for lang in llama}
    record = dict(SAE_LAPE)
    record["checked_against_files"] = sae_repo is not None
    record["mean_perplexity"] = {
        lang: {"normal": v[0], "own_deactivated": v[1]} for lang, v in values.items()
    }
    record["geometric_mean_perplexity"] = {
        lang: {"normal": v[2], "own_deactivated": v[3]} for lang, v in values.items()
    }
    return {
        "source": record,
        "llama_3_2_1b_own_ratio_of_mean_perplexity": llama,
        "llama_3_2_1b_own_ratio_of_geometric_mean_perplexity": llama_geo,
        "gemma_3_270m_1pct_own_ratio": gemma_all,
        "gemma_statistic": "exp(own-language NLL change), token-weighted over one window of 255 "
        "scored tokens per language (evaluation_1pct.json), the 1% set selected over 7 languages",
        "shared_languages": sorted(llama, key=LANGS.index),
        "ranking_llama_3_2_1b": _ranking(llama),
        "ranking_gemma_3_270m_1pct": _ranking(gemma),
        "spearman_rank_correlation": _spearman(llama, gemma),
        "not_in_llama_study": [lang for lang in LANGS if lang not in llama],
    }


def steering() -> dict:
    """The content judge per target, and the sampling error of the success rates."""
    study = _load(STEERING / "study.json")
    fresh = [r for r in study["rows"] if r["phase"] == "fresh"]
    content = {}
    for r in fresh:
        if r["setting"] != "content":
            continue
        content.setdefault(r["config"], {})[r["target"]] = {
            "mean_chrf_gain": r["mean_gain"],
            "relevant_prompts": round(r["relevant_rate"] * r["n"]),
            "n": r["n"],
        }
    positive = {
        c: [t for t, v in targets.items() if v["mean_chrf_gain"] > 0]
        for c, targets in content.items()
    }
    lape = study["chosen"]["lape"]["label"]
    cells = []
    for r in fresh:
        if r["config"] != lape:
            continue
        k = round(r["success_rate"] * r["n"])
        p = k / r["n"]
        cells.append(
            {
                "setting": r["setting"],
                "target": r["target"],
                "successes": k,
                "n": r["n"],
                "rate": p,
                "standard_error": math.sqrt(p * (1 - p) / r["n"]),
                "wilson_95": _wilson(k, r["n"]),
            }
        )
    return {
        "file": str(STEERING.relative_to(ROOT) / "study.json"),
        "content_gain_fresh": content,
        "content_gain_positive_targets": positive,
        "content_gain_note": "chrF points (0-100). Only each cell's mean gain and the share of "
        "prompts with a positive gain are committed, not the per-prompt gains, so no standard "
        "error of a mean gain can be computed from the repository.",
        "lape_success_cells": cells,
        "binomial_standard_error_at_50pct": {
            str(n): math.sqrt(0.25 / n) for n in sorted({r["n"] for r in fresh})
        },
        "standard_error_note": "success is 0/1 per prompt, so a cell's rate and n are its "
        "per-item data: standard error sqrt(p(1-p)/n); Wilson 95% interval.",
    }


def _git_json(commit: str, path: Path) -> dict:
    shown = subprocess.run(
        ["git", "show", f"{commit}:{path.relative_to(ROOT)}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(shown.stdout)


def summary_json() -> dict:
    """summary.json's held-out NLL rows and timings against the evaluation files and both runs.

    The two runs' own summaries are read from git as they were written: commit a415783 (run 1:
    statistics, selection, 1% evaluation) and 8d398a5 (run 2, ``--resume``: 2% and 5%).
    """
    first = _git_json(FIRST_SUMMARY_COMMIT, GEMMA / "summary.json")
    second = _git_json(SECOND_SUMMARY_COMMIT, GEMMA / "summary.json")
    current = _load(GEMMA / "summary.json")
    rows = {}
    for tag in ("1pct", "2pct", "5pct"):
        ev = _load(GEMMA / f"evaluation_{tag}.json")
        row = dict(zip(ev["lape"]["languages"], ev["lape"]["nll"][0], strict=True))
        rows[tag] = {
            "heldout_nll": row,
            "scored_tokens_per_language": ev["lape"]["n_tokens"][0],
            "max_tokens_per_language": ev["metadata"]["max_tokens_per_language"],
            "equals_summary_json_budget_row": current["budgets"][tag].get("heldout_nll") == row,
        }
    run1, run2 = first["timings"], second["timings"]
    return {
        "heldout_nll_per_budget": rows,
        "as_written": {
            "run_1_heldout_nll_is_1pct_row": first["heldout_nll"] == rows["1pct"]["heldout_nll"],
            "run_2_heldout_nll_is_2pct_row": second["heldout_nll"] == rows["2pct"]["heldout_nll"],
            "run_2_total_s_below_its_evaluate_1pct_s": run2["total_s"] < run2["evaluate_1pct_s"],
        },
        "run_1": {
            "what": "collection, selection, split-half stability and the 1% evaluation",
            "summary_commit": FIRST_SUMMARY_COMMIT,
            "timings": run1,
            "platform": first["machine"]["platform"],
        },
        "run_2": {
            "what": "--resume, the 2% and 5% evaluations, 512 held-out tokens per language",
            "summary_commit": SECOND_SUMMARY_COMMIT,
            "evaluate_2pct_s": run2["evaluate_2pct_s"],
            "evaluate_5pct_s": run2["evaluate_5pct_s"],
            "total_s": run2["total_s"],
            "load_and_setup_s": run2["total_s"] - run2["evaluate_2pct_s"] - run2["evaluate_5pct_s"],
            "platform": second["machine"]["platform"],
            "note": "its load_model_s, collect_s and evaluate_1pct_s are run 1's, carried over by "
            "--resume; its own model load time was not recorded",
        },
        "both_runs_total_s": run1["total_s"] + run2["total_s"],
    }


def _readme(data: dict) -> str:
    lay, sel, sae, st, sj = (
        data["layer_shares"],
        data["selectivity_ratios"],
        data["sae_lape_comparison"],
        data["steering"],
        data["summary_json"],
    )
    g, ll = lay["gemma_3_270m_1pct"], lay["llama_2_7b_released"]
    lines = [
        "# Sources of the model card's numbers (2026-12-04)",
        "",
        "Written by `python scripts/doc_sources.py --sae-lape-repo <checkout>` from committed",
        "files (no model run), the LAPE paper's released LLaMA-2-7B set and, checked when",
        "`--sae-lape-repo` is given, numbers recorded from the SAE-LAPE paper's result files;",
        "every number is in `doc_sources.json`.",
        "",
        "## Layer 0: Gemma 3 270M (1%) and LLaMA-2-7B (released set)",
        "",
        "| set | layer 0, memberships | layer 0, distinct neurons | last two layers, distinct |",
        "| --- | ---: | ---: | ---: |",
        f"| Gemma 3 270M, 1% | {g['layer0_memberships']} of {g['memberships_total']:,} "
        f"({g['layer0_share_of_memberships']:.1%}) | {g['layer0_distinct']} of "
        f"{g['distinct_total']} ({g['layer0_share_of_distinct']:.1%}) | "
        f"{g['last_two_layers_distinct']} of {g['distinct_total']} |",
        f"| LLaMA-2-7B, released | {ll['layer0_memberships']:,} of {ll['memberships_total']:,} "
        f"({ll['layer0_share_of_memberships']:.1%}) | {ll['layer0_distinct']} of "
        f"{ll['distinct_total']:,} ({ll['layer0_share_of_distinct']:.1%}) | "
        f"{ll['last_two_layers_distinct']} of {ll['distinct_total']:,} |",
        "",
        lay["units"] + ".",
        "",
        "## Selectivity ratio: which denominator",
        "",
        "| budget | LAPE | random, signed mean | random, mean abs. | LAPE / mean abs. "
        "| LAPE / signed mean | single draws, / mean abs. |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for tag, s in sel.items():
        draws = ", ".join(f"{x:.1f}x" for x in s["per_draw_ratio_over_mean_abs"])
        lines.append(
            f"| {tag} | +{s['lape_mean_selectivity']:.3f} "
            f"| {s['random_mean_selectivity_signed']:+.4f} "
            f"| {s['random_mean_abs_selectivity']:.4f} | {s['ratio_over_mean_abs']:.1f}x "
            f"| {s['ratio_over_signed_mean']:.0f}x | {draws} |"
        )
    lines += [
        "",
        "`summary.json`'s `selectivity_ratio` is LAPE / mean absolute.",
        "",
        "## The SAE-LAPE paper's LAPE-neuron deactivation (Llama-3.2-1B) and Gemma's 1% set",
        "",
        f"Source: {sae['source']['paper']}; files of {sae['source']['repository']} at "
        f"{sae['source']['commit'][:7]} (`{SAE_LAPE_DIR}`, not in this repository). What they are: "
        f"{sae['source']['what']}; {sae['source']['corpus']}; a ratio of mean per-sentence "
        "perplexities. Gemma: " + sae["gemma_statistic"] + ".",
        "",
        "| | " + " | ".join(sae["shared_languages"]) + " |",
        "| --- |" + " ---: |" * len(sae["shared_languages"]),
        "| Llama-3.2-1B, LAPE neurons (mean ppl) | "
        + " | ".join(
            f"x{sae['llama_3_2_1b_own_ratio_of_mean_perplexity'][k]:.2f}"
            for k in sae["shared_languages"]
        )
        + " |",
        "| Llama-3.2-1B, LAPE neurons (geometric mean ppl) | "
        + " | ".join(
            f"x{sae['llama_3_2_1b_own_ratio_of_geometric_mean_perplexity'][k]:.2f}"
            for k in sae["shared_languages"]
        )
        + " |",
        "| Gemma 3 270M, 1% | "
        + " | ".join(
            f"x{sae['gemma_3_270m_1pct_own_ratio'][k]:.2f}" for k in sae["shared_languages"]
        )
        + " |",
        "",
        f"Ranking, largest first: Llama-3.2-1B {' > '.join(sae['ranking_llama_3_2_1b'])}; Gemma "
        f"{' > '.join(sae['ranking_gemma_3_270m_1pct'])} (Spearman "
        f"{sae['spearman_rank_correlation']:.2f} over these {len(sae['shared_languages'])}). "
        f"Not in the Llama study: {', '.join(sae['not_in_llama_study'])}.",
        "",
        "## Steering: the content judge and the sampling error",
        "",
        "LAPE's mean chrF gain (own translation minus other paragraphs) per target, fresh content "
        "prompts, and the prompts with a positive gain:",
        "",
    ]
    lape = next(c for c in st["content_gain_fresh"] if c.startswith("lape"))
    cg = st["content_gain_fresh"][lape]
    lines += [
        "| | " + " | ".join(cg) + " |",
        "| --- |" + " ---: |" * len(cg),
        "| mean gain | " + " | ".join(f"{v['mean_chrf_gain']:+.4f}" for v in cg.values()) + " |",
        "| prompts with gain > 0 | "
        + " | ".join(f"{v['relevant_prompts']} of {v['n']}" for v in cg.values())
        + " |",
        "",
        st["content_gain_note"],
        "",
        "Binomial standard error of a success rate at 50%: "
        + ", ".join(
            f"{float(v) * 100:.1f} points at n = {n}"
            for n, v in st["binomial_standard_error_at_50pct"].items()
        )
        + ". Per LAPE cell (rate, standard error, Wilson 95%) in `doc_sources.json`.",
        "",
        "## summary.json: held-out NLL rows and times",
        "",
        "| budget | scored tokens per language | en | zh | fr | es | vi | id | ja |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for tag, r in sj["heldout_nll_per_budget"].items():
        lines.append(
            f"| {tag} | {r['scored_tokens_per_language']} | "
            + " | ".join(f"{r['heldout_nll'][k]:.3f}" for k in LANGS)
            + " |"
        )
    r1, r2 = sj["run_1"], sj["run_2"]
    lines += [
        "",
        "Per budget, from `evaluation_<budget>.json`; `summary.json` now holds these rows per "
        "budget (`budgets.<budget>.heldout_nll`): "
        + ", ".join(
            f"{t} {'yes' if r['equals_summary_json_budget_row'] else 'NO'}"
            for t, r in sj["heldout_nll_per_budget"].items()
        )
        + ".",
        "",
        f"Run 1 ({r1['what']}): {r1['timings']['total_s']:.1f} s (load "
        f"{r1['timings']['load_model_s']:.1f}, statistics {r1['timings']['collect_s']:.1f}, 1% "
        f"evaluation {r1['timings']['evaluate_1pct_s']:.1f}). Run 2 ({r2['what']}): "
        f"{r2['total_s']:.1f} s (2% {r2['evaluate_2pct_s']:.1f}, 5% {r2['evaluate_5pct_s']:.1f}, "
        f"the rest {r2['load_and_setup_s']:.1f}). Both: {sj['both_runs_total_s']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/2026-12-04-doc-sources"
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=ROOT.parent / "shared/reference/rucaibox-neurons",
        help="folder with the LAPE paper's released LLaMA-2-7B.neuron.pth",
    )
    parser.add_argument(
        "--sae-lape-repo",
        type=Path,
        default=None,
        help="a checkout of the SAE-LAPE repository; its perplexity files are read and checked",
    )
    args = parser.parse_args()
    data = {
        "layer_shares": layer_shares(args.reference),
        "selectivity_ratios": selectivity_ratios(),
        "sae_lape_comparison": sae_lape(args.sae_lape_repo),
        "steering": steering(),
        "summary_json": summary_json(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "doc_sources.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / "README.md").write_text(_readme(data))


if __name__ == "__main__":
    main()
