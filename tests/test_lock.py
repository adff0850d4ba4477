"""provision.render.lock: build, write and read a lock; tell which rendered files someone edited."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from provision.errors import InvalidInput
from provision.render.lock import (
    LOCK_NAME,
    LOCK_SCHEMA,
    build_lock,
    canonical_json,
    dump_lock,
    edited_files,
    read_lock,
    sha256_hex,
)

FILES = {"requirements.txt": b"torch==2.9.1\n", "install.sh": b"#!/bin/sh\n", ".github/workflows/provision.yml": b"on: push\n"}
PLAN = {"schema": "provision.plan/v1", "python": "3.11", "packages": {"torch": "2.9.1"}}


def make_lock(files: dict[str, bytes] | None = None) -> dict:
    return build_lock(inputs={"model": "autoglm-phone-9b", "context": 4096}, plan=PLAN,
                      hashes={"status": "none"}, files=files if files is not None else FILES)


def written(tmp_path: Path, files: dict[str, bytes] | None = None) -> Path:
    """``files`` and their lock under ``tmp_path``, as a render leaves them."""
    files = FILES if files is None else files
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    (tmp_path / LOCK_NAME).write_bytes(dump_lock(make_lock(files)))
    return tmp_path


# ---------------------------------------------------------------- building and digests


def test_sha256_hex_is_the_plain_hex_digest() -> None:
    assert sha256_hex(b"") == hashlib.sha256(b"").hexdigest()
    assert len(sha256_hex(b"x")) == 64


def test_canonical_json_is_sorted_compact_ascii_and_order_free() -> None:
    a = canonical_json({"b": 1, "a": ["é", {"d": None, "c": True}]})
    assert a == b'{"a":["\\u00e9",{"c":true,"d":null}],"b":1}'
    assert canonical_json({"a": ["é", {"c": True, "d": None}], "b": 1}) == a  # key order does not matter


def test_build_lock_records_every_file_but_itself() -> None:
    lock = make_lock({**FILES, LOCK_NAME: b"an older lock"})
    assert lock["schema"] == LOCK_SCHEMA
    assert lock["files"] == {name: hashlib.sha256(data).hexdigest() for name, data in sorted(FILES.items())}
    assert list(lock["files"]) == sorted(FILES)
    assert lock["plan"] == PLAN and lock["plan_sha256"] == sha256_hex(canonical_json(PLAN))
    assert lock["inputs"] == {"model": "autoglm-phone-9b", "context": 4096} and lock["hashes"] == {"status": "none"}


def test_build_lock_copies_its_inputs() -> None:
    plan = dict(PLAN)
    lock = build_lock(inputs={}, plan=plan, hashes={}, files={})
    plan["python"] = "3.12"
    assert lock["plan"]["python"] == "3.11"


def test_dump_is_deterministic_sorted_and_ends_with_a_newline() -> None:
    one, two = dump_lock(make_lock()), dump_lock(make_lock(dict(reversed(list(FILES.items())))))
    assert one == two and one.endswith(b"}\n") and one.isascii()
    assert json.loads(one) == make_lock()
    keys = list(json.loads(one))
    assert keys == sorted(keys)


# ---------------------------------------------------------------- reading


def test_read_lock_round_trips_and_is_none_without_a_file(tmp_path: Path) -> None:
    assert read_lock(tmp_path / LOCK_NAME) is None
    written(tmp_path)
    assert read_lock(tmp_path / LOCK_NAME) == make_lock()


@pytest.mark.parametrize(("edit", "field", "problem"), [
    (lambda lock: lock.update(schema="provision.lock/v0"), "schema", "expected 'provision.lock/v1'"),
    (lambda lock: lock.pop("schema"), "schema", "required key is missing"),
    (lambda lock: lock.pop("files"), "files", "required key is missing"),
    (lambda lock: lock.update(files=["install.sh"]), "files", "expected an object"),
    (lambda lock: lock["files"].update({"install.sh": "abc"}), "files.install.sh", "expected a sha256 hex digest"),
    (lambda lock: lock["files"].update({"install.sh": 7}), "files.install.sh", "expected a sha256 hex digest"),
])
def test_read_lock_refuses_what_this_toolkit_did_not_write(tmp_path: Path, edit, field: str, problem: str) -> None:
    lock = make_lock()
    edit(lock)
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps(lock), encoding="utf-8")
    with pytest.raises(InvalidInput) as exc:
        read_lock(path)
    assert (exc.value.source, exc.value.field) == (str(path), field) and problem in exc.value.problem


def test_read_lock_names_the_line_of_broken_json(tmp_path: Path) -> None:
    path = tmp_path / LOCK_NAME
    path.write_text('{"schema": "provision.lock/v1",\n  "files": {,}}\n', encoding="utf-8")
    with pytest.raises(InvalidInput, match="invalid JSON at line 2"):
        read_lock(path)


# ---------------------------------------------------------------- edited-file detection


def test_nothing_is_edited_right_after_a_render(tmp_path: Path) -> None:
    out = written(tmp_path)
    assert edited_files(out, make_lock()) == []
    assert edited_files(out, make_lock(), sorted(FILES)) == []


def test_an_edited_file_is_named_and_a_deleted_one_is_not(tmp_path: Path) -> None:
    out = written(tmp_path)
    (out / "install.sh").write_bytes(b"#!/bin/sh\necho mine\n")
    (out / "requirements.txt").unlink()  # gone: nothing of the user's to lose
    assert edited_files(out, make_lock()) == ["install.sh"]
    (out / ".github/workflows/provision.yml").write_bytes(b"on: pull_request\n")
    assert edited_files(out, make_lock()) == [".github/workflows/provision.yml", "install.sh"]


def test_a_file_the_lock_does_not_know_counts_as_the_users(tmp_path: Path) -> None:
    out = written(tmp_path)
    (out / "Dockerfile").write_text("FROM scratch\n")
    assert edited_files(out, make_lock()) == []  # not asked about: left alone
    assert edited_files(out, make_lock(), ["Dockerfile", "install.sh"]) == ["Dockerfile"]
    assert edited_files(out, make_lock(), ["compose.yaml"]) == []  # asked about but absent


def test_an_unreadable_file_is_bad_input_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = written(tmp_path)
    real_read = Path.read_bytes

    def refuse(self: Path) -> bytes:
        if self.name == "install.sh":
            raise PermissionError(13, "Permission denied")
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(InvalidInput) as exc:
        edited_files(out, make_lock())
    assert exc.value.source == str(out / "install.sh") and exc.value.problem == "cannot read: Permission denied"


def test_read_lock_warns_about_unknown_keys_with_the_nearest_known_one(tmp_path: Path) -> None:
    from provision.common.fields import UnknownKeyWarning

    lock = make_lock()
    lock["plan_sha"] = lock.pop("plan_sha256")
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps(lock), encoding="utf-8")
    with pytest.warns(UnknownKeyWarning) as caught:
        assert read_lock(path) == lock  # ignored, not refused
    assert [str(w.message) for w in caught] == [f"{path}: plan_sha: unknown key, ignored; did you mean plan_sha256?"]
