"""The package layout: one home per concept, checked on the source with ``ast`` (nothing is imported).

No two modules share a file name (a name says what the file holds, wherever it is), every ``mmgen``
import names a module or a name that exists, the module import graph has no cycles (imports inside
functions count: a lazy import that closes a cycle is still two modules that need each other), and no
module takes another module's private name (``_name``): what two modules share is public in one of them.
"""

from __future__ import annotations

import ast
import functools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmgen"


@functools.cache
def _parse(path: Path) -> ast.Module:
    """``ast.parse`` of a file, in a thread of its own: CPython 3.11's AST constructor checks its recursion depth
    against the thread's, which an earlier test of this process may have left skewed (cpython#106905: a
    ``SystemError: AST constructor recursion depth mismatch`` unrelated to the file)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(ast.parse, path.read_text()).result()


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _defined_names(path: Path) -> set[str]:
    """The names a module defines or imports (and, when it has a module ``__getattr__``, the strings it
    lists: names exported lazily, as ``mmgen.data`` does)."""
    tree = _parse(path)
    names = set()
    lazy = any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body)
    for node in ast.walk(tree):
        if lazy and isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _imports(modules: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the mmgen modules it imports (anywhere in the file); and the imports that name nothing."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    broken = []
    for name, path in modules.items():
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("mmgen")]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmgen") and not node.level:
                targets = []
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in modules:
                        targets.append(full)  # a submodule
                    elif node.module in modules and alias.name in _defined_names(modules[node.module]):
                        targets.append(node.module)
                    else:
                        broken.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {alias.name}")
            else:
                continue
            for target in targets:
                if target not in modules:
                    broken.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {target}")
                elif target != name:
                    graph[name].add(target)
    return graph, broken


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_two_modules_share_a_file_name():
    names = Counter(path.name for path in PACKAGE.rglob("*.py") if path.name != "__init__.py")
    assert [name for name, n in names.items() if n > 1] == []


def test_every_mmgen_import_names_something_that_exists():
    _, broken = _imports(_modules())
    assert broken == []


def test_the_import_graph_has_no_cycles():
    graph, _ = _imports(_modules())
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    """The check above can fail: a two-module and a three-module loop are found, a chain is not."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(_cycles(graph)) == [["a", "b"], ["c", "d", "e"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def _private_imports(name: str, tree: ast.AST, modules: dict[str, Path]) -> list[str]:
    """Another module's private names that a module takes: ``from mmgen.x import _y``, or ``m._y`` of a module
    ``m`` imported from mmgen (``from mmgen import x``, ``import mmgen.x as m``)."""
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("mmgen"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in modules:
                    aliases[alias.asname or alias.name] = full
                elif alias.name.startswith("_") and not alias.name.startswith("__") and node.module != name:
                    found.append(f"{name}:{node.lineno}: {full}")
        elif isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.asname and a.name.startswith("mmgen")})
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            if private and aliases[node.value.id] != name:
                found.append(f"{name}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_takes_another_modules_private_name():
    modules = _modules()
    found = [f for name, path in modules.items() for f in _private_imports(name, _parse(path), modules)]
    assert found == []


def test_the_private_name_check_finds_private_names():
    """The check above can fail: a private name imported from a module, or read from an imported module."""
    modules = {"mmgen.a": Path("a.py"), "mmgen.b": Path("b.py")}
    code = "from mmgen.a import _x, y\nfrom mmgen import a\nimport mmgen.b as b\na._z()\nb.w, a.__name__\n"
    assert _private_imports("mmgen.c", ast.parse(code), modules) == ["mmgen.c:1: mmgen.a._x", "mmgen.c:4: mmgen.a._z"]
    assert _private_imports("mmgen.a", ast.parse("from mmgen.a import _x\n"), modules) == []


def _parts(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph between the parts of mmgen: its subpackages and top-level modules (``mmgen.data.formats``
    belongs to ``mmgen.data``); imports within a part are left out."""

    def part(name: str) -> str:
        return ".".join(name.split(".")[:2])

    out: dict[str, set[str]] = {}
    for name, targets in graph.items():
        if name == "mmgen":  # the package's own __init__ (lazy exports) sits above everything
            continue
        out.setdefault(part(name), set()).update(part(t) for t in targets if part(t) not in (part(name), "mmgen"))
    return out


def test_the_packages_import_each_other_one_way():
    graph, _ = _imports(_modules())
    assert _cycles(_parts(graph)) == []


def test_the_package_cycle_finder_finds_a_cycle_between_packages():
    """The check above can fail: two packages that need each other, though no two modules do."""
    graph = {
        "mmgen.models.caption_model": {"mmgen.data.transforms"},
        "mmgen.data.collate": {"mmgen.models.tokenizer"},
        "mmgen.data.transforms": set(),
        "mmgen.models.tokenizer": set(),
        "mmgen.config": set(),
    }
    assert _cycles(graph) == []
    assert _cycles(_parts(graph)) == [["mmgen.data", "mmgen.models"]]


def test_modules_and_functions_stay_small():
    """Modules under 500 lines, functions under 80 (the style guide's limits)."""
    big = [
        f"{p.relative_to(ROOT)}: {n}" for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) >= 500
    ]
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(_parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 79:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert big == [] and long == []


# the applications (training, serving, the commands, bulk captioning and the demo among them) sit above the library
# (config, tokenizer, data, scenes, models, generation, evaluation, the Captioner, ...): the library never imports them
APPLICATIONS = ("mmgen.training", "mmgen.commands", "mmgen.serve", "mmgen.__main__")


def _upward(graph: dict[str, set[str]]) -> list[str]:
    def application(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in APPLICATIONS)

    library = [a for a in graph if not application(a) and a != "mmgen"]
    return sorted(f"{a} -> {b}" for a in library for b in graph[a] if application(b))


def test_the_library_never_imports_training_commands_or_serving():
    graph, _ = _imports(_modules())
    assert _upward(graph) == []
    assert _upward({"mmgen.data.features": {"mmgen.training.trainer"}, "mmgen.training.trainer": set()}) == [
        "mmgen.data.features -> mmgen.training.trainer"
    ]


def test_pyproject_ships_every_package():
    """pyproject.toml lists the packages (it maps configs/ onto mmgen.presets): none of mmgen/ may be missing."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert listed == packages | {"mmgen.presets"}
