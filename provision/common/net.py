"""The one network probe: does a package index answer at all?

``--wheelhouse auto`` asks it before planning (the PyTorch index unreachable: use pip's local
wheel folders) and the resolver asks it before hashing (unreachable: leave torch unhashed).
A command asks through one ``IndexProbe``, which remembers each server's answer, so a render
waits for the network once, not once per question.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

__all__ = ["PROBE_TIMEOUT_S", "IndexProbe", "probe_index"]

#: Short: an index that needs longer than this to answer would not serve wheels usefully either.
PROBE_TIMEOUT_S = 5.0


def probe_index(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` when ``url`` answers (any status below 500), else why not (one short line)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/", timeout=timeout):  # noqa: S310 (https only, validated)
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 else f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))[:200]


class IndexProbe:
    """``probe_index`` (or ``probe``) asked at most once per server (scheme, host, port) for one command."""

    def __init__(self, probe: Callable[[str], str | None] | None = None) -> None:
        self._probe = probe
        self._answers: dict[str, str | None] = {}

    def __call__(self, url: str) -> str | None:
        """Why ``url``'s server does not answer, or ``None`` when it does."""
        parts = urlsplit(url)
        server = f"{parts.scheme}://{parts.netloc}"
        if server not in self._answers:
            probe = self._probe or probe_index  # looked up now, so a test can replace it
            self._answers[server] = probe(url)
        return self._answers[server]

    def reachable(self, url: str) -> bool:
        """Whether ``url``'s server answers."""
        return self(url) is None
