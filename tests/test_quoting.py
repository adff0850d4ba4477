"""provision.common.quoting: what each validator accepts and refuses, and that quoting keeps data data.

Written the way packaging tests its parsers: tables of accepted and rejected examples, so a
loosened pattern shows up as a named example that now passes.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from provision.common.quoting import (
    check_index_url,
    check_label,
    check_model_id,
    check_package_name,
    check_path,
    check_repo_id,
    check_version,
    docker_exec,
    ps_quote,
    sh_quote,
    yaml_str,
)
from provision.errors import InvalidInput

#: Text that must never pass any validator: shell, YAML and Dockerfile metacharacters, control
#: characters, and unicode that looks harmless (fullwidth punctuation, quotes, RTL overrides).
HOSTILE = [
    "a;b", "a&b", "a|b", "a$b", "a`b`", "$(id)", "${HOME}", "a>b", "a<b", "a*b", "a?b", "a!b", "a#b",
    "a'b", 'a"b', "a\\b", "a b", "a\tb", "a\nb", "a\rb", "a\x00b", "a\x1bb", "a\x7fb",
    "a\uff1bb",  # fullwidth semicolon
    "a\u2019b",  # right single quotation mark (PowerShell reads it as a quote)
    "a\u202eb",  # right-to-left override
    "a\u200bb",  # zero-width space
    "\u0430utoglm",  # Cyrillic a, a homoglyph
    "a\u00a0b",  # no-break space
    "",
]

Validator = Callable[..., str]


def _rejects(check: Validator, value: object) -> InvalidInput:
    with pytest.raises(InvalidInput) as exc:
        check(value, source="src.json", field="f.x")
    assert (exc.value.source, exc.value.field) == ("src.json", "f.x")
    return exc.value


# ---------------------------------------------------------------- accepted examples


@pytest.mark.parametrize(("check", "value", "expected"), [
    (check_model_id, "autoglm-phone-9b", "autoglm-phone-9b"),
    (check_model_id, "glm-4-9b-chat-hf", "glm-4-9b-chat-hf"),
    (check_model_id, "m.v2_final", "m.v2_final"),
    (check_model_id, "9b", "9b"),
    (check_model_id, "a" * 96, "a" * 96),
    (check_repo_id, "zai-org/AutoGLM-Phone-9B", "zai-org/AutoGLM-Phone-9B"),
    (check_repo_id, "THUDM/glm-4-9b-chat.hf", "THUDM/glm-4-9b-chat.hf"),
    (check_package_name, "torch", "torch"),
    (check_package_name, "Huggingface_Hub", "huggingface-hub"),  # canonicalized, as pip compares names
    (check_package_name, "zope.interface", "zope-interface"),
    (check_package_name, "a", "a"),
    (check_version, "2.9.1", "2.9.1"),
    (check_version, "2.9.1+cu128", "2.9.1+cu128"),  # kept exactly as written
    (check_version, "1.0rc1", "1.0rc1"),
    (check_version, "1!2.0.post1.dev3", "1!2.0.post1.dev3"),
    (check_index_url, "https://download.pytorch.org/whl/cu128", "https://download.pytorch.org/whl/cu128"),
    (check_index_url, "https://mirror.example:8443/pytorch/whl/", "https://mirror.example:8443/pytorch/whl/"),
    (check_index_url, "https://host", "https://host"),
    (check_label, "self-hosted", "self-hosted"),
    (check_label, "ubuntu-22.04", "ubuntu-22.04"),
    (check_label, "A" * 64, "A" * 64),
    (check_path, "/opt/wheels", "/opt/wheels"),
    (check_path, "build/provision/linux-x86_64-py3.11-cpu", "build/provision/linux-x86_64-py3.11-cpu"),
    (check_path, "/home/u/.cache/wheels+extra@2/", "/home/u/.cache/wheels+extra@2/"),
    (check_path, ".", "."),
])
def test_accepted(check: Validator, value: str, expected: str) -> None:
    assert check(value, source="s", field="f") == expected


# ---------------------------------------------------------------- rejected examples


@pytest.mark.parametrize("check", [check_model_id, check_repo_id, check_package_name, check_version,
                                   check_index_url, check_label, check_path])
@pytest.mark.parametrize("bad", HOSTILE)
def test_every_validator_refuses_hostile_text(check: Validator, bad: str) -> None:
    prefix = {check_index_url: "https://host/", check_repo_id: "org/", check_version: "1.0", check_path: "/opt/"}
    _rejects(check, prefix.get(check, "") + bad if bad else bad)  # inside an otherwise valid value


@pytest.mark.parametrize("check", [check_model_id, check_repo_id, check_package_name, check_version,
                                   check_index_url, check_label, check_path])
@pytest.mark.parametrize("value", [None, 3, 1.5, True, ["a"], {"a": 1}, b"bytes"])
def test_non_strings_are_refused_by_type(check: Validator, value: object) -> None:
    assert "expected a string" in _rejects(check, value).problem


@pytest.mark.parametrize(("check", "bad"), [
    (check_model_id, "AutoGLM"),  # catalog ids are lower case
    (check_model_id, "-leading-dash"),  # would read as an option
    (check_model_id, ".hidden"),
    (check_model_id, "a" * 97),
    (check_model_id, "org/name"),
    (check_repo_id, "no-slash"),
    (check_repo_id, "a/b/c"),
    (check_repo_id, "org/../etc"),
    (check_repo_id, "../x"),
    (check_repo_id, "-org/name"),
    (check_package_name, "-torch"),
    (check_package_name, "torch-"),
    (check_package_name, "torch[cuda]"),  # extras are not part of a name
    (check_package_name, "torch==2.9"),
    (check_version, "v2.9.1"),
    (check_version, "2.9.1 "),
    (check_version, "latest"),
    (check_version, "2.9.1-+x"),  # shaped like a version, not PEP 440
    (check_version, "1" * 65),
    (check_index_url, "http://download.pytorch.org/whl/cu128"),  # no plain http
    (check_index_url, "https://user:pw@host/whl"),  # no credentials
    (check_index_url, "https://host/whl?x=1"),
    (check_index_url, "https://host/whl#frag"),
    (check_index_url, "file:///opt/wheels"),
    (check_index_url, "https://"),
    (check_index_url, "https://host:123456/"),
    (check_label, "-x"),
    (check_label, "a" * 65),
    (check_label, "a/b"),
    (check_path, "../etc"),
    (check_path, "/opt/../etc"),
    (check_path, "/opt//wheels"),
    (check_path, "~/wheels"),
    (check_path, "C:\\wheels"),
])
def test_rejected(check: Validator, bad: str) -> None:
    error = _rejects(check, bad)
    assert repr(bad) in error.problem  # the message shows the value, escaped


def test_rejections_are_one_line_whatever_the_value() -> None:
    error = _rejects(check_label, "a\nb\rc\u2028d")
    assert "\n" not in str(error) and "\r" not in str(error)


# ---------------------------------------------------------------- quoting: data stays data

QUOTED = [*HOSTILE, "'", "''", "\\", "it's ${HOME}", "-n", "*", "\u2018\u2019\u201a\u201b", "a\u0000b"]


@pytest.mark.parametrize("value", [v for v in QUOTED if "\x00" not in v])
def test_sh_quote_reads_back_unchanged_in_bash(value: str, tmp_path: Path) -> None:
    script = tmp_path / "q.sh"
    script.write_text(f"v={sh_quote(value)}\nprintf '%s' \"$v\"\n", encoding="utf-8")
    out = subprocess.run(["bash", str(script)], capture_output=True, check=True, cwd=tmp_path)
    assert out.stdout.decode("utf-8") == value
    assert shlex.split(sh_quote(value)) == [value]
    assert list(tmp_path.iterdir()) == [script]  # nothing ran


@pytest.mark.parametrize("value", QUOTED)
def test_yaml_and_docker_quoting_is_one_ascii_line(value: str) -> None:
    for quoted in (yaml_str(value), docker_exec(["echo", value])):
        assert quoted.isascii() and "\n" not in quoted and "\r" not in quoted
    assert json.loads(yaml_str(value)) == value
    assert json.loads(docker_exec(["echo", value])) == ["echo", value]


@pytest.mark.parametrize("value", QUOTED)
def test_powershell_quotes_are_all_doubled(value: str) -> None:
    quoted = ps_quote(value)
    assert quoted.startswith("'") and quoted.endswith("'")
    inner = quoted[1:-1]
    for q in "'\u2018\u2019\u201a\u201b":
        assert inner.count(q) == 2 * value.count(q)  # every quote doubled: none closes the string
    assert inner.replace("''", "'").replace("\u2018\u2018", "\u2018").replace(
        "\u2019\u2019", "\u2019").replace("\u201a\u201a", "\u201a").replace("\u201b\u201b", "\u201b") == value


def test_quoting_takes_any_value_as_text() -> None:
    assert sh_quote(3) == "3" and yaml_str(None) == '"None"' and ps_quote(1.5) == "'1.5'"
    assert docker_exec([1, "a"]) == '["1", "a"]'
