"""Keep ``benchmarks/bench_collect.py`` from rotting: run it in ``--quick`` mode.

No timing is asserted (tests never assert on time); the benchmark must run end to end, write its
report, and its three counting methods must agree exactly on the counts.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_collect.py"


@pytest.mark.slow
def test_quick_benchmark_runs_and_methods_agree(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    reports = sorted(tmp_path.glob("*-cpu-quick.json"))
    assert len(reports) == 1, sorted(p.name for p in tmp_path.iterdir())
    result = json.loads(reports[0].read_text())
    assert set(result["throughput"]["methods"]) == {"forward", "tl_lape", "tl_cache", "hf_hooks"}
    for figures in result["throughput"]["methods"].values():
        assert figures["tokens_per_s"] > 0
    # (b), (c) and (d) count the same tokens of the same model: identical counts.
    assert result["agreement"] == {"tl_cache": 0, "hf_hooks": 0}
    assert [p["method"] for p in result["memory"]] == ["tl_lape"]
    assert result["memory"][0]["tokens"] > 0
    assert len(result["identify"]["seconds"]) == 1

    markdown = reports[0].with_suffix(".md").read_text()
    assert "(b) tl_lape.collect_activation_stats" in markdown
    assert markdown == proc.stdout  # the printed table is the written report
