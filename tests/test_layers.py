"""The layer rules of DESIGN.md, read from the import graph of the source tree (imports inside functions too)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"edge": "edgeseg", "train": "edgeseg.train", "export": "edgeseg.export", "device": "edgeseg.device"}
OUTER = ("edgeseg.cli", "edgeseg.train", "edgeseg.export", "edgeseg.device")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, with relative imports made absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    out = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            out[module_name(path)] = imports_of(path, module_name(path))
    return out


def layer(module: str) -> str:
    for outer in OUTER:
        if module == outer or module.startswith(outer + "."):
            return outer.split(".")[1]
    return "core"


def offending(module: str, imported: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(i for i in imported if any(i == f or i.startswith(f + ".") for f in forbidden))


GRAPH = graph()


def test_the_import_graph_covers_every_layer():
    layers = {layer(m) for m in GRAPH}
    assert layers == {"core", "cli", "train", "export", "device"}
    assert len(GRAPH) > 50


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if layer(m) == "core"))
def test_the_core_imports_no_train_export_device_cli_or_torch(module):
    assert offending(module, GRAPH[module], (*OUTER, "torch")) == []


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if layer(m) == "device"))
def test_device_imports_no_train_export_cli_or_torch(module):
    assert offending(module, GRAPH[module], ("edgeseg.train", "edgeseg.export", "edgeseg.cli", "torch")) == []


def test_nothing_imports_the_cli():
    scripts = {f"benchmarks/{p.name}": imports_of(p, "benchmarks") for p in (ROOT / "benchmarks").rglob("*.py")}
    users = {m: i for m, i in {**GRAPH, **scripts}.items() if layer(m) != "cli"}
    assert {m: offending(m, i, ("edgeseg.cli",)) for m, i in users.items() if offending(m, i, ("edgeseg.cli",))} == {}


def test_train_and_export_do_not_import_the_runtime_loop():
    for module, imported in GRAPH.items():
        if layer(module) in ("train", "export"):
            assert offending(module, imported, ("edgeseg.device", "edgeseg.cli")) == [], module


def verbs() -> list[tuple[str, ast.FunctionDef]]:
    out = []
    for path in sorted((ROOT / "edge" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                "command" in ast.unparse(d) for d in node.decorator_list
            ):
                out.append((f"{path.name}:{node.name}", node))
    return out


def test_every_verb_body_is_at_most_30_lines():
    found = verbs()
    assert len(found) == 11
    long = {}
    for name, fn in found:
        body = fn.body[1:] if isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant) \
            else fn.body
        lines = body[-1].end_lineno - body[0].lineno + 1
        if lines > 30:
            long[name] = lines
    assert long == {}
