"""Shared test setup: the ``gpu`` marker, guards against touching a real NVIDIA driver or asking the network
whether a package index answers, read-only folders."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests on machines without ``nvidia-smi``."""
    if shutil.which("nvidia-smi") is not None:
        return
    skip = pytest.mark.skip(reason="no NVIDIA GPU (nvidia-smi not on PATH)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_real_nvidia(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside ``gpu`` tests, a real nvidia-smi or NVML call fails loudly instead of reading this machine."""
    if request.node.get_closest_marker("gpu") is not None:
        return
    import provision.common.run
    import provision.host.detect

    real_find = provision.common.run.find_program

    def guarded_find(name: str) -> str | None:
        if name.lower().removesuffix(".exe").endswith("nvidia-smi"):
            raise AssertionError("a test ran the real nvidia-smi; inject Probes or mark it @pytest.mark.gpu")
        return real_find(name)

    def guarded_nvml() -> object:
        raise AssertionError("a test loaded the real NVML; inject Probes or mark it @pytest.mark.gpu")

    monkeypatch.setattr(provision.common.run, "find_program", guarded_find)
    monkeypatch.setattr(provision.host.detect, "import_nvml", guarded_nvml)


@pytest.fixture(autouse=True)
def _no_real_index_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command's ``IndexProbe`` never asks the real network in a test: every index answers, so plans are
    those of a connected machine whatever network the tests run on (an unreachable torch index would plan
    PyPI's build). A test of an unreachable index says so: ``monkeypatch.setattr(provision.common.net,
    "probe_index", lambda url: "offline")``."""
    import provision.common.net

    def answers(url: str, timeout: float = 0.0) -> str | None:
        return None

    monkeypatch.setattr(provision.common.net, "probe_index", answers)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_CAP_V3 = 0x20080522
_CAP_DAC_OVERRIDE = 1


@contextlib.contextmanager
def _without_dac_override() -> Iterator[None]:
    """As root, drop CAP_DAC_OVERRIDE from this thread's effective set, so folder modes bind root too.

    The capability stays permitted and comes back afterwards; a program this thread execs gets it again.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(_CAP_V3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        pytest.skip("cannot read this process's capabilities: a read-only folder does not bind root here")
    saved = data[0].effective
    data[0].effective &= ~(1 << _CAP_DAC_OVERRIDE)
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE: a read-only folder does not bind root here")
    try:
        yield
    finally:
        data[0].effective = saved
        libc.capset(ctypes.byref(header), data)


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], Path]]:
    """``read_only(folder)`` makes ``folder`` unwritable for the rest of the test, for root too.

    Folders are writable again at teardown, so tmp_path can be cleaned.
    """
    made: list[Path] = []

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        made.append(folder)
        return folder

    with _without_dac_override() if os.geteuid() == 0 else contextlib.nullcontext():
        yield make
    for folder in made:
        folder.chmod(0o755)
