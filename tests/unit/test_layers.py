"""The layers of ARCHITECTURE.md hold: edges never reach into storage, nor into each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pacs"

FORBIDDEN = {
    "scp": ("pacs.index", "pacs.blobstore", "pacs.web", "sqlalchemy"),
    "web": ("pacs.index", "pacs.blobstore", "pacs.scp", "sqlalchemy", "pynetdicom"),
    "services": ("pacs.scp", "pacs.web", "pynetdicom", "starlette"),
    "index": ("pacs.scp", "pacs.web", "pacs.services", "pacs.blobstore"),
    "blobstore": ("pacs.scp", "pacs.web", "pacs.services", "pacs.index", "pydicom"),
    "dicom": ("pacs.scp", "pacs.web", "pacs.services", "pacs.index", "pacs.blobstore", "sqlalchemy"),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports(layer: str) -> None:
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
                offenders.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_no_environment_reads_outside_config() -> None:
    offenders = [
        str(p.relative_to(PACKAGE.parent))
        for p in PACKAGE.rglob("*.py")
        if p.name != "config.py"
        and ("os.environ" in p.read_text(encoding="utf-8") or "getenv(" in p.read_text(encoding="utf-8"))
    ]
    assert not offenders
