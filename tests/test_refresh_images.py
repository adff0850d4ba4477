"""``provision matrix refresh --only images``: digests from a real registry server, recorded, rendered.

The registry is a real HTTP server on 127.0.0.1 (``http.server`` in a thread) that speaks the part of
the OCI distribution API the refresh uses, the way Docker Hub, ghcr.io and nvcr.io do: an anonymous
request gets 401 and a ``Bearer`` challenge, the token service gives a token for the scope, the retried
HEAD answers the manifest list's digest in ``Docker-Content-Digest``. The client is pointed at it only
through its ``base_url`` parameter.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from provision.cli import main
from provision.common.net import free_port
from provision.data.matrix import load_matrix
from provision.data.refresh_engines import dump_engines_toml, split_header
from provision.data.refresh_images import (
    apply_image_refresh,
    dump_images_toml,
    image_slots,
    merge_digests,
    plan_image_refresh,
)
from provision.data.registry import MANIFEST_TYPES, RegistryClient, RegistryError, TagNotFound, parse_challenge, registry_of
from provision.errors import InvalidInput, ProvisionError
from provision.plan.document import Plan

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
MATRICES = ROOT / "matrices"
HOSTS = Path(__file__).parent / "fixtures" / "hosts"
A10G = HOSTS / "linux-x86_64-a10g-driver535.json"
INDEX = "application/vnd.oci.image.index.v1+json"


def manifest(repository: str, tag: str) -> bytes:
    """A stand-in manifest list: its sha256 is the digest the registry answers, as a real one's is."""
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [], "annotations": {
        "org.opencontainers.image.ref.name": f"{repository}:{tag}"}}, sort_keys=True).encode()


def digest_of(repository: str, tag: str) -> str:
    return "sha256:" + hashlib.sha256(manifest(repository, tag)).hexdigest()


@dataclass
class Registry:
    """What the server knows and what it was asked."""

    url: str
    missing: set[str] = field(default_factory=set)  # "repository:tag" answered 404
    headless: set[str] = field(default_factory=set)  # repositories whose HEAD leaves Docker-Content-Digest off
    private: set[str] = field(default_factory=set)  # repositories refused even with a token (Docker Hub's 401)
    requests: list[dict[str, str]] = field(default_factory=list)

    def token_for(self, scope: str) -> str:
        return "tok-" + hashlib.sha256(scope.encode()).hexdigest()[:16]


def _handler(registry: Registry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _record(self) -> None:
            registry.requests.append({"method": self.command, "path": self.path,
                                      "accept": self.headers.get("Accept", ""),
                                      "auth": self.headers.get("Authorization", "")})

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._record()
            parts = urlsplit(self.path)
            if parts.path == "/token":
                query = parse_qs(parts.query)
                if query.get("service") != ["test-registry"] or len(query.get("scope", [])) != 1:
                    return self._send(400, {})
                body = json.dumps({"token": registry.token_for(query["scope"][0])}).encode()
                return self._send(200, {"Content-Type": "application/json"}, body)
            return self._manifest()

        def do_HEAD(self) -> None:
            self._record()
            self._manifest()

        def _manifest(self) -> None:
            path = urlsplit(self.path).path
            if not path.startswith("/v2/") or "/manifests/" not in path:
                return self._send(404, {})
            repository, tag = path[len("/v2/"):].split("/manifests/")
            scope = f"repository:{repository}:pull"
            if repository in registry.private or self.headers.get("Authorization") != f"Bearer {registry.token_for(scope)}":
                challenge = f'Bearer realm="{registry.url}/token",service="test-registry",scope="{scope}"'
                return self._send(401, {"WWW-Authenticate": challenge})
            if INDEX not in self.headers.get("Accept", "") or f"{repository}:{tag}" in registry.missing:
                return self._send(404, {})
            body = manifest(repository, tag)
            headers = {"Content-Type": INDEX}
            if repository not in registry.headless:  # a headless one leaves the client to hash the body
                headers["Docker-Content-Digest"] = digest_of(repository, tag)
            return self._send(200, headers, body)

    return Handler


@pytest.fixture
def registry() -> Iterator[Registry]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Registry(url="")))
    reg = Registry(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(reg)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield reg
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def matrix_copy(tmp_path: Path) -> Path:
    root = tmp_path / "matrices"
    shutil.copytree(MATRICES, root)
    return root


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("image", "where"), [
    ("python", ("registry-1.docker.io", "library/python")),
    ("nvidia/cuda", ("registry-1.docker.io", "nvidia/cuda")),
    ("vllm/vllm-openai", ("registry-1.docker.io", "vllm/vllm-openai")),
    ("docker.io/library/python", ("registry-1.docker.io", "library/python")),
    ("ghcr.io/astral-sh/uv", ("ghcr.io", "astral-sh/uv")),
    ("nvcr.io/nvidia/pytorch", ("nvcr.io", "nvidia/pytorch")),
    ("localhost:5000/team/app", ("localhost:5000", "team/app")),
])
def test_registry_of_reads_names_as_docker_pull_does(image: str, where: tuple[str, str]) -> None:
    assert registry_of(image) == where


def test_parse_challenge() -> None:
    header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull"'
    assert parse_challenge(header) == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                                       "scope": "repository:library/python:pull"}
    assert parse_challenge('Basic realm="x"') is None


def test_the_checked_in_files_are_what_the_emitters_write() -> None:
    """A refresh that finds nothing new changes no byte (so its diff is only ever the digests)."""
    images_text = (MATRICES / "images.toml").read_text()
    engines_text = (MATRICES / "engines.toml").read_text()
    images, engines = merge_digests(tomllib.loads(images_text), tomllib.loads(engines_text), {})
    assert dump_images_toml(images, header=split_header(images_text)[0]) == images_text
    assert dump_engines_toml(engines, header=split_header(engines_text)[0]) == engines_text


def test_every_image_a_render_builds_on_has_a_slot() -> None:
    matrix = load_matrix()
    slots = image_slots(tomllib.loads((MATRICES / "images.toml").read_text()),
                        tomllib.loads((MATRICES / "engines.toml").read_text()))
    refs = {s.ref for s in slots}
    assert matrix.images.uv.ref in refs
    assert {row.image.ref for row in (*matrix.images.cuda, *matrix.images.cpu)} <= refs
    assert {r.image for e in matrix.engines.engines for r in e.releases} <= refs


# --------------------------------------------------------------------------- the client against the server


def test_the_client_answers_the_challenge_and_reads_the_index_digest(registry: Registry) -> None:
    client = RegistryClient(base_url=registry.url)
    assert client.digest("python", "3.11-slim-bookworm") == digest_of("library/python", "3.11-slim-bookworm")
    assert client.digest("python", "3.12-slim-bookworm") == digest_of("library/python", "3.12-slim-bookworm")
    first, token, retry, second = registry.requests
    assert (first["method"], first["path"], first["auth"]) == ("HEAD", "/v2/library/python/manifests/3.11-slim-bookworm", "")
    assert token["method"] == "GET" and token["path"].startswith("/token?")
    assert parse_qs(urlsplit(token["path"]).query) == {"scope": ["repository:library/python:pull"],
                                                       "service": ["test-registry"]}
    assert retry["method"] == "HEAD" and retry["auth"].startswith("Bearer tok-")
    assert [t.strip() for t in retry["accept"].split(",")] == list(MANIFEST_TYPES)
    assert second["auth"] == retry["auth"]  # one token per scope, reused: no second challenge


def test_a_head_without_the_digest_header_is_read_by_get_and_hashed(registry: Registry) -> None:
    registry.headless.add("astral-sh/uv")
    digest = RegistryClient(base_url=registry.url).digest("ghcr.io/astral-sh/uv", "0.13.9")
    assert digest == digest_of("astral-sh/uv", "0.13.9")
    assert [r["method"] for r in registry.requests if "/manifests/" in r["path"]] == ["HEAD", "HEAD", "GET"]


def test_an_unknown_tag_and_an_unreachable_registry_are_told_apart(registry: Registry) -> None:
    registry.missing.add("vllm/vllm-openai:v9.9.9")
    with pytest.raises(TagNotFound, match="no such tag"):
        RegistryClient(base_url=registry.url).digest("vllm/vllm-openai", "v9.9.9")
    registry.private.add("someone/private")
    with pytest.raises(TagNotFound, match=r"refuses an anonymous pull of someone/private \(HTTP 401 with a token\)"):
        RegistryClient(base_url=registry.url).digest("someone/private", "v1")
    down = RegistryClient(base_url=closed_port_url(), timeout=5)
    with pytest.raises(RegistryError, match=r"^cannot reach registry-1\.docker\.io: ConnectionError") as caught:
        down.digest("python", "3.11-slim-bookworm")
    assert not isinstance(caught.value, TagNotFound)


# --------------------------------------------------------------------------- refresh, write, render


def _render(tmp_path: Path, root: Path, name: str, *argv: str) -> dict[str, str]:
    out = tmp_path / name
    assert main(["render", "--host", str(A10G), "--matrix", str(root), "--out", str(out), "--no-resolve", *argv]) == 0
    return {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file() and p.suffix != ".whl"}


def test_refresh_records_every_digest_the_registry_has_and_renders_pin_them(
        registry: Registry, matrix_copy: Path, tmp_path: Path) -> None:
    missing = "lmsysorg/sglang:v0.5.10"
    registry.missing.add(missing)
    refresh = plan_image_refresh(matrix_copy, source=RegistryClient(base_url=registry.url))
    assert refresh.unreachable == ()
    assert refresh.messages == (f"{missing}: registry-1.docker.io has no such tag (HTTP 404); no digest recorded "
                                f"(engines.toml: engine[1].release[{_release_index(matrix_copy, missing)}].image_digest)",)
    assert '+digest = "' + digest_of("library/python", "3.11-slim-bookworm") + '"' in refresh.diff
    before = {p.name: p.read_bytes() for p in matrix_copy.iterdir()}
    assert sorted(p.name for p in apply_image_refresh(refresh)) == ["engines.toml", "images.toml"]
    changed = [n for n, b in before.items() if (matrix_copy / n).read_bytes() != b]
    assert sorted(changed) == ["engines.toml", "images.toml"]

    matrix = load_matrix(matrix_copy)
    assert matrix.images.uv.digest == digest_of("astral-sh/uv", matrix.images.uv.tag)
    assert all(row.image.digest == digest_of(*_split(row.image.image, row.image.tag)) for row in matrix.images.cuda)
    releases = {str(r.image): r for e in matrix.engines.engines for r in e.releases}
    assert releases[missing].image_digest is None
    vllm = releases["vllm/vllm-openai:v0.19.1"]
    assert vllm.image_digest == digest_of("vllm/vllm-openai", "v0.19.1")
    assert "image" not in vllm.unverified  # its registry has the tag
    bundled = {str(r.image): r for e in load_matrix().engines.engines for r in e.releases}
    assert releases[missing].unverified == bundled[missing].unverified  # left as it was

    # the same answers again: the files are byte-stable
    again = plan_image_refresh(matrix_copy, source=RegistryClient(base_url=registry.url))
    assert not again.changed and apply_image_refresh(again) == []

    # renders pin by digest and say so (the Dockerfile's uv is images.toml's when no uv resolved the lock)
    own = _render(tmp_path, matrix_copy, "transformers", "--engine", "transformers")["Dockerfile"]
    cuda = next(r.image for r in matrix.images.cuda if f"FROM {r.image.image}:{r.image.tag}@" in own)
    assert cuda.digest is not None
    assert f"FROM {cuda.image}:{cuda.tag}@{cuda.digest} AS builder\n" in own
    assert f"#   {cuda.ref}: pinned by digest\n" in own
    assert f"COPY --from={matrix.images.uv.ref} /uv /usr/local/bin/uv" in own
    assert f"#   {matrix.images.uv.ref}: pinned by digest\n" in own
    files = _render(tmp_path, matrix_copy, "vllm", "--engine", "vllm")
    ref = f"vllm/vllm-openai:v0.19.1@{vllm.image_digest}"
    assert f"FROM {ref} AS engine" in files["Dockerfile"]
    assert f"#   {ref}: pinned by digest\n" in files["Dockerfile"]
    assert "pinned by that release's tag and digest," in files["Dockerfile"]
    assert f"FROM {ref}, the engine's official image." in files["compose.yaml"]
    plan = json.loads(files["provision.lock.json"])["plan"]
    assert plan["serve"]["image"] == ref
    assert Plan.from_dict(plan).serve.image == ref  # the plan document reads its own pin back
    plan["serve"]["image"] = ref[:-1]  # 63 hex digits
    with pytest.raises(InvalidInput) as caught:
        Plan.from_dict(plan)
    assert caught.value.field == "serve.image"


def _split(image: str, tag: str) -> tuple[str, str]:
    return registry_of(image)[1], tag


def _release_index(root: Path, image: str) -> int:
    engines = tomllib.loads((root / "engines.toml").read_text())
    return next(i for i, r in enumerate(engines["engine"][1]["release"]) if r["image"] == image)


def test_the_bundled_renders_pin_by_tag_and_say_how_to_record_digests(tmp_path: Path) -> None:
    own = _render(tmp_path, MATRICES, "transformers", "--engine", "transformers")["Dockerfile"]
    assert "@sha256:" not in own
    assert ("pinned by tag only; `provision matrix refresh --only images` on a connected machine records digests"
            in own)
    engine = _render(tmp_path, MATRICES, "vllm", "--engine", "vllm")["Dockerfile"]
    assert "FROM vllm/vllm-openai:v0.19.1 AS engine" in engine
    assert "#   vllm/vllm-openai:v0.19.1: pinned by tag only;" in engine


def test_a_refresh_that_does_not_load_is_not_written(registry: Registry, matrix_copy: Path) -> None:
    refresh = plan_image_refresh(matrix_copy, source=RegistryClient(base_url=registry.url))
    (matrix_copy / "cuda.toml").write_text("schema_version = 1\n")  # the folder no longer loads
    before = (matrix_copy / "images.toml").read_bytes()
    with pytest.raises(ProvisionError, match=r"^not written: the refreshed matrix does not load"):
        apply_image_refresh(refresh)
    assert (matrix_copy / "images.toml").read_bytes() == before


def test_a_file_that_is_not_toml_names_it(matrix_copy: Path) -> None:
    (matrix_copy / "images.toml").write_text("[uv\n")
    with pytest.raises(InvalidInput) as caught:
        plan_image_refresh(matrix_copy, source=RegistryClient(base_url=closed_port_url()))
    assert (caught.value.source, caught.value.field) == (str(matrix_copy / "images.toml"), "(document)")


# --------------------------------------------------------------------------- the command


@pytest.fixture
def pointed_at(monkeypatch: pytest.MonkeyPatch):
    """Point the command's registry client at a URL (the parameter the tests use; users have none)."""
    def point(url: str) -> None:
        monkeypatch.setattr("provision.data.registry.RegistryClient", functools.partial(RegistryClient, base_url=url))
    return point


def test_cli_shows_the_diff_and_writes_only_on_write(registry: Registry, matrix_copy: Path, pointed_at,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    pointed_at(registry.url)
    before = (matrix_copy / "images.toml").read_bytes()
    assert main(["matrix", "refresh", "--only", "images", "--matrix", str(matrix_copy)]) == 0
    out, err = capsys.readouterr()
    assert "+digest = \"sha256:" in out and "+image_digest = \"sha256:" in out
    assert err.endswith("dry run: pass --write to apply this change\n")
    assert (matrix_copy / "images.toml").read_bytes() == before
    assert main(["matrix", "refresh", "--only", "images", "--matrix", str(matrix_copy), "--write"]) == 0
    assert capsys.readouterr().err.splitlines()[-2:] == [f"wrote {matrix_copy / 'images.toml'}",
                                                         f"wrote {matrix_copy / 'engines.toml'}"]
    assert main(["matrix", "refresh", "--only", "images", "--matrix", str(matrix_copy)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "image digests up to date with the registries" in err


def test_cli_with_the_registries_unreachable_says_so_per_image_and_writes_nothing(
        matrix_copy: Path, pointed_at, capsys: pytest.CaptureFixture[str]) -> None:
    pointed_at(closed_port_url())
    before = {p.name: p.read_bytes() for p in matrix_copy.iterdir()}
    assert main(["matrix", "refresh", "--only", "images", "--matrix", str(matrix_copy), "--write"]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    refs = {s.ref for s in image_slots(tomllib.loads(before["images.toml"].decode()),
                                       tomllib.loads(before["engines.toml"].decode()))}
    assert out == ""
    assert len(lines) == len(refs) + 1
    assert {line.split(": cannot reach ")[0] for line in lines[:-1]} == refs
    assert lines[-1] == (f"error: no digest written: {len(refs)} of {len(refs)} images' registries could not be "
                         "reached (above); run it where they can be (HTTPS_PROXY is honoured)")
    assert {p.name: p.read_bytes() for p in matrix_copy.iterdir()} == before
