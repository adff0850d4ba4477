"""Before a long build or load: does the model fit in this machine's RAM, GPU memory and disk?

A full-size model that does not fit would grow the process for many minutes and then die (or
swap the machine to a halt); the smoke test refuses first, with the numbers. The needs come from
the planner's own estimate (``provision.plan.memory``) for the folder's config at the run's
precision, device and context; what is free is read once (``read_room``) and passed in, so the
decision itself (``check_fits``) is pure.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import SmokeError

__all__ = ["Need", "Room", "available_ram", "check_fits", "check_room", "need_for", "read_room"]

#: Context the estimate budgets for when the run uses a short prompt (no ``--context``).
SHORT_CONTEXT = 1024
#: Bytes the synthetic folder takes beyond its bf16 weights (tokenizer, configs), and slack for the filesystem.
_DISK_SLACK = 1 << 30


@dataclass(frozen=True, slots=True, kw_only=True)
class Need:
    """Bytes a run needs: in RAM, over its GPUs, and on disk (each 0 when that place is not used)."""

    what: str
    ram: int = 0
    gpu: int = 0
    disk: int = 0
    disk_root: Path | None = None
    why: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Room:
    """What is free now: RAM the kernel can give (MemAvailable), each GPU's free memory, disk per folder."""

    ram: int | None
    gpus: Mapping[int, int] = field(default_factory=dict)
    disk: Mapping[Path, int] = field(default_factory=dict)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def check_fits(need: Need, room: Room) -> None:
    """Refuse a run that cannot fit, naming what it needs and what is free.

    :raises SmokeError: RAM, GPU memory or disk is short (an unknown amount is not checked).
    """
    short = []
    if need.ram and room.ram is not None and need.ram > room.ram:
        short.append(f"{_gb(need.ram)} of RAM, {_gb(room.ram)} is available")
    if need.gpu and room.gpus:
        free = sum(room.gpus.values())
        if need.gpu > free:
            where = ", ".join(f"GPU {i} {_gb(b)}" for i, b in sorted(room.gpus.items()))
            short.append(f"{_gb(need.gpu)} of GPU memory, {_gb(free)} is free ({where})")
    if need.disk and need.disk_root is not None and need.disk_root in room.disk and need.disk > room.disk[need.disk_root]:
        short.append(f"{_gb(need.disk)} of disk under {need.disk_root}, {_gb(room.disk[need.disk_root])} is free "
                     "(set TMPDIR to a larger disk)")
    if short:
        why = f" ({need.why})" if need.why else ""
        raise SmokeError(f"{need.what} needs {'; and '.join(short)}{why}; refusing before it starts. Free memory, "
                         "choose a smaller --precision, or prove the stack only with --tiny")


def need_for(config: Mapping[str, Any], *, what: str, precision: str, device: str, context: int | None,
             skip: Sequence[str] = (), synthetic_parameters: int | None = None, disk_root: Path | None = None) -> Need:
    """What loading ``config`` at ``precision`` on ``device`` needs, plus building it when ``synthetic_parameters``.

    A synthetic model is first made in bf16 (in RAM, as the CPU builds it) and written to ``disk_root``;
    the load that follows needs the planner's estimate on the device (RAM on the CPU).
    """
    from provision.smoke.report import planner_estimate

    tokens = context or SHORT_CONTEXT
    estimate = planner_estimate(config, precision, tokens, "cuda" if device == "cuda" else "cpu", skip)
    load = int(estimate.total)
    why = f"the planner's estimate for {precision} on {device.upper() if device == 'cpu' else 'the GPUs'} " \
          f"at {tokens:,} tokens"
    ram, gpu = (0, load) if device == "cuda" else (load, 0)
    disk = 0
    if synthetic_parameters is not None:
        weights = synthetic_parameters * 2  # bf16
        disk = int(weights * 1.05) + _DISK_SLACK
        if device != "cuda":
            ram = max(ram, weights)
        why += f"; building it takes {_gb(weights)} of bf16 weights"
    return Need(what=what, ram=ram, gpu=gpu, disk=disk, disk_root=disk_root, why=why)


def available_ram() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; None where neither is known."""
    from provision.host.parse import parse_meminfo

    try:
        _, available = parse_meminfo(Path("/proc/meminfo").read_text(encoding="ascii", errors="replace"))
    except OSError:
        available = None
    if available is not None:
        return available
    import os

    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def read_room(gpus: Sequence[int], disk_roots: Sequence[Path] = ()) -> Room:
    """What is free now on this machine: RAM, the given GPUs (through torch), the given folders' disks."""
    free: dict[int, int] = {}
    if gpus:
        import torch

        free = {i: int(torch.cuda.mem_get_info(i)[0]) for i in gpus}
    disk: dict[Path, int] = {}
    for root in disk_roots:
        probe = root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        disk[root] = shutil.disk_usage(probe).free
    return Room(ram=available_ram(), gpus=free, disk=disk)


def check_room(config: Mapping[str, Any], *, what: str, precision: str, device: str, gpus: Sequence[int],
               context: int | None, skip: Sequence[str] = (), synthetic_parameters: int | None = None,
               disk_root: Path | None = None) -> None:
    """``check_fits`` against what is free now; a config the estimator cannot read is not checked.

    :raises SmokeError: the run cannot fit, with the numbers.
    """
    from provision.errors import ProvisionError

    try:
        need = need_for(config, what=what, precision=precision, device=device, context=context, skip=skip,
                        synthetic_parameters=synthetic_parameters, disk_root=disk_root)
    except (ImportError, ProvisionError, KeyError, TypeError, ValueError):
        return  # no estimate: loading will say what is wrong
    check_fits(need, read_room(gpus if device == "cuda" else (), [disk_root] if disk_root is not None else []))
