"""How hard the package layout is to see and change, measured on the source (``ast``; nothing is imported) and,
for the last number, by running ``mmgen caption`` in a fresh process.

    python scripts/layout_metrics.py            # a table
    python scripts/layout_metrics.py --json     # the numbers and what was found, as JSON

- package cycles: elementary cycles in the graph of imports between the parts of ``mmgen`` (a subpackage,
  or a top-level module), imports inside functions included;
- private imports: imports of another module's private name (``from mmgen.x import _y``, or ``m._y`` of a
  module ``m`` imported from mmgen);
- places to touch to add a projector kind, a generation option that reaches the command line, the Python
  API and the server, or a data file format: the hand-written lists of the existing entries (a tuple,
  list, set or dict literal naming two or more of them, or a function whose code names two or more of
  them as strings, outside docstrings), and the files that hold them. Generation options count only the
  lists of the surfaces (commands, Captioner, server) plus the definition of the setting (the config) and
  its implementation (the search: one file). Shown as files (places);
- files run by ``mmgen caption``: the mmgen modules loaded by one ``mmgen caption`` of the shipped model.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmgen"

PROJECTOR_KINDS = ("linear", "mlp", "pool", "pixel_shuffle", "mapper")
SERVER_OPTIONS = ("beams", "max_new_tokens", "num_return_sequences", "prompt", "bad_words")
GENERATION_FIELDS = (
    "num_beams", "max_new_tokens", "min_new_tokens", "length_penalty", "early_stopping", "no_repeat_ngram_size",
    "repetition_penalty", "do_sample", "temperature", "top_k", "top_p", "num_return_sequences", "seed", "bad_words",
    "padded_head", "decode_sdpa",
)  # fmt: skip
DATA_FORMATS = ("coco", "karpathy", "jsonl", "csv", ".json", ".jsonl", ".csv", ".tsv")
SURFACES = ("mmgen/commands", "mmgen/cli.py", "mmgen/captioner.py", "mmgen/serve")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(tree: ast.AST, mods: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """``(module, name or None, line)`` of every mmgen import in a file (a name only for ``from m import name``
    when ``name`` is not a submodule)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("mmgen")]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("mmgen"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.append((full, None, node.lineno) if full in mods else (node.module, a.name, node.lineno))
    return out


def part(module: str) -> str:
    """The part of mmgen a module belongs to: ``mmgen.data.formats`` -> ``mmgen.data``."""
    return ".".join(module.split(".")[:2])


def package_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        if name == "mmgen":
            continue
        edges = graph.setdefault(part(name), set())
        for target, _, _ in imported(ast.parse(path.read_text()), mods):
            if part(target) not in (part(name), "mmgen"):
                edges.add(part(target))
    return graph


def simple_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle, each listed once from its smallest node."""
    found = []
    nodes = sorted(graph)
    for start in nodes:

        def walk(node: str, path: list[str], start: str = start) -> None:
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    found.append([*path])
                elif nxt > start and nxt not in path:
                    walk(nxt, [*path, nxt])

        walk(start, [start])
    return found


def private_imports(mods: dict[str, Path]) -> list[str]:
    """``file:line: module._name`` of each private name a module takes from another (each name once per file)."""
    found, seen = [], set()
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> mmgen module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("mmgen"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in mods:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name.startswith("mmgen")})
        where = path.relative_to(ROOT)
        for target, item, line in imported(tree, mods):
            if item and item.startswith("_") and not item.startswith("__") and target != name:
                if (where, target, item) not in seen:
                    seen.add((where, target, item))
                    found.append(f"{where}:{line}: {target}.{item}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and (where, aliases[node.value.id], node.attr) not in seen
            ):
                seen.add((where, aliases[node.value.id], node.attr))
                found.append(f"{where}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
        if isinstance(node, (ast.ClassDef, ast.Module)):  # attribute docstrings: a string after an assignment
            for prev, nxt in zip(node.body, node.body[1:]):
                if isinstance(prev, (ast.Assign, ast.AnnAssign)) and isinstance(nxt, ast.Expr):
                    ids.add(id(nxt.value))
    return ids


def _names(node: ast.AST, entries: tuple[str, ...], skip: set[int]) -> set[str]:
    return {
        n.value
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in entries and id(n) not in skip
    }


def places(files: list[Path], entries: tuple[str, ...]) -> list[str]:
    """The hand-written lists of ``entries`` in ``files``: collection literals naming two or more of them, and
    outermost functions (or class bodies) whose code names two or more of them as strings."""
    found = []
    for path in files:
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                items = node.elts
            elif isinstance(node, ast.Dict):
                items = [k for k in node.keys if k is not None]
            else:
                continue
            names = {e.value for e in items if isinstance(e, ast.Constant) and e.value in entries}
            if len(names) >= 2:
                found.append(f"{where}:{node.lineno}: a literal of {len(names)}")
                skip |= {id(e) for e in ast.walk(node)}
        for node in tree.body:
            bodies = node.body if isinstance(node, ast.ClassDef) else [node]
            for item in bodies:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names = _names(item, entries, skip)
                    if len(names) >= 2:
                        found.append(f"{where}:{item.lineno}: {item.name} names {len(names)}")
    return found


def _files(prefixes: tuple[str, ...]) -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if str(p.relative_to(ROOT)).startswith(prefixes)]


def _defining(cls: str) -> list[Path]:
    """The files that define a class of this name."""
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if any(isinstance(n, ast.ClassDef) and n.name == cls for n in ast.walk(ast.parse(p.read_text())))
    ]


def touch_counts() -> dict[str, dict]:
    everything = _files(("mmgen",))
    projector = places(everything, PROJECTOR_KINDS)
    generation = places(_files(SURFACES), SERVER_OPTIONS + GENERATION_FIELDS)
    generation += [f"{p.relative_to(ROOT)}: GenerationConfig" for p in _defining("GenerationConfig")]
    generation += ["mmgen/generation/: the search"]
    data = places(everything, DATA_FORMATS)
    out = {}
    for key, found in (("projector kind", projector), ("generation option", generation), ("data format", data)):
        files = sorted({f.split(":")[0] for f in found})
        out[key] = {"files": len(files), "places": len(found), "found": found}
    return out


CAPTION = """
import contextlib, io, sys
from ENTRY import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(["caption", "assets/images", "--model", "assets/tiny-scenes-model", "--quiet", "--threads", "1"])
names = sorted(n for n, m in sys.modules.items() if n.split(".")[0] == "mmgen" and getattr(m, "__file__", None))
print(code, *names)
"""


def caption_files() -> list[str]:
    entry = "mmgen.commands.cli" if (PACKAGE / "commands" / "cli.py").exists() else "mmgen.cli"
    script = CAPTION.replace("ENTRY", entry)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    code, *names = run.stdout.split()
    if code != "0":
        raise RuntimeError(f"mmgen caption exited with {code}: {run.stderr[-2000:]}")
    return names


def measure(run_caption: bool = True) -> dict:
    mods = modules()
    cycles = simple_cycles(package_graph(mods))
    private = private_imports(mods)
    out = {
        "package cycles": {"count": len(cycles), "found": [" -> ".join([*c, c[0]]) for c in cycles]},
        "private imports": {"count": len(private), "found": private},
        **touch_counts(),
    }
    if run_caption:
        names = caption_files()
        out["files run by mmgen caption"] = {"count": len(names), "found": names}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the numbers and what was found as JSON")
    parser.add_argument("--no-caption", action="store_true", help="skip running mmgen caption")
    parser.add_argument("-v", "--verbose", action="store_true", help="list what was found under each number")
    args = parser.parse_args()
    result = measure(not args.no_caption)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for key, value in result.items():
        number = f"{value['files']} ({value['places']})" if "files" in value else str(value["count"])
        print(f"{key:28s} {number}")
        if args.verbose:
            for item in value["found"]:
                print(f"    {item}")


if __name__ == "__main__":
    main()
