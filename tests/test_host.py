"""The host profile loader: reference hosts, every error path, round trips, and fuzzing."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.version import Version

import provision.common.fields
from provision.common.fields import UnknownKeyWarning
from provision.errors import InvalidInput
from provision.host.profile import GpuInfo, HostProfile, host_from_dict, load_host

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
HOST_FILES = sorted(HOSTS.glob("*.json"))
MAX = 2**50

# The contract's example, verbatim.
CONTRACT_EXAMPLE: dict[str, Any] = {
    "schema": "provision.host/v1",
    "os": "linux",
    "arch": "x86_64",
    "python": "3.11.7",
    "ram_bytes": 68719476736,
    "disk_free_bytes": 214748364800,
    "nvidia": {
        "driver_version": "535.183.01",
        "cuda_driver_version": "12.2",
        "gpus": [
            {"index": 0, "name": "NVIDIA A10G", "compute_capability": "8.6",
             "memory_total_bytes": 24146608128, "memory_free_bytes": 23580000000}
        ],
    },
}


def example(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(CONTRACT_EXAMPLE)
    data.update(changes)
    return data


def gpu0(data: dict[str, Any]) -> dict[str, Any]:
    return data["nvidia"]["gpus"][0]


# --- valid profiles --------------------------------------------------------------------------


def test_reference_hosts_are_present() -> None:
    names = {p.stem for p in HOST_FILES}
    assert len(names) >= 20
    assert {"linux-x86_64-a10g-driver535", "linux-x86_64-cpu-only-32gb", "macos-arm64-m2-32gb",
            "linux-x86_64-v100-16gb-driver580", "linux-x86_64-2x-rtx4090-driver550"} <= names


@pytest.mark.parametrize("path", HOST_FILES, ids=lambda p: p.stem)
def test_reference_host_round_trips_exactly(path: Path) -> None:
    raw = json.loads(path.read_text())
    host = load_host(path)
    assert host.to_dict() == raw
    assert host_from_dict(host.to_dict(), "again") == host
    for gpu in host.gpus:
        assert 0 < gpu.memory_free_bytes < gpu.memory_total_bytes  # plausible: some memory in use


def test_a10g_reference_host_is_the_contract_example() -> None:
    assert json.loads((HOSTS / "linux-x86_64-a10g-driver535.json").read_text()) == CONTRACT_EXAMPLE


def test_contract_example_values() -> None:
    host = host_from_dict(CONTRACT_EXAMPLE, "host.json")
    assert (host.os, host.arch, str(host.python), host.python_minor) == ("linux", "x86_64", "3.11.7", "3.11")
    assert (host.ram_bytes, host.disk_free_bytes, host.platform) == (68719476736, 214748364800, "linux-x86_64")
    assert host.nvidia is not None
    assert (host.nvidia.driver_version, str(host.nvidia.cuda_driver_version)) == ("535.183.01", "12.2")
    assert host.gpus == (
        GpuInfo(index=0, name="NVIDIA A10G", compute_capability=(8, 6), memory_total_bytes=24146608128,
                memory_free_bytes=23580000000),
    )
    assert (host.gpus[0].sm, host.gpus[0].cc_text) == ("sm_86", "8.6")
    assert host.host_id == "linux-x86_64-py3.11-1xA10G"


def test_optional_keys_take_their_defaults() -> None:
    data = example()
    del data["disk_free_bytes"]
    del data["nvidia"]["cuda_driver_version"]
    del gpu0(data)["memory_free_bytes"]
    del gpu0(data)["index"]
    host = host_from_dict(data)
    assert host.disk_free_bytes is None
    assert host.nvidia is not None and host.nvidia.cuda_driver_version is None
    assert (host.gpus[0].index, host.gpus[0].memory_free_bytes) == (0, 24146608128)
    assert host.glibc is None  # unknown: not checked
    null = example(disk_free_bytes=None, glibc=None)
    null["nvidia"]["cuda_driver_version"] = None
    assert host_from_dict(null).disk_free_bytes is None
    assert host_from_dict(null).glibc is None and "glibc" not in host_from_dict(null).to_dict()


def test_glibc_is_read_compared_as_a_version_and_written_back() -> None:
    data = example(glibc="2.27")
    host = host_from_dict(data)
    assert host.glibc == Version("2.27") and host.glibc < Version("2.28") < Version("2.100")
    assert host.to_dict() == data
    assert "glibc" not in host.extra


def test_no_nvidia() -> None:
    host = host_from_dict(example(nvidia=None, os="darwin", arch="arm64"))
    assert (host.nvidia, host.gpus, host.platform, host.host_id) == (None, (), "macos-arm64",
                                                                     "darwin-arm64-py3.11-cpu")


def test_unknown_keys_are_kept_and_written_back() -> None:
    data = example(detected_by={"nvidia": "nvml"}, comment="lab box 3")
    with pytest.warns(UnknownKeyWarning) as caught:
        host = host_from_dict(data)
    assert [str(w.message) for w in caught] == ["host: comment: unknown key, ignored"]  # detected_by is detect's own
    assert host.extra == {"detected_by": {"nvidia": "nvml"}, "comment": "lab box 3"}
    assert host.to_dict() == data


def test_misspelled_keys_warn_with_the_nearest_known_one() -> None:
    data = example(ram_byte=1, disk_free=2)
    data["nvidia"]["cuda_version"] = "12.2"
    data["nvidia"]["gpus"][0]["memory_fre_bytes"] = 5
    with pytest.warns(UnknownKeyWarning) as caught:
        host = host_from_dict(data, "host.json")
    assert sorted(str(w.message) for w in caught) == [
        "host.json: disk_free: unknown key, ignored; did you mean disk_free_bytes?",
        "host.json: nvidia.cuda_version: unknown key, ignored; did you mean cuda_driver_version?",
        "host.json: nvidia.gpus[0].memory_fre_bytes: unknown key, ignored; did you mean memory_free_bytes?",
        "host.json: ram_byte: unknown key, ignored; did you mean ram_bytes?",
    ]
    assert host == host_from_dict(example())  # ignored: the facts are the example's


def test_a_detected_profile_loads_without_warnings() -> None:
    load_host(Path(__file__).parent / "fixtures" / "hosts" / "h100-detected.json")  # warnings are errors here


@pytest.mark.filterwarnings("ignore::provision.common.fields.UnknownKeyWarning")
def test_profiles_compare_by_facts_not_extras() -> None:
    assert host_from_dict(example(note="a")) == host_from_dict(example(note="b"))
    assert host_from_dict(example()) != host_from_dict(example(python="3.12.1"))


# --- every error path, with the exact message ------------------------------------------------


def _set(path: str, value: Any) -> dict[str, Any]:
    """The contract example with one dotted key set (``_DELETE`` removes it)."""
    data = example()
    node: Any = data
    keys = path.replace("[", ".").replace("]", "").split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = keys[-1]
    if value is _DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


_DELETE = object()
ERRORS: list[tuple[str, Any, str]] = [
    ("schema", _DELETE, "schema: required key is missing"),
    ("schema", "provision.host/v2", "schema: unsupported schema 'provision.host/v2'; expected 'provision.host/v1'"),
    ("schema", 1, "schema: expected a string, got integer"),
    ("os", "solaris", "os: 'solaris' is not one of linux, windows, darwin"),
    ("os", "", "os: must not be empty"),
    ("arch", "i686", "arch: 'i686' is not one of x86_64, aarch64, arm64"),
    ("python", "three", "python: 'three' is not a version"),
    ("python", "2.7.18", "python: 2.7.18 is not a CPython 3.x version"),
    ("python", "3", "python: 3 is not a CPython 3.x version"),
    ("python", 3.11, "python: expected a string, got number"),
    ("python", _DELETE, "python: required key is missing"),
    ("ram_bytes", _DELETE, "ram_bytes: required key is missing"),
    ("ram_bytes", True, "ram_bytes: expected an integer, got boolean"),
    ("ram_bytes", "64GB", "ram_bytes: expected an integer, got string"),
    ("ram_bytes", 6.4e10, "ram_bytes: expected an integer, got number"),
    ("ram_bytes", 0, f"ram_bytes: 0 is out of range [1, {MAX}]"),
    ("ram_bytes", 2**51, f"ram_bytes: {2**51} is out of range [1, {MAX}]"),
    ("ram_bytes", None, "ram_bytes: expected an integer, got null"),
    ("disk_free_bytes", -1, f"disk_free_bytes: -1 is out of range [0, {MAX}]"),
    ("disk_free_bytes", False, "disk_free_bytes: expected an integer, got boolean"),
    ("glibc", 2.35, "glibc: expected a string, got number"),
    ("glibc", "2.35\n", "glibc: '2.35\\n' is not a glibc version like '2.35'"),
    ("glibc", "musl", "glibc: 'musl' is not a glibc version like '2.35'"),
    ("glibc", "3.1", "glibc: '3.1' is not a glibc version like '2.35'"),
    ("nvidia", _DELETE, "nvidia: required key is missing (use null for a machine without an NVIDIA GPU)"),
    ("nvidia", "yes", "nvidia: expected an object, got string"),
    ("nvidia", [], "nvidia: expected an object, got array"),
    ("nvidia.driver_version", _DELETE, "nvidia.driver_version: required key is missing"),
    ("nvidia.driver_version", "latest", "nvidia.driver_version: 'latest' is not a driver version like '535.183.01'"),
    ("nvidia.driver_version", 535.183, "nvidia.driver_version: expected a string, got number"),
    ("nvidia.cuda_driver_version", "12", "nvidia.cuda_driver_version: '12' is not a CUDA version like '12.2'"),
    ("nvidia.cuda_driver_version", 12.2, "nvidia.cuda_driver_version: expected a string, got number"),
    ("nvidia.gpus", {}, "nvidia.gpus: expected an array, got object"),
    ("nvidia.gpus[0]", 5, "nvidia.gpus[0]: expected an object, got integer"),
    ("nvidia.gpus[0].index", -1, "nvidia.gpus[0].index: -1 is out of range [0, 63]"),
    ("nvidia.gpus[0].index", "0", "nvidia.gpus[0].index: expected an integer, got string"),
    ("nvidia.gpus[0].name", _DELETE, "nvidia.gpus[0].name: required key is missing"),
    ("nvidia.gpus[0].name", " ", "nvidia.gpus[0].name: must not be empty"),
    ("nvidia.gpus[0].name", "A10G\n", "nvidia.gpus[0].name: must be at most 128 printable characters"),
    ("nvidia.gpus[0].name", "x" * 129, "nvidia.gpus[0].name: must be at most 128 printable characters"),
    ("nvidia.gpus[0].compute_capability", 8.6,
     "nvidia.gpus[0].compute_capability: expected a string like '8.6', got a number"),
    ("nvidia.gpus[0].compute_capability", "sm_86",
     "nvidia.gpus[0].compute_capability: 'sm_86' is not a compute capability like '8.6'"),
    ("nvidia.gpus[0].compute_capability", "0.5",
     "nvidia.gpus[0].compute_capability: '0.5' is not a known compute capability"),
    ("nvidia.gpus[0].compute_capability", _DELETE, "nvidia.gpus[0].compute_capability: required key is missing"),
    ("nvidia.gpus[0].memory_total_bytes", True,
     "nvidia.gpus[0].memory_total_bytes: expected an integer, got boolean"),
    ("nvidia.gpus[0].memory_total_bytes", 0, f"nvidia.gpus[0].memory_total_bytes: 0 is out of range [1, {MAX}]"),
    ("nvidia.gpus[0].memory_free_bytes", 24146608129,
     "nvidia.gpus[0].memory_free_bytes: 24146608129 is more than memory_total_bytes (24146608128)"),
    ("nvidia.gpus[0].memory_free_bytes", "all",
     "nvidia.gpus[0].memory_free_bytes: expected an integer, got string"),
]


@pytest.mark.parametrize(("path", "value", "message"), ERRORS, ids=[f"{p}={v!r}"[:60] for p, v, _ in ERRORS])
def test_error_names_file_field_and_problem(path: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        host_from_dict(_set(path, value), "host.json")
    assert str(err.value) == f"host.json: {message}"
    assert err.value.exit_code == 2


@pytest.mark.parametrize(("document", "message"), [
    ([], "(document): expected an object, got array"),
    ("host", "(document): expected an object, got string"),
    (None, "(document): expected an object, got null"),
])
def test_document_must_be_an_object(document: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        host_from_dict(document, "host.json")
    assert str(err.value) == f"host.json: {message}"


def test_duplicate_gpu_index() -> None:
    data = example()
    data["nvidia"]["gpus"].append(dict(gpu0(data)))
    with pytest.raises(InvalidInput) as err:
        host_from_dict(data, "host.json")
    assert str(err.value) == "host.json: nvidia.gpus[1].index: index 0 appears twice"


def test_too_many_gpus() -> None:
    data = example()
    data["nvidia"]["gpus"] = [dict(gpu0(data), index=i % 64) for i in range(65)]
    with pytest.raises(InvalidInput) as err:
        host_from_dict(data, "host.json")
    assert str(err.value) == "host.json: nvidia.gpus: 65 GPUs; at most 64 are supported"


# --- file-level errors -----------------------------------------------------------------------


def _load_text(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "host.json"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(InvalidInput) as err:
        load_host(path)
    prefix = f"{path}: "
    assert str(err.value).startswith(prefix)
    return str(err.value)[len(prefix):]


def test_nan_is_refused(tmp_path: Path) -> None:
    text = json.dumps(example()).replace("68719476736", "NaN")
    assert _load_text(tmp_path, text) == "(document): invalid JSON: NaN is not a number"
    assert _load_text(tmp_path, text.replace("NaN", "-Infinity")) == (
        "(document): invalid JSON: -Infinity is not a number")


def test_huge_number_is_refused(tmp_path: Path) -> None:
    text = json.dumps(example()).replace("68719476736", "1e400")
    assert _load_text(tmp_path, text) == "ram_bytes: expected an integer, got number"
    digits = json.dumps(example()).replace("68719476736", "9" * 5000)
    assert _load_text(tmp_path, digits).startswith("(document): invalid JSON: ")


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    assert _load_text(tmp_path, '{\n  "schema": }') == (
        "(document): invalid JSON at line 2 column 13: Expecting value")


def test_not_utf8(tmp_path: Path) -> None:
    assert _load_text(tmp_path, b'{"schema": "\xff"}') == "(document): not UTF-8 text"


def test_deep_nesting(tmp_path: Path) -> None:
    nested = json.dumps(example(deep=json.loads("[" * 80 + "]" * 80)))
    assert _load_text(tmp_path, nested) == "(document): nested deeper than 64 levels"
    very = '{"deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert _load_text(tmp_path, very) == "(document): nested deeper than 64 levels"


def test_huge_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provision.common.fields, "MAX_INPUT_BYTES", 1024)
    text = json.dumps(example(padding="x" * 2000))
    assert _load_text(tmp_path, text) == f"(file): file is {len(text)} bytes; the limit is 1024"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        load_host(tmp_path / "nope.json")
    assert str(err.value) == f"{tmp_path / 'nope.json'}: (file): no such file"
    with pytest.raises(InvalidInput) as err:
        load_host(tmp_path)
    assert str(err.value) == f"{tmp_path}: (file): is a directory, expected a file"


# --- property tests: nothing but InvalidInput escapes ------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
KEYS = ["schema", "os", "arch", "python", "ram_bytes", "disk_free_bytes", "glibc", "nvidia", "nvidia.driver_version",
        "nvidia.cuda_driver_version", "nvidia.gpus", "nvidia.gpus[0]", "nvidia.gpus[0].index",
        "nvidia.gpus[0].name", "nvidia.gpus[0].compute_capability", "nvidia.gpus[0].memory_total_bytes",
        "nvidia.gpus[0].memory_free_bytes"]


def _loads_or_refuses(data: Any) -> None:
    try:
        host = host_from_dict(data, "fuzz.json")
    except InvalidInput as err:
        assert str(err).startswith("fuzz.json: ")
        return
    assert isinstance(host, HostProfile)
    assert host_from_dict(host.to_dict(), "again") == host


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_arbitrary_json_only_raises_invalid_input(data: Any) -> None:
    _loads_or_refuses(data)


@pytest.mark.filterwarnings("ignore::provision.common.fields.UnknownKeyWarning")
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KEYS), JSON)
def test_one_corrupted_field_only_raises_invalid_input(key: str, value: Any) -> None:
    _loads_or_refuses(_set(key, value))


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=30))
def test_arbitrary_version_strings(text: str) -> None:
    _loads_or_refuses(example(python=text))
    data = example()
    data["nvidia"]["driver_version"] = text
    _loads_or_refuses(data)


@pytest.mark.parametrize(("key", "value"), [("driver_version", "535.183.01\n"), ("cuda_driver_version", "12.2\n")])
def test_a_trailing_newline_is_not_a_version(key: str, value: str) -> None:
    """``$`` matches before a final newline; validators use fullmatch so no newline reaches a script."""
    nvidia = {"driver_version": "535.183.01", "gpus": [], key: value}
    doc = {"schema": "provision.host/v1", "os": "linux", "arch": "x86_64", "python": "3.11.7",
           "ram_bytes": 10**10, "nvidia": nvidia}
    with pytest.raises(InvalidInput, match=f"^h.json: nvidia.{key}: "):
        host_from_dict(doc, "h.json")


def test_host_imports_only_earlier_stages() -> None:
    """host/ reads data/ (the GPU table) and common/; the planner and later stages import it, never the reverse."""
    import subprocess
    import sys

    code = ("import sys, provision.host; "
            "later = sorted(m for m in sys.modules if m.startswith(('provision.plan', 'provision.render', "
            "'provision.smoke', 'provision.doctor', 'provision.cli', 'provision.display', 'provision.build'))); "
            "print(later); sys.exit(1 if later else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
