"""provision: a pinned, proven environment for GLM-family 9B models on this machine."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
