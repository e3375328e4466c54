"""The structure rules a newcomer relies on, checked on the source itself: data flows one way (no import cycle,
function-level imports included), no module over 500 lines, no function of cyclomatic complexity rank D or worse."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from radon.complexity import cc_rank, cc_visit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("relay", "collectors", "benchmarks")
MAX_LINES = 500
INSTALLED_AS = "relay.collectors"  # collectors/ is installed under this name (pyproject's package-dir)


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if ".build" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules `name` imports anywhere in its body (a function-level import is still an edge)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            if target == INSTALLED_AS or target.startswith(INSTALLED_AS + "."):
                target = "collectors" + target.removeprefix(INSTALLED_AS)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a parent package is not a cycle
                found.add(target)
                break
    return found


def test_no_import_cycle_anywhere():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycles, state = [], dict.fromkeys(graph, "new")

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state[target] == "open":
                cycles.append(" → ".join([*trail[trail.index(target) :], target]))
            elif state[target] == "new":
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(graph):
        if state[name] == "new":
            visit(name, [name])
    assert not cycles, cycles


def test_no_module_over_500_lines():
    long = {
        name: lines for name, path in _modules().items() if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_no_function_of_complexity_rank_d_or_worse():
    complex_ = [
        f"{name}:{block.lineno} {block.fullname} rank {cc_rank(block.complexity)} ({block.complexity})"
        for name, path in _modules().items()
        for block in cc_visit(path.read_text())
        if cc_rank(block.complexity) >= "D"
    ]
    assert not complex_, complex_


def test_every_package_is_installed_and_collectors_under_the_relay_name():
    """An installed relay must hold every package of the tree, and collectors/ as relay.collectors: a top-level
    `collectors` could clash with any other distribution's."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tree = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "relay").rglob("__init__.py")
        if ".build" not in path.parts
    }
    assert set(settings["packages"]) == tree | {INSTALLED_AS}
    assert settings["package-dir"] == {INSTALLED_AS: "collectors"}
