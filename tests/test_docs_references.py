"""Every `path:name` code reference in the docs (docs/paper.md maps the paper to the code this
way) names a file that exists and a top-level function or class, or a Class.method, defined in it;
and code comments point to docs that exist."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"`((?:vq3d|tests|benchmarks)/[\w/]+\.py):([A-Za-z_][\w.]*)`")


def _definitions(path: Path) -> set[str]:
    """Top-level functions and classes of a module, and each class's methods as Class.method."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{n.name}" for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return names


def _references() -> list[tuple[str, str, str]]:
    found = []
    for doc in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]:
        found += [(doc.name, path, name) for path, name in REFERENCE.findall(doc.read_text())]
    return found


def test_the_paper_map_has_references_to_check():
    assert sum(doc == "paper.md" for doc, _, _ in _references()) >= 40


@pytest.mark.parametrize("doc, path, name", _references())
def test_every_code_reference_in_the_docs_exists(doc, path, name):
    assert (ROOT / path).is_file(), f"{doc}: {path} does not exist"
    assert name in _definitions(ROOT / path), f"{doc}: {path} defines no {name}"


def test_code_comments_point_to_docs_that_exist():
    missing = []
    for source in (ROOT / "vq3d").rglob("*.py"):
        # docs/*.md and the upper-case doc names (README.md, PROTOCOL.md; not outputs like table3.md)
        for ref in re.findall(r"\b(docs/[\w-]+\.md|[A-Z][A-Z_]+\.md)\b", source.read_text()):
            if not any((base / ref).is_file() for base in (ROOT, ROOT / "docs", source.parent)):
                missing.append(f"{source.relative_to(ROOT)}: {ref}")
    assert not missing, missing
