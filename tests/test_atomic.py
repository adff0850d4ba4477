"""provision.common.atomic: a file is replaced whole or not at all, durably, by every writer."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import provision.common.atomic
from provision.common.atomic import fsync_dir, write_atomic
from provision.render.files import write_rendered


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_replaces_whole_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "torch.toml"
    target.write_text("old\n")
    write_atomic(target, "new\n")
    assert target.read_bytes() == b"new\n"
    assert _names(tmp_path) == ["torch.toml"]


def test_text_is_utf8_with_the_line_ends_given_and_bytes_are_kept(tmp_path: Path) -> None:
    write_atomic(tmp_path / "t.txt", "é\nx\r\n")
    assert (tmp_path / "t.txt").read_bytes() == "é\nx\r\n".encode()
    write_atomic(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"


def test_creates_the_folder_and_sets_the_mode_exactly(tmp_path: Path) -> None:
    old = os.umask(0o077)  # the mode does not depend on the umask
    try:
        write_atomic(tmp_path / "a" / "b" / "host.json", "{}\n")
        write_atomic(tmp_path / "run.sh", "#!/bin/sh\n", mode=0o755)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b" / "host.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "run.sh").stat().st_mode) == 0o755


class _HalfThenFull:
    """A file handle that writes half of what it is given, then reports a full disk."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __enter__(self) -> _HalfThenFull:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def write(self, data: bytes) -> int:
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_that_fails_midway_leaves_the_old_file_intact(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "provision.lock.json"
    target.write_text("old contents\n")
    real_fdopen = os.fdopen
    monkeypatch.setattr(provision.common.atomic.os, "fdopen",
                        lambda fd, *a, **kw: _HalfThenFull(real_fdopen(fd, *a, **kw)))
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new contents that do not fit\n")
    assert target.read_text() == "old contents\n"
    assert _names(tmp_path) == ["provision.lock.json"]  # the half-written temp file is gone


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failed_flush_or_rename_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             step: str) -> None:
    target = tmp_path / "torch.toml"
    target.write_text("old\n")

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(provision.common.atomic.os if step == "fsync" else Path, step, boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert _names(tmp_path) == ["torch.toml"]


def test_the_data_and_the_rename_are_both_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []  # for each fsync: was it a folder?
    real_fsync = os.fsync

    def record(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(provision.common.atomic.os, "fsync", record)
    write_atomic(tmp_path / "f", "x")
    assert synced == [False, True]  # the file's bytes, then the folder holding the rename


def test_fsync_dir_tolerates_a_folder_it_cannot_open(tmp_path: Path) -> None:
    fsync_dir(tmp_path / "missing")  # no error: durability is best effort where folders cannot be opened


def test_a_render_that_fails_midway_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    write_rendered(out, {"a.txt": b"a1\n", "b.txt": b"b1\n"})
    real = provision.common.atomic.write_atomic
    calls: list[str] = []

    def second_fails(path: Any, data: Any, **kw: Any) -> None:
        calls.append(Path(path).name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, **kw)

    monkeypatch.setattr("provision.render.files.write_atomic", second_fails)
    with pytest.raises(OSError):
        write_rendered(out, {"a.txt": b"a2\n", "b.txt": b"b2\n"}, force=True)
    assert (out / "a.txt").read_bytes() == b"a1\n" and (out / "b.txt").read_bytes() == b"b1\n"
    assert _names(tmp_path) == ["out"]  # the staging folder is gone
