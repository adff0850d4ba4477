"""Stage 1, detect: the host profile, the probes that fill it, and the pure parsers of what they report.

Submodules: ``profile`` (``HostProfile`` and its JSON form), ``detect`` (the probes, the
imperative shell), ``parse`` (pure parsers of what the probes return). Other packages
import the names below from here.
"""

from __future__ import annotations

from provision.host.detect import Probes, detect_host
from provision.host.profile import GpuInfo, HostProfile, NvidiaInfo, host_from_dict, load_host, wheel_platform

__all__ = [
    "GpuInfo",
    "HostProfile",
    "NvidiaInfo",
    "Probes",
    "detect_host",
    "host_from_dict",
    "load_host",
    "wheel_platform",
]
