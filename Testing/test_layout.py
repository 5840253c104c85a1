"""The code's layers: AMIFFusion.py -> AMIFFusionLib -> amif (runtime), research beside it.

Imports are read from the source (every `import` statement, those inside functions too), so an
import hidden in a function counts like one at the top of a module."""

import ast
import re
from pathlib import Path

from conftest import ROOT

MODULE = ROOT / "AMIFFusion"
PACKAGES = {
    "amif": MODULE / "amif",
    "AMIFFusionLib": MODULE / "AMIFFusionLib",
    "amif_research": ROOT / "research" / "amif_research",
}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages and the Slicer module."""
    out = {"AMIFFusion": MODULE / "AMIFFusion.py"}
    for pkg, folder in PACKAGES.items():
        for f in folder.glob("*.py"):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute names of everything `path` (module `name`) imports, anywhere in the file."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from . import attack_learned`
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the modules of this project it imports."""
    files = module_files()
    return {n: {i for i in imports_of(n, f) if i in files and i != n} for n, f in files.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def top(name: str) -> str:
    return name.split(".")[0]


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_cycle_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_function_level_imports_count(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from .trace import run\n    from . import other\n")
    assert {"amif.trace", "amif.other"} <= imports_of("amif.m", f)


def test_layers_point_one_way():
    """The runtime imports neither the Slicer adapter nor research code nor slicer/qt; the adapter no qt
    and no research code; research code may import the runtime."""
    files = module_files()
    for name, path in files.items():
        outside = {top(i) for i in imports_of(name, path)}
        if top(name) == "amif":
            assert not outside & {"amif_research", "AMIFFusionLib", "AMIFFusion", "slicer", "qt", "ctk", "vtk"}, name
        if top(name) == "AMIFFusionLib":
            assert not outside & {"amif_research", "AMIFFusion", "qt", "ctk"}, name
        if name == "AMIFFusion":
            assert "amif_research" not in outside


def test_the_slicer_module_lists_the_runtime_and_nothing_else():
    text = (MODULE / "CMakeLists.txt").read_text()
    block = re.search(r"set\(MODULE_PYTHON_SCRIPTS\s+(.*?)\)", text, re.S).group(1)
    listed = {line.strip().replace("${MODULE_NAME}", "AMIFFusion") for line in block.splitlines() if line.strip()}
    runtime = {str(f.relative_to(MODULE)) for n, f in module_files().items() if top(n) != "amif_research"}
    assert listed == runtime
    research = {f.name for f in PACKAGES["amif_research"].glob("*.py")} - {"__init__.py", "cli.py"}
    assert research and not research & {Path(p).name for p in listed}
