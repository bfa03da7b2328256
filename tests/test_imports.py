"""Every module imports on its own in a fresh interpreter (no import cycle), and the library
outside ``sae_ts.cli`` neither parses arguments nor prints."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import sae_ts

PACKAGE = Path(sae_ts.__file__).parent
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(sae_ts.__path__, "sae_ts.")
    if m.name != "sae_ts.cli.__main__"
)


# One fresh interpreter imports the heavy third-party libraries once, then forks a child per
# sae_ts module; each child starts with no sae_ts module imported and imports just that one. This
# checks what a fresh interpreter per module would (sae_ts's own import order), in seconds.
_RUNNER = """
import importlib, os, sys, warnings
warnings.simplefilter("ignore")
import torch, transformer_lens, sae_lens, transformers, scipy.optimize  # noqa: E401
assert not [m for m in sys.modules if m == "sae_ts" or m.startswith("sae_ts.")]
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException as e:
            sys.stderr.write(f"{name}: {type(e).__name__}: {e}\\n")
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed.append(name)
print("FAILED:" + ",".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_each_module_imports_alone_in_a_fresh_interpreter():
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, "sae_ts", *MODULES],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _module_graph() -> dict[str, set[str]]:
    """sae_ts module -> sae_ts modules it imports at module level, ``if TYPE_CHECKING:`` included."""
    mods: dict[str, Path] = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        body = ast.parse(path.read_text()).body
        # imports under a module-level `if` (such as `if TYPE_CHECKING:`) count as well
        nodes = [n for top in body for n in ([top] if not isinstance(top, ast.If) else top.body)]
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                if node.level:
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                deps.add(target)
                deps.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def test_no_deprecation_shims():
    """No module of the package only re-exports another one under an old name."""
    shims = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "DeprecationWarning" in p.read_text() and "import *" in p.read_text()
    ]
    assert not shims, shims


def test_module_import_graph_has_no_cycle():
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_no_deferred_sae_ts_imports():
    """Imports of sae_ts modules sit at module level, where the graph above sees them."""
    deferred = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and (
                        sub.level or (sub.module or "").startswith("sae_ts")
                    ):
                        deferred.append(f"{path.name}:{sub.lineno}")
    assert not deferred, deferred


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py") if "cli" not in p.parts))
def test_library_modules_neither_parse_arguments_nor_print(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(a.name != "argparse" for a in node.names), path
        if isinstance(node, ast.ImportFrom):
            assert node.module != "argparse", path
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "print", f"{path}:{node.lineno} prints"


def test_public_api_is_curated():
    assert len(sae_ts.__all__) <= 30
    for internal in ("tiny_model", "sink_mask", "to_tokens", "check_pair", "save_artifact"):
        assert internal not in sae_ts.__all__
    assert all(hasattr(sae_ts, n) for n in sae_ts.__all__)


def test_one_kv_cached_generation_loop() -> None:
    """Only generation.py samples with a KV cache (made by backends.py, of the model's own kind);
    steering and effects call its generate().

    experiments/reliability/steering.py also builds a cache, to score one shared prompt prefix
    under many steering vectors (no sampling).
    """
    users = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "TransformerLensKeyValueCache" in p.read_text()
    )
    assert users == ["backends.py", "experiments/reliability/steering.py"], users
    assert "new_kv_cache" in (PACKAGE / "generation.py").read_text()
    rel = (PACKAGE / "experiments" / "reliability" / "steering.py").read_text()
    assert "sample(" not in rel and "multinomial" not in rel


def test_hooked_transformer_is_imported_in_one_module() -> None:
    """TransformerLens 4 drops HookedTransformer: a move to it changes sae_ts/models.py only."""
    users = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("transformer_lens")
        and any(a.name.startswith("HookedTransformer") for a in node.names)
    )
    assert set(users) == {"models.py"}, users


def test_tests_mirror_the_package() -> None:
    """Every module of sae_ts/ has tests/test_<module>.py; every sub-package a tests/ folder."""
    tests = PACKAGE.parent / "tests"
    missing = []
    for p in sorted(PACKAGE.glob("*.py")):
        name = p.stem.lstrip("_")
        if not p.stem.startswith("__") and not (tests / f"test_{name}.py").exists():
            missing.append(p.name)
    for d in sorted(q for q in PACKAGE.iterdir() if (q / "__init__.py").exists()):
        if not (tests / d.name).is_dir():
            missing.append(d.name + "/")
    assert not missing, f"no tests mirror {missing}"
