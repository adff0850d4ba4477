"""``provision serve``: run the planned server of a rendered, built folder in the foreground.

The server command itself lives in the rendered ``serve.sh`` (the same script the Docker image
and compose run); this module only checks that the folder is ready to serve, chooses what the
script reads from its environment (host, port, the model's local folder) and says where the
phone agent should point. The CLI then replaces its own process with ``serve.sh``, so Ctrl-C
and SIGTERM reach the server directly and it shuts down as it was built to.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from provision.errors import InvalidInput

__all__ = ["ServeLaunch", "ServeRequest", "default_serve_dir", "prepare_serve"]

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeRequest:
    """What ``provision serve`` was asked: the rendered folder and the overrides for its server."""

    out: Path
    host: str = "127.0.0.1"
    port: int | None = None
    model_path: Path | None = None
    tiny: bool = False
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeLaunch:
    """The process to become: ``argv`` with ``env``, serving ``served_model_name`` at ``base_url``."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    base_url: str
    served_model_name: str
    engine: str
    engine_version: str
    model_source: str

    @property
    def agent_command(self) -> str:
        """How the Open-AutoGLM phone agent is pointed at this server (its main.py options)."""
        return f"python main.py --base-url {self.base_url} --model {self.served_model_name}"


def default_serve_dir(root: Path | None, host_id: str, default_model: str) -> Path | None:
    """The folder ``nox -s provision`` rendered and built for this machine inside a checkout; None outside one.

    Folders are kept per host and model (``build/provision/<host-id>/<model-id>``): the one model rendered
    for this machine, else ``default_model``'s folder (the catalog's default model).

    :raises InvalidInput: several models were rendered for this machine and none is ``default_model``.
    """
    from provision.render.lock import LOCK_NAME
    from provision.render.usecase import OUTPUT_BASE, output_dir

    if root is None:
        return None
    base = root / OUTPUT_BASE
    rendered = sorted(lock.parent.name for lock in (base / host_id).glob(f"*/{LOCK_NAME}"))
    if len(rendered) == 1:
        return output_dir(base, host_id, rendered[0])
    if rendered and default_model not in rendered:
        raise InvalidInput("command line", "out", f"{base / host_id} holds renders of {', '.join(rendered)}; "
                                                  "name the folder to serve")
    return output_dir(base, host_id, default_model)


def _check_host(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME_RE.fullmatch(host):
            raise InvalidInput("--host", "host", f"{host!r} is not an IP address or host name") from None
    return host


def _tiny_model(out: Path) -> Path:
    """The tiny stand-in the build's smoke test loaded, named by this render's own smoke report.

    :raises InvalidInput: no report of this render (none, or one that tested another lock), or one that names no tiny model.
    """
    from provision.build import SMOKE_REPORT, current_smoke_report

    report = current_smoke_report(out)
    path = report.model_path
    if path is None or report.source != "tiny" or not Path(path, "config.json").is_file():
        raise InvalidInput(str(out / SMOKE_REPORT), "model_path", f"names no tiny model folder; run `provision "
                                                                  f"build {out}` first: its smoke test builds the tiny model")
    return Path(path)


def prepare_serve(request: ServeRequest, environ: Mapping[str, str]) -> ServeLaunch:
    """Check ``request.out`` is rendered and built, and say how to start its server.

    :raises InvalidInput: no rendered ``serve.sh`` or lock, a plan without a server, no venv,
        a bad host, port or model folder.
    """
    from provision.plan.document import Plan
    from provision.render.lock import LOCK_NAME, read_lock

    out = request.out
    script, lock_path = out / "serve.sh", out / LOCK_NAME
    lock = read_lock(lock_path) if out.is_dir() else None
    if lock is None or not script.is_file():
        raise InvalidInput(str(out), "serve.sh", "not a rendered folder (no serve.sh or provision.lock.json); "
                                                 "render and build it first: nox -s provision")
    plan = Plan.from_dict(lock.get("plan"), source=str(lock_path), where="plan")
    if plan.serve is None:
        raise InvalidInput(str(lock_path), "plan.serve", "this plan has no server; re-render it with this provision")
    if not (out / "venv" / "bin").is_dir():
        raise InvalidInput(str(out), "venv", f"not built; run `provision build {out}` first")
    host = _check_host(request.host)
    port = plan.serve.port if request.port is None else request.port
    if not 1 <= port <= 65535:
        raise InvalidInput("--port", "port", f"{port} is not a TCP port (1-65535)")
    env = dict(environ)
    env.update(PROVISION_SERVE_HOST=host, PROVISION_SERVE_PORT=str(port))
    source = plan.model_repo or plan.model_id
    model = _tiny_model(out) if request.tiny else request.model_path
    if model is not None:
        model = model.resolve()
        if not (model / "config.json").is_file():
            raise InvalidInput("--model-path", "model_path", f"{model} holds no config.json")
        env["PROVISION_MODEL_PATH"] = str(model)
        source = f"{model} (tiny stand-in: random weights)" if request.tiny else str(model)
    shown_host = f"[{host}]" if ":" in host else host
    return ServeLaunch(
        argv=(str(script.resolve()), *request.extra_args), env=env,
        base_url=f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown_host}:{port}/v1",  # noqa: S104
        served_model_name=plan.serve.served_model_name, engine=plan.serve.engine,
        engine_version=plan.serve.engine_version, model_source=source,
    )
