"""The installed layout: one name per module, and imports that point one way."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import storeharness

ROOT = Path(storeharness.__file__).resolve().parent.parent


def _imports(path: Path, package: str) -> set[str]:
    """Absolute names of the modules ``path`` (in ``package``) imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _modules(folder: str) -> list[tuple[Path, str]]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = ["storeharness", *rel.parts]
        package = ".".join(parts if path.name == "__init__.py" else parts[:-1])
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((path, package))
    return out


def test_arrows_point_one_way() -> None:
    for path, package in _modules("stores"):
        up = {n for n in _imports(path, package) if n.startswith("storeharness.harness")}
        assert not up, f"{path} imports {up}: stores must not import the harness"
        assert not {n for n in _imports(path, package) if n.split(".")[0] in ("pytest",)}
    for path, package in _modules("harness"):
        up = {n for n in _imports(path, package) if n.startswith("storeharness.scenarios")}
        assert not up, f"{path} imports {up}: the harness takes the library as data"


def test_no_module_is_importable_under_two_names() -> None:
    # Import every module of the package, then the ways a test run or the CLI loads the
    # bundled library; no file may end up in sys.modules twice.
    code = """
import importlib, pkgutil, sys, storeharness
from pathlib import Path
for info in pkgutil.walk_packages(storeharness.__path__, "storeharness."):
    if info.name.endswith(("__main__", "_speedups")) or ".torch_adapter" in info.name:
        continue
    importlib.import_module(info.name)
from storeharness.harness.run import load_package, load_scenarios
load_package("storeharness.scenarios")
load_scenarios([str(Path(storeharness.__file__).parent / "scenarios")], "storeharness.scenarios")
seen = {}
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if path and "storeharness" in name:
        real = str(Path(path).resolve())
        assert real not in seen, f"{real} is both {seen[real]} and {name}"
        seen[real] = name
assert not [n for n in sys.modules if n.split(".")[0] in ("stores", "harness", "scenarios")]
print(len(seen))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 30


def test_the_public_names_resolve_lazily() -> None:
    for name in storeharness.__all__:
        assert getattr(storeharness, name) is not None
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys, storeharness.stores; print('multiprocess' in sys.modules, "
         "'storeharness.harness' in sys.modules)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.stdout.split() == ["False", "False"], proc.stderr  # a store needs no harness
    assert importlib.import_module("storeharness.harness").targets is not None
    assert any(m.name == "stores" for m in pkgutil.iter_modules(storeharness.__path__))
