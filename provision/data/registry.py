"""Image digests from container registries, through the OCI distribution API.

``provision matrix refresh --only images`` pins each base image by the digest its tag has now. A
registry tells it without a download: ``HEAD /v2/<name>/manifests/<tag>`` with an ``Accept`` of the
index media types (OCI image index, Docker manifest list) answers the multi-platform index's digest
in ``Docker-Content-Digest``, the digest ``docker pull name:tag@<digest>`` checks on every platform.
Docker Hub, ghcr.io and nvcr.io answer an anonymous request with ``401`` and a ``WWW-Authenticate:
Bearer realm=...,service=...,scope=...`` challenge; a GET of the realm with that service and scope
gives an anonymous pull token for the retry (the token flow of the distribution spec).

``RegistryClient`` is the only I/O here. ``base_url`` sends every request to one server instead of
the image's registry: it exists for tests (a local server in a thread), and only as a parameter.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import urlsplit

from provision.errors import ProvisionError
from provision.vocab import IMAGE_DIGEST_RE

__all__ = [
    "DOCKER_HUB",
    "MANIFEST_TYPES",
    "RegistryClient",
    "RegistryError",
    "TagNotFound",
    "parse_challenge",
    "registry_of",
]

#: Index types first: a multi-platform image answers its index, whose digest holds on every platform.
#: The single-manifest types stay acceptable, so a single-platform image still answers.
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
#: Docker Hub's registry API host (``docker.io`` names the registry, not the API).
DOCKER_HUB = "registry-1.docker.io"
_TIMEOUT_S = 15.0
_PARAM_RE = re.compile(r'([A-Za-z_]+)="([^"]*)"')
_ERRNO_RE = re.compile(r"\[Errno [^\]]+\] [^'\")(]+")


class RegistryError(ProvisionError):
    """The registry could not say: unreachable, refused, or an answer that is not a digest."""


class TagNotFound(RegistryError):
    """The registry answered that it has no such tag for an anonymous pull (HTTP 404, or 401 with a token)."""


def registry_of(image: str) -> tuple[str, str]:
    """(registry API host, repository) of an image name, as ``docker pull`` reads it.

    A first path part with a dot or a port, or ``localhost``, is a registry; anything else is on
    Docker Hub, where a one-part name is an official image under ``library/``.
    """
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, repository = first, rest
    else:
        host, repository = "docker.io", image
    if host in ("docker.io", "index.docker.io"):
        host = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    return host, repository


def parse_challenge(header: str) -> dict[str, str] | None:
    """The parameters of a ``Bearer`` challenge (realm, service, scope); None for any other scheme."""
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return dict(_PARAM_RE.findall(params))


class RegistryClient:
    """Asks registries for tag digests, with one anonymous token per registry scope, reused.

    ``base_url`` (tests only): send every request to this server instead of the image's registry.
    """

    def __init__(self, *, base_url: str | None = None, timeout: float = _TIMEOUT_S, session: Any = None) -> None:
        import requests

        self._base_url = base_url.rstrip("/") if base_url else None
        self._timeout = timeout
        self._session = session if session is not None else requests.Session()
        self._tokens: dict[tuple[str, str, str], str] = {}  # (realm, service, scope) -> token
        self._auth: dict[tuple[str, str], str] = {}  # (host, repository) -> the Authorization that worked
        self._down: dict[str, str] = {}  # host -> why it could not be reached: asked once, not once per image

    def digest(self, image: str, tag: str) -> str:
        """The digest ``image:tag`` has now (its index for a multi-platform image).

        :raises TagNotFound: the registry has no such tag.
        :raises RegistryError: the registry cannot be reached or gives no usable answer.
        """
        host, repository = registry_of(image)
        base = self._base_url or f"https://{host}"
        url = f"{base}/v2/{repository}/manifests/{tag}"
        response = self._ask("HEAD", url, host, repository)
        digest = str(response.headers.get("Docker-Content-Digest") or "")
        if not digest:  # a registry may leave the header off a HEAD: the body's sha256 is the digest
            response = self._ask("GET", url, host, repository)
            digest = str(response.headers.get("Docker-Content-Digest")
                         or f"sha256:{hashlib.sha256(response.content).hexdigest()}")
        if not IMAGE_DIGEST_RE.fullmatch(digest):
            raise RegistryError(f"{host} answered {digest[:80]!r} for {image}:{tag}, not a sha256 digest")
        return digest

    def _ask(self, method: str, url: str, host: str, repository: str) -> Any:
        """One manifest request; a repository's token, once known, goes along from the start."""
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        known = self._auth.get((host, repository))
        response = self._send(method, url, {**headers, "Authorization": known} if known else headers, host)
        if response.status_code == 401:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            if challenge is None or "realm" not in challenge:
                raise RegistryError(f"{host} asks for credentials (HTTP 401) without a bearer-token challenge")
            token = self._token(challenge, host, repository, fresh=known is not None)  # a refused one expired
            self._auth[(host, repository)] = f"Bearer {token}"
            response = self._send(method, url, {**headers, "Authorization": self._auth[(host, repository)]}, host)
            if response.status_code == 401:  # Docker Hub's answer for a repository that is missing or private
                raise TagNotFound(f"{host} refuses an anonymous pull of {repository} (HTTP 401 with a token)")
        if response.status_code == 404:
            raise TagNotFound(f"{host} has no such tag (HTTP 404)")
        if response.status_code != 200:
            raise RegistryError(f"{host} answered HTTP {response.status_code}")
        return response

    def _token(self, challenge: dict[str, str], host: str, repository: str, *, fresh: bool = False) -> str:
        realm = challenge["realm"]
        if urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(f"{host}'s token realm {realm[:80]!r} is not an http(s) URL")
        key = (realm, challenge.get("service", ""), challenge.get("scope", f"repository:{repository}:pull"))
        if fresh or key not in self._tokens:
            params = {"scope": key[2], **({"service": key[1]} if key[1] else {})}
            response = self._send("GET", realm, {}, host, params=params)
            if response.status_code != 200:
                raise RegistryError(f"{host}'s token service answered HTTP {response.status_code}")
            try:
                body = response.json()
            except ValueError:
                body = None
            token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
            if not isinstance(token, str) or not token:
                raise RegistryError(f"{host}'s token service gave no token")
            self._tokens[key] = token
        return self._tokens[key]

    def _send(self, method: str, url: str, headers: dict[str, str], host: str,
              params: dict[str, str] | None = None) -> Any:
        import requests

        if host in self._down:
            raise RegistryError(self._down[host])
        try:
            return self._session.request(method, url, headers=headers, params=params, timeout=self._timeout,
                                         allow_redirects=True)
        except requests.RequestException as exc:
            detail = _ERRNO_RE.search(str(exc))
            why = f"cannot reach {host}: {exc.__class__.__name__}" + (f" ({detail.group(0).strip()})" if detail else "")
            if isinstance(exc, requests.ConnectionError | requests.Timeout):
                self._down[host] = why
            raise RegistryError(why) from exc
