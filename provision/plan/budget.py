"""Memory budgets the search and the remedies share: the RAM a host can give a model, and sizes in GB.

Its own module so that ``search`` (which fits models into RAM) and ``remedies`` (which says how much
RAM a CPU plan would need) both read it without importing each other.
"""

from __future__ import annotations

__all__ = ["RAM_RESERVE_BYTES", "RAM_RESERVE_FRACTION", "gb", "ram_needed", "usable_ram"]

#: Off CUDA the OS and other processes need room too: keep this much RAM back
#: (the larger of an absolute floor and a share; Python and torch are already in the estimate).
RAM_RESERVE_BYTES = 1_500_000_000
RAM_RESERVE_FRACTION = 0.06


def usable_ram(ram_bytes: int) -> int:
    return ram_bytes - max(RAM_RESERVE_BYTES, int(ram_bytes * RAM_RESERVE_FRACTION))


def ram_needed(total_bytes: int) -> int:
    """The RAM a host needs for ``usable_ram`` to hold ``total_bytes`` (its inverse)."""
    return total_bytes + max(RAM_RESERVE_BYTES, int(total_bytes * RAM_RESERVE_FRACTION / (1 - RAM_RESERVE_FRACTION)))


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"
