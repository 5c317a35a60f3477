"""The layout shows the architecture: data flows one way, so no torchbp module imports one that imports it back;
the math reaches the speed package through one hook; a class does one job, in under 150 lines; the
experiments folder lists the experiments."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "torchbp"


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str, modules: set[str]) -> set[str]:
    """Which of ``modules`` the module ``name`` at ``path`` imports anywhere: at the top, in a function,
    under TYPE_CHECKING, relatively."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:  # from torchbp import functional: the module
                    found.add(f"{base}.{alias.name}")
                elif base in modules:  # from torchbp.compare import Report: the module it is in
                    found.add(base)
    return found - {name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of ``package``: the modules of the package it imports."""
    names = {path: module_name(path, package) for path in sorted(package.rglob("*.py"))}
    modules = set(names.values())
    return {name: imported_modules(path, name, modules) for path, name in names.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.get(module, ())):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def test_the_graph_sees_imports_at_the_top_in_functions_under_type_checking_and_relative(tmp_path):
    package = tmp_path / "torchbp"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from torchbp.a import A\n")
    (package / "a.py").write_text("def f():\n    from torchbp import b\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.c import C\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("from ..a import f\nimport torch\n")
    graph = import_graph(package)
    assert graph == {
        "torchbp": {"torchbp.a"},
        "torchbp.a": {"torchbp.b"},
        "torchbp.b": {"torchbp.sub.c"},
        "torchbp.sub": set(),
        "torchbp.sub.c": {"torchbp.a"},
    }
    assert cycles(graph) == [["torchbp.a", "torchbp.b", "torchbp.sub.c"]]


def test_the_log_does_not_import_the_trainer():
    graph = import_graph()
    assert not any(module.startswith("torchbp.lockstep") for module in graph["torchbp.tensorboard_log"])


def test_no_torchbp_module_imports_one_that_imports_it_back():
    assert cycles(import_graph()) == []


FILES = sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("file", FILES)
def test_every_class_of_the_library_does_one_job_in_under_150_lines(file):
    tree = ast.parse((PACKAGE / file).read_text())
    sizes = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    assert {name: size for name, size in sizes.items() if size >= 150} == {}


# The math: the layer files and what they build on. The speed package is off its reading path.
MATH = {"torchbp.hand_derived", "torchbp.table", "torchbp.validation", "torchbp.autocast"}


def test_the_math_reaches_the_speed_package_through_the_one_hook_alone():
    graph = import_graph()
    math = MATH | {module for module in graph if module.startswith("torchbp.layers")}
    reaching = {module: sorted(m for m in graph[module] if m.startswith("torchbp.speed")) for module in math}
    assert {module: speed for module, speed in reaching.items() if speed} == {
        "torchbp.hand_derived": ["torchbp.speed.calls"]
    }
    assert "the one hook into the speed package" in (PACKAGE / "hand_derived.py").read_text()


def test_the_experiments_folder_lists_the_experiments_one_file_each():
    from experiments.__main__ import EXPERIMENTS  # importing the command registers every experiment

    files = {path.stem for path in (PACKAGE.parent / "experiments").glob("*.py")} - {"__init__", "__main__"}
    assert files == {name.replace("-", "_") for name in EXPERIMENTS}
