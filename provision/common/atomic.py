"""The one way the toolkit writes a file: whole or not at all, and still there after a crash.

A reader (another process, the next render, a person) never sees half a file: the bytes go
to a temporary file in the target's own folder (same filesystem, so the rename is atomic),
are flushed and fsynced, then ``os.replace`` puts them in place and the folder itself is
fsynced so the rename survives a power cut. A failure at any step leaves the old file as it
was and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "replace_durably", "write_atomic"]

#: Rendered and written files are readable by everyone: they are configuration, not secrets.
DEFAULT_MODE = 0o644


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on a folder
            os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(source: Path, target: Path) -> None:
    """``os.replace(source, target)``, then fsync the target's folder."""
    source.replace(target)
    fsync_dir(target.parent)


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, mode: int = DEFAULT_MODE) -> None:
    """Write ``data`` (text is UTF-8 with ``\\n`` line ends as given) to ``path`` atomically.

    The parent folder is created when missing; ``mode`` is set exactly (not through the umask).

    :raises OSError: the write failed (``filename`` names ``path`` where the OS named nothing);
        the previous file, if any, is untouched.
    """
    path = Path(path)
    try:
        _write_atomic(path, data.encode("utf-8") if isinstance(data, str) else data, mode)
    except OSError as exc:
        # A full disk surfaces at write or fsync, which name no file; a folder that cannot be
        # written names the temporary file. Either way, the file that could not be written is ``path``.
        named = str(exc.filename) if exc.filename is not None else ""
        if exc.errno is not None and (not named or Path(named).name.startswith(f".{path.name}.")):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def _write_atomic(path: Path, payload: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(mode)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
