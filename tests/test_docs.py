"""The README stays short and its links resolve; the docs site itself is built strictly by
``make docs`` (mkdocs ``strict: true``), which fails on a broken link inside ``docs/``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_short() -> None:
    n = len((REPO / "README.md").read_text().splitlines())
    assert n <= 250, f"README.md has {n} lines; details belong in docs/"


def test_readme_links_resolve() -> None:
    text = (REPO / "README.md").read_text()
    targets = [t for t in LINK.findall(text) if "://" not in t]
    assert targets, "the README links to the docs"
    missing = [t for t in targets if not (REPO / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_figures_link_to_docs() -> None:
    # every row of the headline results table links to the docs page that has its command
    rows = [ln for ln in (REPO / "README.md").read_text().splitlines() if ln.startswith("| [")]
    assert rows, "the headline results table is in the README"
    for row in rows:
        assert "](docs/results/" in row, row


def test_benchmarks_index_lists_every_script() -> None:
    index = (REPO / "benchmarks" / "README.md").read_text()
    scripts = [*sorted(p.name for p in (REPO / "benchmarks").glob("*.py")), "gpu_check.sh"]
    missing = [s for s in scripts if f"`{s}`" not in index]
    assert not missing, f"benchmarks/README.md lacks {missing}"


def _readme_first_example() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    return text[start : text.index("```", start)]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_readme_first_example_runs_on_either_backend(backend: str, capsys) -> None:
    code = _readme_first_example()
    assert "sae_ts.load_default()" in code
    code = code.replace("sae_ts.load_default()", f"sae_ts.load_default(backend={backend!r})")
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert len(out.strip()) > 20, out
