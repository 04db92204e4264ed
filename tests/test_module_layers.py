"""The import layers of docs/design.md ("What may import what"), read from the source: the model
layers never import training, data or the command line, so each can be used and tested alone."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vq3d"
BASE = {"errors", "precision", "utils", "config"}
# what each lower layer may import (besides itself)
ALLOWED = {
    "errors": set(), "precision": set(), "utils": {"errors"}, "config": {"utils", "errors"},
    "render": BASE, "models": BASE | {"render"}, "losses": BASE | {"render", "models"},
}
TOP = {"cli", "demo", "bench"}  # only the command line (and the demo's report) imports these
MAY_IMPORT_TOP = {"cli", "__main__", "demo", "bench", "report"}


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("vq3d.") and name.split(".")[1] != part:
                    found.setdefault(part, set()).add(name.split(".")[1])
    return found


def test_lower_layers_import_only_what_they_may():
    imports = _imports()
    assert {"render", "models", "losses", "config"} <= set(imports)  # the scan sees the packages
    wrong = {part: sorted(imports.get(part, set()) - allowed) for part, allowed in ALLOWED.items()}
    assert not any(wrong.values()), wrong


def test_only_the_command_line_imports_the_top():
    imports = _imports()
    wrong = {part: sorted(deps & TOP) for part, deps in imports.items() if part not in MAY_IMPORT_TOP and deps & TOP}
    assert not wrong, wrong
