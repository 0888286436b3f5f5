"""The package's layers, read from its imports (module-level and inside functions):

cli -> demo / experiments / pipeline / bundles -> synthesis / metrics -> engines -> networks ->
data / clinical -> the bottom I/O modules (files, checkpoint_io, errors).

A module may import its own layer and any layer below it, never one above."""

from __future__ import annotations

import ast
from pathlib import Path

from bundle_runner import REPO

PACKAGE = REPO / "busmonai"
RANK = {
    "errors": -1, "files": 0, "checkpoint_io": 0,
    "clinical": 1, "data": 1, "visualize": 1,
    "networks": 2,
    "engines": 3,
    "synthesis": 4, "metrics": 4,
    "bundles": 5, "pipeline": 5, "experiments": 6, "demo": 6,
    "cli": 7,
    "__init__": 8,  # the package itself: it installs the bundle-run error hook from errors
}
"""Each room's place; equal ranks may not import each other unless they are the same room (except
data / clinical / visualize, the shared bottom, bundles / pipeline, and the bottom I/O modules files /
checkpoint_io, which share the naming and cleanup of temporary files)."""
SIBLINGS = ({"clinical", "data", "visualize"}, {"bundles", "pipeline"}, {"experiments", "demo"},
            {"files", "checkpoint_io"})
FORBIDDEN = {("networks", "data"), ("networks", "visualize"), ("synthesis", "engines")}
"""Below the rank but still out: networks are built from their arguments, not from datalists;
synthesis samples trained networks and needs nothing of their training."""


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "busmonai"


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("busmonai."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("busmonai.")}
    return found


def allowed(source: str, target: str) -> bool:
    if (source, target) in FORBIDDEN:
        return False
    if source == target or target == "busmonai":
        return True
    if any({source, target} <= group for group in SIBLINGS):
        return True
    return RANK[target] < RANK[source]


def test_every_room_has_a_rank() -> None:
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").is_file())}
    assert rooms <= set(RANK), sorted(rooms - set(RANK))


def test_no_import_goes_up_a_layer() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = room("busmonai." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for target in sorted(imports_of(path)):
            if not allowed(source, room(target)):
                wrong.append(f"{path.relative_to(REPO)} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_rules_the_issue_names() -> None:
    """networks import nothing from engines or data; synthesis nothing from engines."""
    assert not allowed("networks", "engines") and not allowed("networks", "data")
    assert not allowed("synthesis", "engines") and not allowed("metrics", "bundles")


def test_the_class_vocabulary_is_defined_once() -> None:
    """No module but ``busmonai/clinical/classes.py`` spells the class list out."""
    spelled = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "classes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                words = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                if {"benign", "malignant"} <= set(words):
                    spelled.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not spelled, spelled
