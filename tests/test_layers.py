"""The package's layers (docs/architecture.md): a module imports only from its own layer or below, and
report/, mining/ and eval/ never import the training code. Walks every module with ``ast``, function-local
imports included (a local import cannot hide an upward arrow)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "hardmil"

# lowest first; a package's modules share its layer
LAYERS = [
    {"hardmil", "hardmil.utils"},
    {"hardmil.models"},
    {"hardmil.data", "hardmil.wsi", "hardmil.features"},
    {"hardmil.infer", "hardmil.checkpoint"},
    {"hardmil.train", "hardmil.eval"},
    {"hardmil.mining", "hardmil.report"},
    {"hardmil.config", "hardmil.cli"},
]
NO_TRAIN = ("hardmil.report", "hardmil.mining", "hardmil.eval")


def layer_of(module: str) -> int:
    parts = module.split(".")
    for depth in (2, 1):
        name = ".".join(parts[:depth])
        for i, layer in enumerate(LAYERS):
            if name in layer:
                return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/architecture.md")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path):
    """(imported hardmil module, line, function-local?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    local = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            if name == "hardmil" or name.startswith("hardmil."):
                yield name, node.lineno, id(node) in local


def test_every_import_respects_the_layers():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        me = module_name(path)
        mine = layer_of(me)
        for target, line, is_local in imports(path):
            where = f"{path.relative_to(SRC.parent)}:{line} ({'local' if is_local else 'top'}) {me} -> {target}"
            if layer_of(target) > mine:
                bad.append(f"upward: {where}")
            if me.startswith(NO_TRAIN) and target.startswith("hardmil.train"):
                bad.append(f"into train: {where}")
    assert not bad, "\n".join(bad)
