"""docs/ARCHITECTURE.md stays current: its module table names every module of the package, and only those."""

from __future__ import annotations

import re

from conftest import REPO

PACKAGE = REPO / "mcp_tiered"
PAGE = REPO / "docs" / "ARCHITECTURE.md"


def modules_named() -> set[str]:
    """The paths in the first column of the page's module table (`config/schema.py`)."""
    cells = [line.split("|")[1] for line in PAGE.read_text(encoding="utf-8").splitlines()
             if line.startswith("| `")]
    return {name for cell in cells for name in re.findall(r"`([\w/]+\.py)`", cell)}


def modules_present() -> set[str]:
    return {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts
            and not (path.name == "__init__.py" and path.read_text(encoding="utf-8").count("\n") <= 1)}


def test_every_module_of_the_package_is_in_the_architecture_page() -> None:
    assert sorted(modules_present() - modules_named()) == []


def test_the_architecture_page_names_no_module_that_is_gone() -> None:
    assert sorted(modules_named() - modules_present()) == []
