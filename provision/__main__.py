"""``python -m provision`` is the same as the ``provision`` command."""

from __future__ import annotations

from provision.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
