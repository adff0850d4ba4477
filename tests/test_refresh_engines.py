"""The engines refresh: registry pages and METADATA (recorded), parse, merge, emit, diff; the HTTP client on fakes."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from provision.cli import main
from provision.common.fields import Fields
from provision.data.engines import known_from_files, load_engines, parse_engines
from provision.data.pypi import (
    SIMPLE_JSON,
    IndexFile,
    PypiClient,
    RangeReader,
    metadata_from_zip,
    parse_simple_json,
    pip_network,
)
from provision.data.refresh_engines import (
    REFRESHED,
    ReleaseFacts,
    dump_engines_toml,
    merge_engines,
    metadata_facts,
    refresh_engines,
    release_files,
    split_header,
    wheel_facts,
)
from provision.errors import InvalidInput, ProvisionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MATRICES = Path(__file__).resolve().parents[1] / "matrices"
RECORDED = Path(__file__).parent / "fixtures" / "pypi-engines"
#: The releases the recorded METADATA covers.
COVERED = {"vllm": {"0.19.1", "0.23.0", "0.33.0"}, "sglang": {"0.5.6.post1", "0.5.23"}}


class Recorded:
    """A MetadataSource over the recorded pages; a METADATA it was not recorded with fails the test."""

    def __init__(self) -> None:
        self.read: list[str] = []

    def project_page(self, package: str) -> str:
        return (RECORDED / f"{package}.json").read_text(encoding="utf-8")

    def metadata(self, file: IndexFile) -> str:
        self.read.append(file.filename)
        path = RECORDED / f"{file.filename}.METADATA"
        assert path.is_file(), f"the refresh read {file.filename}, which it should not need"
        return path.read_text(encoding="utf-8")


def files_of(package: str):
    return release_files(parse_simple_json(Recorded().project_page(package), package), package)


def real_data() -> dict:
    return tomllib.loads((MATRICES / "engines.toml").read_text(encoding="utf-8"))


def covered_only(data: dict, keep_also: dict | None = None) -> dict:
    """The real engines.toml cut down to the releases the recorded METADATA covers."""
    data = copy.deepcopy(data)
    for engine in data["engine"]:
        wanted = COVERED[engine["name"]] | (keep_also or {}).get(engine["name"], set())
        engine["release"] = [r for r in engine["release"] if r["version"] in wanted]
    return data


def write(tmp_path: Path, data: dict) -> Path:
    header, _ = split_header((MATRICES / "engines.toml").read_text(encoding="utf-8"))
    path = tmp_path / "engines.toml"
    path.write_text(dump_engines_toml(data, header=header), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- file names and METADATA


def test_release_files_keep_final_unyanked_releases_with_their_sdists():
    vllm, sglang = files_of("vllm"), files_of("sglang")
    assert sorted(map(str, vllm)) == ["0.18.0", "0.19.1", "0.23.0", "0.33.0"]
    assert "0.5.10rc0" not in {str(v) for v in sglang}  # pre-releases are never planned
    assert any(f.filename.endswith(".tar.gz") for f in next(iter(vllm.values())))


def test_wheel_facts_prefer_the_highest_build_tag_on_x86_64():
    facts, chosen = wheel_facts(next(fs for v, fs in files_of("vllm").items() if str(v) == "0.23.0"))
    assert chosen.filename == "vllm-0.23.0-2-cp38-abi3-manylinux_2_28_x86_64.whl"
    assert facts == {"date": "2026-06-13", "pythons": None, "platforms": ["linux-x86_64", "linux-aarch64"],
                     "wheel_glibc": "2.28"}


def test_wheel_facts_of_compiled_and_pure_python_sglang():
    sglang = {str(v): fs for v, fs in files_of("sglang").items()}
    facts, chosen = wheel_facts(sglang["0.5.23"])
    assert chosen.filename == "sglang-0.5.23-cp311-cp311-manylinux_2_34_x86_64.whl"
    assert (facts["pythons"], facts["wheel_glibc"]) == (["3.11", "3.12", "3.13"], "2.34")
    facts, chosen = wheel_facts(sglang["0.5.6.post1"])
    assert chosen.filename == "sglang-0.5.6.post1-py3-none-any.whl"
    assert facts["platforms"] is None and facts["pythons"] is None and facts["wheel_glibc"] is None


def test_wheel_facts_refuse_a_release_without_engine_wheels():
    only_sdist = [IndexFile(filename="vllm-0.33.0.tar.gz", url="u", upload_time="", yanked=False, metadata_sha256=None)]
    with pytest.raises(ProvisionError, match="no wheel for linux-x86_64"):
        wheel_facts(only_sdist)


def test_metadata_facts_from_recorded_metadata():
    vllm = metadata_facts((RECORDED / "vllm-0.19.1-cp38-abi3-manylinux_2_31_x86_64.whl.METADATA").read_text(), "v")
    assert vllm == {"torch": "2.10.0", "torchvision": "0.25.0", "torchaudio": "2.10.0",
                    "transformers": "!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0,>=4.56.0",
                    "requires_python": "<3.14,>=3.10", "kernel": None}
    sglang = metadata_facts((RECORDED / "sglang-0.5.23-cp311-cp311-manylinux_2_34_x86_64.whl.METADATA").read_text(), "s")
    assert (sglang["torch"], sglang["torchvision"], sglang["kernel"]) == ("2.14.1", None, "sglang-kernel==0.4.10")


def test_metadata_facts_skip_extras_and_other_platforms_and_keep_inexact_pins():
    text = ("Metadata-Version: 2.4\nName: x\nVersion: 1\nRequires-Python: >=3.10\n"
            'Requires-Dist: torch==9.9; extra == "test"\n'
            'Requires-Dist: transformers==1.0; platform_machine == "aarch64"\n'
            "Requires-Dist: torch>=2.10\nRequires-Dist: transformers>=5\n")
    facts = metadata_facts(text, "x")
    assert (facts["torch"], facts["transformers"]) == (">=2.10", ">=5")
    with pytest.raises(ProvisionError, match="pins no torch"):
        metadata_facts("Name: x\nRequires-Dist: transformers\n", "x")
    with pytest.raises(ProvisionError, match="unreadable Requires-Dist"):
        metadata_facts("Name: x\nRequires-Dist: torch >=>= 2\n", "x")


# ----------------------------------------------------------------------------- the refresh on recorded data


def test_recorded_registry_agrees_with_the_checked_in_file(tmp_path):
    path = write(tmp_path, covered_only(real_data()))
    source = Recorded()
    result = refresh_engines(path, source)
    assert not result.changed and result.diff == "" and result.messages == ()
    # one METADATA per listed release; older (0.18.0), excluded (0.5.9) and pre-releases are not read
    assert sorted(source.read) == sorted(f.name.removesuffix(".METADATA") for f in RECORDED.glob("*.METADATA")
                                         if "0.5.9" not in f.name)


def test_refresh_restores_every_pin_it_owns(tmp_path):
    good = covered_only(real_data())
    bad = copy.deepcopy(good)
    vllm = next(r for r in bad["engine"][0]["release"] if r["version"] == "0.33.0")
    vllm.update(torch="2.13.0", transformers=">=5", requires_python=">=3.9", platforms=["linux-x86_64"],
                wheel_glibc="2.24", glibc="2.24")
    del vllm["torchvision"]
    sglang = next(r for r in bad["engine"][1]["release"] if r["version"] == "0.5.23")
    sglang.update(kernel="sglang-kernel==0.4.9", torchvision="0.29.1")
    del sglang["pythons"]
    result = refresh_engines(write(tmp_path, bad), Recorded())
    assert result.new_text == dump_engines_toml(good, header=split_header(result.old_text)[0])
    assert '-torch = "2.13.0"' in result.diff and '+torch = "2.14.0"' in result.diff
    assert '+pythons = ["3.11", "3.12", "3.13"]' in result.diff


def test_refresh_keeps_what_a_person_wrote(tmp_path):
    data = covered_only(real_data())
    row = data["engine"][0]["release"][0]
    row.update(note="hand note", unverified=["image"], cuda="12.9", image="vllm/vllm-openai:custom")
    result = refresh_engines(write(tmp_path, data), Recorded())
    kept = tomllib.loads(result.new_text)["engine"][0]["release"][0]
    assert {k: kept[k] for k in ("note", "unverified", "cuda", "image")} == {
        "note": "hand note", "unverified": ["image"], "cuda": "12.9", "image": "vllm/vllm-openai:custom"}


def test_a_new_release_is_added_with_its_metadata_and_is_refused_until_a_person_completes_it(tmp_path):
    data = covered_only(real_data())
    data["engine"][0]["release"] = [r for r in data["engine"][0]["release"] if r["version"] != "0.33.0"]
    path = write(tmp_path, data)
    result = refresh_engines(path, Recorded())
    added = tomllib.loads(result.new_text)["engine"][0]["release"][0]
    assert added["version"] == "0.33.0" and added["date"] == "2026-11-02"
    assert {k: added.get(k) for k in REFRESHED} == {
        "torch": "2.14.0", "torchvision": "0.29.0", "torchaudio": "2.11.0", "transformers": "<5.21.0,>=5.16.1",
        "requires_python": "<3.15,>=3.11", "pythons": None, "platforms": ["linux-x86_64", "linux-aarch64"],
        "wheel_glibc": "2.28", "kernel": None}
    assert "still to be verified by hand" in added["note"]
    with pytest.raises(InvalidInput) as caught:  # what the CLI runs before writing
        parse_engines(Fields(tomllib.loads(result.new_text), str(path)), known_from_files(MATRICES))
    assert (caught.value.field, caught.value.problem) == ("engine[0].release[0].cuda", "required key is missing")


def test_a_new_release_without_transformers_5_is_not_added_but_said(tmp_path):
    data = covered_only(real_data())
    data["engine"][1]["excluded"] = [x for x in data["engine"][1]["excluded"] if x["version"] != "0.5.9"]
    result = refresh_engines(write(tmp_path, data), Recorded())
    assert not result.changed
    assert result.messages == ("sglang 0.5.9: transformers ==4.57.1 admits no transformers 5; not added "
                               "(list it under excluded to silence this)",)


def test_a_listed_release_missing_from_the_index_is_kept_and_said(tmp_path):
    data = covered_only(real_data(), keep_also={"vllm": {"0.20.0"}})
    result = refresh_engines(write(tmp_path, data), Recorded())
    assert not result.changed
    assert result.messages == ("vllm 0.20.0: listed but not on the index; kept as it is",)


def test_refresh_of_a_broken_file_names_it(tmp_path):
    path = tmp_path / "engines.toml"
    path.write_text("schema_version = \n")
    with pytest.raises(InvalidInput) as caught:
        refresh_engines(path, Recorded())
    assert caught.value.source == str(path) and "invalid TOML" in caught.value.problem
    with pytest.raises(InvalidInput, match="cannot read"):
        refresh_engines(tmp_path / "missing.toml", Recorded())


def test_merge_keeps_pure_python_platforms_and_raises_glibc_to_the_wheel():
    data = {"engine": [{"name": "sglang", "release": [{"version": "1.0", "platforms": ["linux-x86_64"],
                                                       "glibc": "2.17", "torchvision": "0.1"}]}]}
    fact = ReleaseFacts(version="1.0", date="d", torch="2.9.1", torchvision=None, torchaudio=None,
                        transformers="==5.3.0", requires_python=">=3.10", pythons=None, platforms=None,
                        wheel_glibc="2.34", kernel=None)
    row = merge_engines(data, {"sglang": [fact]})["engine"][0]["release"][0]
    assert row["platforms"] == ["linux-x86_64"] and row["glibc"] == row["wheel_glibc"] == "2.34"
    assert "torchvision" not in row
    assert data["engine"][0]["release"][0]["glibc"] == "2.17"  # the input is not modified


def test_the_real_file_loads_after_a_no_change_merge():
    data = real_data()
    merged = merge_engines(data, {})
    assert merged == data
    assert load_engines(MATRICES).get("vllm") is not None


# ----------------------------------------------------------------------------- HTTP, on fakes


class FakeResponse:
    def __init__(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.status_code, self.content, self.headers = status, body, headers or {}
        self.closed = False

    @property
    def text(self) -> str:
        return self.content.decode()

    def close(self) -> None:
        self.closed = True


class ZipServer:
    """Serves one in-memory file, honouring Range like files.pythonhosted.org (or ignoring it)."""

    def __init__(self, blob: bytes, *, ranges: bool = True) -> None:
        self.blob, self.ranges = blob, ranges
        self.requests: list[dict] = []
        self.responses: list[FakeResponse] = []

    def get(self, url, headers=None, timeout=None, stream=False):
        self.requests.append(dict(headers or {}))
        spec = (headers or {}).get("Range")
        if url.endswith(".metadata") or not self.ranges or spec is None:
            response = FakeResponse(404 if url.endswith(".metadata") else 200, b"" if url.endswith(".metadata") else self.blob)
        else:
            size = len(self.blob)
            first, _, last = spec.removeprefix("bytes=").partition("-")
            start, end = (max(0, size - int(last)), size - 1) if first == "" else (int(first), min(int(last), size - 1))
            response = FakeResponse(206, self.blob[start:end + 1], {"Content-Range": f"bytes {start}-{end}/{size}"})
        self.responses.append(response)
        return response


def wheel_blob(filler: int = 2_000_000) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pkg/big.bin", os.urandom(filler), compress_type=zipfile.ZIP_STORED)
        archive.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\nRequires-Dist: torch==2.10.0\n",
                         compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def index_file(**kw) -> IndexFile:
    return IndexFile(**({"filename": "pkg-1.0-py3-none-any.whl", "url": "https://files.example/pkg.whl",
                         "upload_time": "", "yanked": False, "metadata_sha256": None} | kw))


def test_metadata_by_range_requests_reads_a_small_part_of_the_wheel():
    blob = wheel_blob()
    server = ZipServer(blob)
    client = PypiClient(session=server)
    assert client.metadata(index_file()) == "Name: pkg\nRequires-Dist: torch==2.10.0\n"
    assert all("Range" in h for h in server.requests)
    assert sum(len(r.content) for r in server.responses) < len(blob) / 4


def test_a_server_that_ignores_range_is_refused_before_its_body_is_read():
    server = ZipServer(wheel_blob(), ranges=False)
    with pytest.raises(ProvisionError, match="did not honour a range request"):
        PypiClient(session=server).metadata(index_file())
    assert server.responses[-1].closed


def test_pep_658_metadata_is_used_and_its_hash_checked():
    body = b"Name: pkg\n"

    class Served(ZipServer):
        def get(self, url, headers=None, timeout=None, stream=False):
            self.requests.append({"url": url})
            return FakeResponse(200, body)

    served = Served(b"")
    good = index_file(metadata_sha256=hashlib.sha256(body).hexdigest())
    assert PypiClient(session=served).metadata(good) == "Name: pkg\n"
    assert served.requests == [{"url": "https://files.example/pkg.whl.metadata"}]
    with pytest.raises(ProvisionError, match="does not match the index's sha256"):
        PypiClient(session=served).metadata(index_file(metadata_sha256="0" * 64))


def test_range_reader_seeks_and_reuses_fetched_bytes():
    blob = bytes(range(256)) * 1024
    calls = []

    def fetch(start: int, end: int) -> bytes:
        calls.append((start, end))
        return blob[start:end + 1]

    reader = RangeReader(len(blob), fetch, tail=blob[-100:])
    reader.seek(-10, io.SEEK_END)
    assert reader.read(10) == blob[-10:] and calls == []
    reader.seek(5)
    assert reader.read(3) == blob[5:8] and reader.read(2) == blob[8:10] and len(calls) == 1
    assert reader.tell() == 10 and reader.fetched == 100 + calls[0][1] - calls[0][0] + 1
    with pytest.raises(ProvisionError, match="not a readable wheel"):
        metadata_from_zip(RangeReader(len(blob), fetch), "junk.whl")


class PageSession:
    def __init__(self, response=None, error=None) -> None:
        self.response, self.error, self.seen = response, error, []

    def get(self, url, headers=None, timeout=None, stream=False):
        self.seen.append((url, dict(headers or {}), timeout))
        if self.error:
            raise self.error
        return self.response


def test_project_page_asks_for_pep_691_json_and_names_failures():
    page = (RECORDED / "vllm.json").read_bytes()
    ok = PageSession(FakeResponse(200, page, {"Content-Type": SIMPLE_JSON}))
    client = PypiClient("https://pypi.example/simple/", session=ok, timeout=7)
    assert client.project_page("vllm") == page.decode()
    assert ok.seen == [("https://pypi.example/simple/vllm/", {"Accept": SIMPLE_JSON}, 7)]
    html = PageSession(FakeResponse(200, b"<html>", {"Content-Type": "text/html"}))
    with pytest.raises(ProvisionError, match="serves no PEP 691 JSON"):
        PypiClient(session=html).project_page("vllm")
    with pytest.raises(ProvisionError, match="answered HTTP 404"):
        PypiClient(session=PageSession(FakeResponse(404))).project_page("vllm")
    down = PageSession(error=requests.ConnectionError("refused"))
    with pytest.raises(ProvisionError, match=r"cannot reach https://pypi\.org/simple/vllm/: ConnectionError"):
        PypiClient(session=down).project_page("vllm")


def test_parse_simple_json_reads_pep_714_keys_and_refuses_other_pages():
    page = {"files": [{"filename": "a-1-py3-none-any.whl", "url": "u", "core-metadata": {"sha256": "ab"}},
                      {"filename": "a-1.tar.gz", "url": "v", "yanked": "broken", "dist-info-metadata": True}]}
    files = parse_simple_json(json.dumps(page), "p")
    assert [(f.metadata_sha256, f.yanked) for f in files] == [("ab", False), ("", True)]
    with pytest.raises(ProvisionError, match="is not a PEP 691 simple index page"):
        parse_simple_json("<html></html>", "the vllm index page")


def test_pip_network_follows_pip_settings():
    config = "global.index-url='https://mirror.example/simple/'\nglobal.cert='/etc/ca.pem'"
    assert pip_network({}, config) == ("https://mirror.example/simple", "/etc/ca.pem")
    assert pip_network({"PIP_INDEX_URL": "https://env.example/simple", "PIP_CERT": "/env.pem"}, config) == (
        "https://env.example/simple", "/env.pem")
    assert pip_network({}, "") == ("https://pypi.org/simple", True)


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def matrix_copy(tmp_path, monkeypatch):
    """A matrices/ copy whose engines.toml the recorded registry covers; the CLI's client reads the recording."""
    root = tmp_path / "matrices"
    shutil.copytree(MATRICES, root)
    monkeypatch.setattr("provision.data.pypi.PypiClient", lambda *a, **kw: Recorded())
    return root


def test_cli_shows_the_engines_diff_and_writes_only_on_write(matrix_copy, capsys):
    data = covered_only(real_data())
    good = write(matrix_copy, data).read_text()
    data["engine"][0]["release"][0]["torch"] = "2.13.0"
    stale = write(matrix_copy, data).read_text()
    assert main(["matrix", "refresh", "--only", "engines", "--matrix", str(matrix_copy)]) == 0
    captured = capsys.readouterr()
    assert '+torch = "2.14.0"' in captured.out and "dry run" in captured.err
    assert (matrix_copy / "engines.toml").read_text() == stale
    assert main(["matrix", "refresh", "--only", "engines", "--matrix", str(matrix_copy), "--write"]) == 0
    assert (matrix_copy / "engines.toml").read_text() == good
    assert main(["matrix", "refresh", "--only", "engines", "--matrix", str(matrix_copy)]) == 0
    assert "up to date" in capsys.readouterr().err


def test_cli_does_not_write_a_new_release_a_person_must_complete(matrix_copy, capsys):
    data = covered_only(real_data())
    data["engine"][0]["release"] = data["engine"][0]["release"][1:]  # 0.33.0 comes back as new
    before = write(matrix_copy, data).read_text()
    assert main(["matrix", "refresh", "--only", "engines", "--matrix", str(matrix_copy), "--write"]) == 1
    err = capsys.readouterr().err
    assert "not written" in err and "engine[0].release[0].cuda: required key is missing" in err
    assert (matrix_copy / "engines.toml").read_text() == before


def test_cli_write_into_a_read_only_matrix_folder_is_one_line(matrix_copy, capsys, read_only):
    data = covered_only(real_data())
    write(matrix_copy, data)
    data["engine"][0]["release"][0]["torch"] = "2.13.0"
    stale = write(matrix_copy, data).read_text()
    read_only(matrix_copy)
    assert main(["matrix", "refresh", "--only", "engines", "--matrix", str(matrix_copy), "--write"]) == 2
    lines = capsys.readouterr().err.splitlines()
    err = lines[-1]
    assert not any("Traceback" in line for line in lines)
    path = matrix_copy / "engines.toml"
    assert err == f"error: {path}: (file): cannot write {path}: Permission denied"
    assert (matrix_copy / "engines.toml").read_text() == stale
