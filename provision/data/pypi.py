"""Package metadata from a PEP 691 simple index, without downloading wheels.

A wheel is a zip whose central directory sits at its end, so its ``*.dist-info/METADATA``
can be read with a few HTTP range requests: the tail (end-of-central-directory record and the
directory), then the member itself. Where the index serves PEP 658 ``<wheel>.metadata`` files,
that one small file is fetched instead. A server that ignores ``Range`` is refused rather than
read: a vLLM wheel is 300 MB.

``IndexFile`` parsing is pure; ``PypiClient`` is the I/O, built on a ``requests`` session whose
proxy settings come from the environment and whose index URL and CA bundle follow pip's own
configuration (``PIP_INDEX_URL`` / ``PIP_CERT`` or ``pip config``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from provision.errors import ProvisionError
from provision.vocab import PYPI_INDEX

__all__ = [
    "SIMPLE_JSON",
    "IndexFile",
    "PypiClient",
    "RangeReader",
    "metadata_from_zip",
    "parse_simple_json",
    "pip_network",
]

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_TAIL = 256 * 1024  # one request covers the directory of most wheels (vLLM's is about 200 kB)
_CHUNK = 64 * 1024
_MAX_METADATA = 4 * 1024 * 1024
_METADATA_RE = re.compile(r"^[^/]+\.dist-info/METADATA$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexFile:
    """One file of a project as the simple index lists it."""

    filename: str
    url: str
    upload_time: str  # ISO date-time, "" when the index gives none
    yanked: bool
    metadata_sha256: str | None  # PEP 658/714: a .metadata file is served (hash may be "")


def parse_simple_json(text: str, source: str) -> list[IndexFile]:
    """The ``files`` of a PEP 691 project page.

    :raises ProvisionError: the page is not that JSON (an HTML-only index, an error page).
    """
    try:
        data = json.loads(text)
        files = data["files"]
        out = []
        for item in files:
            core = item.get("core-metadata", item.get("dist-info-metadata", False))
            sha = (core.get("sha256") or "") if isinstance(core, Mapping) else ("" if core else None)
            out.append(IndexFile(
                filename=str(item["filename"]),
                url=str(item["url"]),
                upload_time=str(item.get("upload-time") or ""),
                yanked=bool(item.get("yanked", False)),
                metadata_sha256=sha,
            ))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProvisionError(f"{source} is not a PEP 691 simple index page ({exc.__class__.__name__}: {exc})") from None
    return out


class RangeReader(io.RawIOBase):
    """A seekable read-only file over ``fetch(start, end) -> bytes`` (inclusive end), fetched in chunks.

    Only the parts ``zipfile`` asks for are fetched; ``fetched`` counts the bytes that were.
    """

    def __init__(self, size: int, fetch: Callable[[int, int], bytes], tail: bytes = b"") -> None:
        super().__init__()
        self.size = size
        self._fetch = fetch
        self._pos = 0
        self._segments: list[tuple[int, bytes]] = [(size - len(tail), tail)] if tail else []
        self.fetched = len(tail)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self.size - self._pos)
        if n <= 0:
            return 0
        data = self._span(self._pos, n)
        view[:n] = data
        self._pos += n
        return n

    def _span(self, start: int, n: int) -> bytes:
        for seg_start, seg in self._segments:
            if seg_start <= start and start + n <= seg_start + len(seg):
                return seg[start - seg_start:start - seg_start + n]
        end = min(self.size, start + max(n, _CHUNK)) - 1
        data = self._fetch(start, end)
        if len(data) != end - start + 1:
            raise ProvisionError(f"asked for bytes {start}-{end}, got {len(data)} bytes")
        self._segments.append((start, data))
        self.fetched += len(data)
        return data[:n]


def metadata_from_zip(reader: RangeReader, source: str) -> str:
    """The text of the wheel's ``*.dist-info/METADATA``; ProvisionError when there is none."""
    try:
        with zipfile.ZipFile(reader) as archive:
            names = [n for n in archive.namelist() if _METADATA_RE.fullmatch(n)]
            if len(names) != 1:
                raise ProvisionError(f"{source}: expected one *.dist-info/METADATA, found {len(names)}")
            info = archive.getinfo(names[0])
            if info.file_size > _MAX_METADATA:
                raise ProvisionError(f"{source}: METADATA is {info.file_size} bytes; refusing")
            return archive.read(info).decode("utf-8")
    except (zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ProvisionError(f"{source}: not a readable wheel ({exc})") from None


def pip_network(environ: Mapping[str, str], pip_config: str) -> tuple[str, str | bool]:
    """The index URL and TLS verification pip itself would use (``PIP_*`` first, then ``pip config``)."""
    settings = {}
    for line in pip_config.splitlines():
        key, _, value = line.partition("=")
        settings[key.strip().rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    index = environ.get("PIP_INDEX_URL") or settings.get("index-url") or PYPI_INDEX
    cert = environ.get("PIP_CERT") or settings.get("cert")
    return index.rstrip("/"), cert or True


class PypiClient:
    """Simple-index pages and wheel METADATA over HTTP; every failure is a ProvisionError naming the URL."""

    def __init__(self, index_url: str = PYPI_INDEX, *, verify: str | bool = True, timeout: float = 30.0,
                 session: Any = None) -> None:
        import requests

        self.index_url = index_url.rstrip("/")
        self.timeout = timeout
        self.session = session if session is not None else requests.Session()
        if session is None:
            self.session.verify = verify

    def _get(self, url: str, headers: Mapping[str, str]) -> Any:
        import requests

        try:
            response = self.session.get(url, headers=dict(headers), timeout=self.timeout, stream=True)
        except requests.RequestException as exc:
            raise ProvisionError(f"cannot reach {url}: {exc.__class__.__name__}: {exc}") from None
        return response

    def project_page(self, package: str) -> str:
        """The PEP 691 JSON page of ``package``."""
        url = f"{self.index_url}/{package}/"
        response = self._get(url, {"Accept": SIMPLE_JSON})
        if response.status_code != 200:
            raise ProvisionError(f"{url} answered HTTP {response.status_code}")
        if SIMPLE_JSON not in response.headers.get("Content-Type", ""):
            raise ProvisionError(f"{url} serves no PEP 691 JSON (Content-Type {response.headers.get('Content-Type')!r})")
        text: str = response.text
        return text

    def metadata(self, file: IndexFile) -> str:
        """The METADATA of a wheel: its PEP 658 file where served, else read out of the zip by ranges."""
        if file.metadata_sha256 is not None:
            response = self._get(f"{file.url}.metadata", {})
            if response.status_code == 200:
                body: bytes = response.content
                if file.metadata_sha256 and hashlib.sha256(body).hexdigest() != file.metadata_sha256:
                    raise ProvisionError(f"{file.url}.metadata does not match the index's sha256")
                return body.decode("utf-8")
        return metadata_from_zip(self._range_reader(file.url), file.filename)

    def _range_reader(self, url: str) -> RangeReader:
        tail, size = self._range(url, f"bytes=-{_TAIL}")
        return RangeReader(size, lambda start, end: self._range(url, f"bytes={start}-{end}")[0], tail)

    def _range(self, url: str, spec: str) -> tuple[bytes, int]:
        response = self._get(url, {"Range": spec, "Accept-Encoding": "identity"})
        if response.status_code != 206:
            response.close()  # never read a whole wheel by accident
            raise ProvisionError(f"{url} did not honour a range request (HTTP {response.status_code})")
        match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", ""))
        if match is None:
            response.close()
            raise ProvisionError(f"{url}: no usable Content-Range in the answer to {spec}")
        body: bytes = response.content
        return body, int(match.group(3))
