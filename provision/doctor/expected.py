"""What the environment should hold, as ``provision doctor`` judges it: a lock's plan or a fresh one.

Its values end up in the fix commands the doctor prints, so they are validated like any input.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from provision.common.fields import Fields
from provision.errors import InvalidInput
from provision.vocab import DEVICES, PLAN_SCHEMA, PRECISIONS, PYPI_INDEX, VARIANT_RE

__all__ = ["Expected", "torch_fix"]

_FALLBACK_TORCH_FIX = "provision plan  # shows the torch build for this machine, then install it with the printed index"


@dataclass(frozen=True, slots=True, kw_only=True)
class Expected:
    """What the environment should hold: from a lock's plan, or planned here for this host."""

    model_id: str
    python: str
    torch_version: str
    variant: str
    index_url: str
    device: str
    precision: str
    gpus: tuple[int, ...]
    packages: dict[str, str]
    source: str  # "lock FILE" or "planned for this host"

    @classmethod
    def from_plan_dict(cls, data: Any, source: str, where: str = "") -> Expected:
        """Validate a ``provision.plan/v1`` mapping: its values end up in fix commands.

        :raises InvalidInput: naming ``source`` and the dotted field.
        """
        from provision.common.quoting import check_index_url, check_model_id, check_version

        f = Fields(data, source, where)
        if f.str("schema") != PLAN_SCHEMA:
            raise f.fail("schema", f"unsupported schema {f.data.get('schema')!r}; expected {PLAN_SCHEMA!r}")
        model = f.obj("model")
        torch = f.obj("torch")
        assert model is not None and torch is not None
        model_id = check_model_id(model.str("id"), source=source, field=model.where("id"))
        python = f.str("python")
        if not re.fullmatch(r"3\.\d{1,2}", python):
            raise f.fail("python", f"{python!r} is not a Python version like '3.11'")
        variant = torch.str("variant")
        if not VARIANT_RE.fullmatch(variant):
            raise torch.fail("variant", f"{variant!r} is not a PyTorch index name like 'cu128'")
        packages = _packages(f, source)
        gpus = _gpus(f, source)
        return cls(
            model_id=model_id,
            python=python,
            torch_version=check_version(torch.str("version"), source=source, field=torch.where("version")),
            variant=variant,
            index_url=check_index_url(torch.str("index_url"), source=source, field=torch.where("index_url")),
            device=f.choice("device", DEVICES),
            precision=f.choice("precision", PRECISIONS),
            gpus=gpus,
            packages=packages,
            source=source,
        )

    def torch_fix(self) -> str:
        """The pip command that installs the planned torch build."""
        pin = self.packages.get("torch") or self.torch_version
        cmd = ["pip", "install"]
        if self.index_url.rstrip("/") != PYPI_INDEX:
            cmd += ["--index-url", self.index_url]
        return shlex.join([*cmd, f"torch=={pin}"])

    def pin_fix(self, *names: str) -> str | None:
        pins = [f"{n}=={self.packages[n]}" for n in names if n in self.packages]
        return shlex.join(["pip", "install", *pins]) if pins else None


def torch_fix(expected: Expected | None) -> str:
    """The planned torch install, or, with no plan, how to get one."""
    return expected.torch_fix() if expected else _FALLBACK_TORCH_FIX


def _packages(f: Fields, source: str) -> dict[str, str]:
    """``packages``: canonical name -> exact version, both checked before they reach a pip line."""
    from provision.common.quoting import check_package_name, check_version

    packages_f = f.obj("packages")
    assert packages_f is not None
    packages: dict[str, str] = {}
    for name, value in packages_f.data.items():
        where_name = packages_f.where(name)
        canon = check_package_name(name, source=source, field=where_name)
        packages[canon] = check_version(value, source=source, field=where_name)
    return packages


def _gpus(f: Fields, source: str) -> tuple[int, ...]:
    gpus = []
    for i, g in enumerate(f.list("gpus", required=False)):
        if not isinstance(g, int) or isinstance(g, bool) or not 0 <= g < 64:
            raise InvalidInput(source, f"{f.where('gpus')}[{i}]", "expected a GPU index 0-63")
        gpus.append(g)
    return tuple(gpus)
