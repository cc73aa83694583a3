"""The README's quickstart runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_as_written(capsys) -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None, "the README's Quickstart has no python code block"
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(code.group(1), str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "LanguageNeurons(" in out
    rises = {}
    for name in ("French", "English"):
        match = re.search(rf"{name} loss ([0-9.]+) -> ([0-9.]+) without French neurons", out)
        assert match is not None, out
        rises[name] = float(match.group(2)) - float(match.group(1))
    # Deactivating French neurons makes French text harder to predict, and more so than English.
    assert rises["French"] > 0
    assert rises["French"] > rises["English"]
