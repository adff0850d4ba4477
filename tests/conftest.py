"""Shared test setup: the ``gpu`` marker and a guard against touching a real NVIDIA driver."""

from __future__ import annotations

import shutil

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
