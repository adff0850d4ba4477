"""The GPU table (``matrices/gpus.toml``, ``Matrix.gpus``): name normalisation, lookups, validation.

Detection asks it only for what a driver leaves out (old nvidia-smi without ``compute_cap``,
``/proc/driver/nvidia``); how detection uses it is in test_detect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provision.common.fields import Fields
from provision.data.gpus import GpuModel, GpuTable, gpu_table_from_fields, normalize_gpu_name
from provision.data.matrix import load_matrix
from provision.errors import InvalidInput
from provision.host.parse import parse_smi_query
from provision.host.profile import load_host

FIX = Path(__file__).parent / "fixtures"
MiB = 1024 * 1024
TABLE = load_matrix().gpus


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reported", "key"), [
    ("NVIDIA GeForce RTX 4090", "rtx 4090"),
    ("GeForce RTX 4090", "rtx 4090"),  # drivers of the 470 branch drop the vendor
    ("Tesla V100-PCIE-32GB", "v100 pcie 32gb"),
    ("NVIDIA A100 80GB PCIe", "a100 80gb pcie"),
    ("  nvidia   H100__NVL ", "h100 nvl"),  # case, runs of other characters, surrounding space
    ("Orin (nvgpu)", "orin nvgpu"),
    ("NVIDIA", ""),  # nothing left to match on
    ("", ""),
])
def test_normalize_gpu_name(reported: str, key: str) -> None:
    assert normalize_gpu_name(reported) == key


# --- lookups in the bundled table -----------------------------------------------------------------


def test_gpu_table_lookups() -> None:
    assert TABLE.lookup("NVIDIA GeForce RTX 4090") == ((8, 9), 24564 * MiB)
    assert TABLE.lookup("GeForce RTX 4090") == ((8, 9), 24564 * MiB)
    assert TABLE.lookup("Tesla V100-PCIE-32GB") == ((7, 0), 32768 * MiB)
    assert TABLE.lookup("NVIDIA GeForce RTX 5090") == ((12, 0), 32607 * MiB)
    assert TABLE.lookup("NVIDIA B200") == ((10, 0), 183359 * MiB)
    assert TABLE.lookup("NVIDIA GeForce RTX 3060") == ((8, 6), None)  # 12 GB and 8 GB cards
    assert TABLE.lookup("NVIDIA GeForce RTX 3060 Ti") == ((8, 6), 8192 * MiB)
    assert TABLE.lookup("NVIDIA RTX A2000 12GB") is None
    assert TABLE.lookup("!!!") is None


def test_a_family_prefix_gives_the_compute_capability_but_not_the_memory() -> None:
    assert TABLE.lookup("NVIDIA A100-SXM4-64GB") == ((8, 0), None)  # A100 40GB and 80GB share the prefix
    assert TABLE.lookup("NVIDIA H100 94GB HBM2e") == ((9, 0), None)
    assert TABLE.lookup("NVIDIA A100") == ((8, 0), None)  # the prefix itself
    assert TABLE.lookup("NVIDIA A1000") is None  # a prefix matches whole words only


def test_the_longest_prefix_wins() -> None:
    table = GpuTable(models=(
        GpuModel(model="V100", names=("Tesla V100 X",), prefixes=("V100",), compute_capability=(7, 0),
                 memory_bytes=None),
        GpuModel(model="V100 SXM3", names=("Tesla V100 SXM3 Y",), prefixes=("V100 SXM3",),
                 compute_capability=(7, 2), memory_bytes=None),
    ))
    assert table.lookup("Tesla V100-SXM3-32GB") == ((7, 2), None)
    assert table.lookup("Tesla V100-PCIE-16GB") == ((7, 0), None)


def test_an_exact_name_beats_a_prefix() -> None:
    assert TABLE.lookup("NVIDIA GH200 480GB") == ((9, 0), 97871 * MiB)  # not taken for the H200 family
    assert TABLE.lookup("NVIDIA H200") == ((9, 0), 143771 * MiB)


def test_aarch64_rows() -> None:
    """Jetson Orin (an integrated GPU: no memory of its own) and the Grace Hopper superchips."""
    orin = TABLE.lookup("Orin (nvgpu)")
    assert orin == ((8, 7), None)
    assert TABLE.lookup("Jetson Orin NX") == ((8, 7), None)
    assert TABLE.lookup("NVIDIA GH200 144G HBM3e") == ((9, 0), 146831 * MiB)
    aarch64_only = {m.model for m in TABLE.models if m.platforms == ("linux-aarch64",)}
    assert aarch64_only == {"Jetson Orin", "GH200 96GB", "GH200 144GB"}


def test_reference_hosts_agree_with_the_table() -> None:
    for path in sorted((FIX / "hosts").glob("*.json")):
        for gpu in load_host(path).gpus:
            known = TABLE.lookup(gpu.name)
            assert known is not None, f"{path.name}: {gpu.name} missing from gpus.toml"
            assert known[0] == gpu.compute_capability, path.name


def test_recorded_nvidia_smi_names_are_all_known() -> None:
    """Every GPU in the recorded nvidia-smi outputs, so detection can fill what an old driver omits."""
    names = set()
    for path in (FIX / "nvidia-smi").glob("*.query*.txt"):
        _driver, gpus = parse_smi_query(path.read_text(), with_cc=".query.txt" in path.name)
        names |= {g.name for g in gpus}
    assert len(names) >= 8
    assert [n for n in sorted(names) if TABLE.lookup(n) is None] == []


# --- validation ---------------------------------------------------------------------------------


def _table(**row: Any) -> dict[str, Any]:
    base = {"model": "X", "names": ["NVIDIA X1"], "compute_capability": "8.6", "memory_mib": 1024}
    base.update(row)
    return {"schema_version": 1, "meta": {"sources": ["https://example.invalid"], "retrieved": "2026-11-24"},
            "gpu": [base]}


def test_a_valid_row_loads() -> None:
    table = gpu_table_from_fields(Fields(_table(prefixes=["X"], platforms=["linux-aarch64"]), "gpus.toml"))
    assert table.models == (GpuModel(model="X", names=("NVIDIA X1",), prefixes=("X",), compute_capability=(8, 6),
                                     memory_bytes=1024 * MiB, platforms=("linux-aarch64",)),)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**_table(), "schema_version": 2}, "gpus.toml: schema_version: unsupported schema_version 2; expected 1"),
        ({k: v for k, v in _table().items() if k != "meta"}, "gpus.toml: meta: required key is missing"),
        ({**_table(), "meta": {"sources": [], "retrieved": "x"}}, "gpus.toml: meta.sources: must list at least one URL"),
        ({**_table(), "gpu": []}, "gpus.toml: gpu: must list at least one GPU"),
        (_table(compute_capability="sm_86"), "gpus.toml: gpu[0].compute_capability: 'sm_86' is not a compute "
                                             "capability like '8.6'"),
        (_table(compute_capability="21.0"), "gpus.toml: gpu[0].compute_capability: '21.0' is not a compute "
                                            "capability like '8.6'"),
        (_table(compute_capability=8.6), "gpus.toml: gpu[0].compute_capability: expected a string, got number"),
        (_table(memory_mib=True), "gpus.toml: gpu[0].memory_mib: expected an integer, got boolean"),
        (_table(names=[]), "gpus.toml: gpu[0].names: must list at least one name"),
        (_table(names=["NVIDIA"]), "gpus.toml: gpu[0].names[0]: 'NVIDIA' has no letters or digits"),
        (_table(prefixes=["Tesla"]), "gpus.toml: gpu[0].prefixes[0]: 'Tesla' has no letters or digits"),
        (_table(platforms=["linux-riscv"]), "gpus.toml: gpu[0].platforms[0]: 'linux-riscv' is not one of "
                                            "linux-x86_64, linux-aarch64, windows-x86_64, macos-arm64, macos-x86_64"),
        (_table(source=3), "gpus.toml: gpu[0].source: expected a string, got integer"),
        ({**_table(), "gpu": [_table()["gpu"][0], {**_table()["gpu"][0], "names": ["GeForce X1"]}]},
         "gpus.toml: gpu[1].names[0]: 'GeForce X1' is already listed in gpu[0]"),
    ],
)
def test_gpu_table_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        gpu_table_from_fields(Fields(data, "gpus.toml"))
    assert str(err.value) == message
