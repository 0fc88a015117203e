"""The private parts of the pinned libraries that mcp-tiered reaches into, one module per library.

`llama_cpp` (llama-cpp-python) and `mcp_sdk` (the MCP Python SDK) hold every use of an underscore
attribute of those libraries, each in a small named function that says what it reaches into and why.
A private API can change in any release, so each module declares the version it was written against
(`PINNED`, the `==` pin in pyproject.toml; a test keeps the two equal) and `version_problem()` names
the pin when the installed version differs. `version_problems()` gathers them for `serve` and `check`.

Importing this package imports neither library: the versions come from the installed metadata.
"""

from __future__ import annotations

from importlib import metadata

REINSTALL = "scripts/setup.sh"


def version_sentence(distribution: str, pinned: str, installed: str | None) -> str | None:
    """One sentence naming the pin when `installed` (None: not installed) is not `pinned`; None when it is.
    A local version label (`0.3.36+cpu`) is the same release."""
    if installed is not None and installed.split("+", 1)[0] == pinned:
        return None
    if installed is None:
        return (f"{distribution} is not installed but mcp-tiered is built against {pinned} (the pin in "
                f"pyproject.toml): install it with {REINSTALL}")
    return (f"{distribution} {installed} is installed but mcp-tiered is built against {pinned} (the pin in "
            f"pyproject.toml), whose private APIs it reaches into: reinstall with {REINSTALL}")


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def version_problems() -> list[str]:
    """One sentence per pinned library whose installed version is not the pin (empty when all match)."""
    from . import llama_cpp, mcp_sdk

    return [problem for module in (llama_cpp, mcp_sdk) if (problem := module.version_problem()) is not None]
