"""Dependencies point down: every import of every module, read from its source, against the floors.

    storage            -> nothing of ours
    pipelines, tmkt    -> storage
    flows              -> pipelines, storage, tmkt     (flows/cli.py is the top floor)
    benches            -> everything

Imports inside functions count as much as those at the top, and so does any string that names one
of our modules (a command table of module paths, ``importlib.import_module``). The one exception is
the command line's table of benchmarks: ``tmkt bench NAME`` runs ``benches.NAME`` from flows/cli.py.
No package may import a private (``_name``) module, function or attribute of another package.
Tests may reach anything.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("storage", "pipelines", "tmkt", "flows", "benches")
ALLOWED: dict[str, set[str]] = {
    "storage": set(),
    "pipelines": {"storage"},
    "tmkt": {"storage"},
    "flows": {"pipelines", "storage", "tmkt"},
    "benches": {"storage", "pipelines", "tmkt", "flows"},
}
#: (file, package) arrows allowed beyond ALLOWED: `tmkt bench NAME` dispatches to benches.NAME by name.
EXCEPTIONS = {("flows/cli.py", "benches")}
MODULE_NAME = re.compile(r"^({})(\.[A-Za-z_]\w*)+$".format("|".join(OURS)))


@dataclass(frozen=True)
class Import:
    module: str  # dotted module path
    names: tuple[str, ...]  # names taken from it (from-imports), else ()
    line: int


def _imports(tree: ast.AST, package: str, path: Path) -> list[Import]:
    """Every import in ``tree``, relative ones resolved against the file's own package."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = path.relative_to(ROOT).with_suffix("").parts[: -node.level]
                module = ".".join([*parts, module] if module else parts)
            found.append(Import(module, tuple(a.name for a in node.names), node.lineno))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _names_module(node.value):
            found.append(Import(node.value, (), node.lineno))
    return found


def _names_module(text: str) -> bool:
    """``text`` is the dotted path of one of our modules (a logger name such as "tmkt.build" is not)."""
    if not MODULE_NAME.match(text):
        return False
    path = ROOT.joinpath(*text.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private_attributes(tree: ast.AST, package: str) -> list[tuple[str, int]]:
    """``alias._name`` where ``alias`` was bound by importing another package's module."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    faults = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
        ):
            continue
        chain = node.value
        while isinstance(chain, ast.Attribute):
            chain = chain.value
        target = bound.get(getattr(chain, "id", ""))
        if target and target.split(".")[0] in OURS and target.split(".")[0] != package:
            faults.append((f"{ast.unparse(node)}", node.lineno))
    return faults


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def layer_faults(source: str, path: Path) -> list[str]:
    """One line per import of ``source`` (the file ``path``) that breaks the floors or privacy."""
    package = path.relative_to(ROOT).parts[0]
    tree = ast.parse(source, filename=str(path))
    where = path.relative_to(ROOT)
    faults = []
    for imp in _imports(tree, package, path):
        top = imp.module.split(".")[0]
        if top not in OURS or top == package:
            continue
        if top not in ALLOWED[package] and (str(where), top) not in EXCEPTIONS:
            faults.append(f"{where}:{imp.line}: {package} imports {imp.module} (an arrow up)")
        private = [p for p in imp.module.split(".")[1:] if _private(p)]
        private += [n for n in imp.names if _private(n)]
        if private:
            faults.append(f"{where}:{imp.line}: {package} imports private {private} of {imp.module}")
    for text, line in _private_attributes(tree, package):
        faults.append(f"{where}:{line}: {package} reaches the private attribute {text}")
    return faults


def modules() -> list[Path]:
    return sorted(p for package in OURS for p in (ROOT / package).rglob("*.py"))


def test_every_module_imports_only_downwards_and_nothing_private():
    assert len(modules()) > 40  # the walk found the packages
    faults = [fault for path in modules() for fault in layer_faults(path.read_text(), path)]
    assert faults == []


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("tmkt", "from flows.dataset import run_build_flow\n", "tmkt imports flows.dataset (an arrow up)"),
        ("pipelines", "def f():\n    import tmkt.loader\n", "pipelines imports tmkt.loader (an arrow up)"),
        ("storage", "import importlib\nimportlib.import_module('pipelines.build')\n", "an arrow up"),
        ("tmkt", "COMMANDS = {'serve': ('flows.serve', 'help')}\n", "tmkt imports flows.serve (an arrow up)"),
        ("flows", "BENCHES = {'loader': 'benches.loader'}\n", "flows imports benches.loader (an arrow up)"),
        ("flows", "from pipelines.build import _dask_client\n", "imports private ['_dask_client']"),
        ("flows", "from pipelines.formats._common import x\n", "imports private ['_common']"),
        ("flows", "import pipelines.build as b\nb._dask_client\n", "private attribute b._dask_client"),
        ("tmkt", "from flows.cli import main\n", "tmkt imports flows.cli (an arrow up)"),
    ],
)
def test_the_check_catches_each_kind_of_fault(package, source, expected):
    faults = layer_faults(source, ROOT / package / "example.py")
    assert len(faults) == 1 and expected in faults[0]


def test_allowed_arrows_and_own_privates_pass():
    assert layer_faults("from storage.reader import DatasetReader\n", ROOT / "tmkt" / "x.py") == []
    assert layer_faults("from pipelines.formats._common import x\n", ROOT / "pipelines" / "x.py") == []
    assert (
        layer_faults("from tmkt.train import train\nimport flows.dataset\n", ROOT / "benches" / "x.py") == []
    )
