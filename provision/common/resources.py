"""Where the packaged data lives: ``matrices/`` and ``templates/``.

In a source checkout they sit at the repository root next to the ``provision``
package; in an installed wheel ``pyproject.toml`` maps them to
``provision/_data/<name>``. One resolver serves both layouts so no caller has to
know which one it runs from.
"""

from __future__ import annotations

from pathlib import Path

from provision.errors import ProvisionError

__all__ = ["DATA_NAMES", "data_dir", "package_dir"]

DATA_NAMES = ("matrices", "templates")


def data_dir(name: str) -> Path:
    """The directory holding the packaged ``matrices`` or ``templates``.

    The installed layout (``provision/_data/<name>``) wins over the checkout layout
    (``<repo>/<name>``) so that an installed wheel never reads a stray checkout.

    :raises ValueError: ``name`` is not one of ``DATA_NAMES`` (a programming error).
    :raises ProvisionError: neither layout has the directory (a broken install).
    """
    if name not in DATA_NAMES:
        raise ValueError(f"unknown data directory {name!r}; expected one of {', '.join(DATA_NAMES)}")
    package = package_dir()
    for candidate in (package / "_data" / name, package.parent / name):
        if candidate.is_dir():
            return candidate
    raise ProvisionError(
        f"cannot find the packaged {name}/ directory (looked in {package / '_data' / name} and "
        f"{package.parent / name}); reinstall provision"
    )


def package_dir() -> Path:
    """The ``provision`` package directory, via importlib.resources where it is a real path."""
    try:
        from importlib.resources import files

        root = files("provision")
        if isinstance(root, Path):
            return root
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - unusual importers
        pass
    return Path(__file__).resolve().parent.parent
