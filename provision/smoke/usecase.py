"""``provision smoke`` as a use case: which model, from which folder, then the run.

``--model-path`` (else ``PROVISION_MODEL_PATH``, which ``nox -s provision -- --model-path``
sets) names real weights; ``--tiny`` and ``--synthetic`` ask for a stand-in; otherwise the
run looks for weights and falls back to the tiny model (``provision.smoke.source``).
``--endpoint URL`` proves a running server instead (``endpoint_command``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from provision.errors import InvalidInput

if TYPE_CHECKING:
    from provision.plan.serve import ModelLoad
    from provision.smoke.report import SmokeReport

__all__ = ["MODEL_PATH_ENV", "endpoint_command", "model_path_from", "smoke_command"]

MODEL_PATH_ENV = "PROVISION_MODEL_PATH"


def model_path_from(option: Path | None, environ: Mapping[str, str]) -> Path | None:
    """``--model-path``, else ``PROVISION_MODEL_PATH``; it must hold a ``config.json``.

    :raises InvalidInput: no such folder, or it has no ``config.json``.
    """
    path = option or (Path(environ[MODEL_PATH_ENV]) if environ.get(MODEL_PATH_ENV) else None)
    if path is not None and not path.is_dir():
        raise InvalidInput("--model-path", str(path), "is a file, not a directory" if path.exists() else
                           "no such directory")
    if path is not None and not (path / "config.json").is_file():
        raise InvalidInput("--model-path", str(path), "no config.json in this directory")
    return path


def smoke_command(
    *,
    model: str | None,
    precision: str | None,
    device: str | None = None,
    gpus: Sequence[int] = (),
    max_memory: Mapping[str, int] | None = None,
    device_map: Mapping[str, int] | None = None,
    model_path: Path | None = None,
    stand_in: str | None = None,
    context_tokens: int | None = None,
    new_tokens: int = 16,
    environ: Mapping[str, str] | None = None,
    load: ModelLoad | None = None,
) -> SmokeReport:
    """Smoke-test ``model`` (default: the catalog's) in this environment.

    ``stand_in``: ``"tiny"`` or ``"synthetic"`` to load a stand-in whatever weights exist. ``load``: the
    plan's server's load settings (``provision.plan.serve.serve_load``), so the test loads as it does.

    :raises InvalidInput: an unknown model or a model folder without ``config.json``.
    :raises SmokeError: the model did not load or generate.
    """
    from provision.data import load_catalog, resolve_model
    from provision.smoke.run import run_smoke

    catalog = load_catalog()
    path = model_path_from(model_path, os.environ if environ is None else environ)
    spec = resolve_model(catalog.default.id if model is None else model, catalog)
    source = stand_in or ("weights" if path else "auto")
    return run_smoke(model=spec, model_path=path, source=source, precision=precision, device=device, gpus=gpus,
                     max_memory=max_memory, device_map=device_map, context_tokens=context_tokens,
                     new_tokens=new_tokens, load=load)


def endpoint_command(
    url: str,
    *,
    model: str | None,
    served_model_name: str | None = None,
    engine: str | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    concurrency: int | None = None,
    requests: int | None = None,
    precision: str | None = None,
    device: str | None = None,
) -> SmokeReport:
    """Prove the server at ``url`` serves ``model`` (default: the catalog's) under its served name.

    The served name defaults to the catalog's (``autoglm-phone-9b``); a model directory without
    serving facts is served under its id. The report's ``ok`` says whether the server passed.

    :raises InvalidInput: an unknown model or a bad option (nothing was sent).
    :raises SmokeError: the openai client or Pillow is missing here.
    """
    from provision.data import load_catalog, resolve_model
    from provision.smoke.endpoint import DEFAULT_MAX_TOKENS, DEFAULT_TIMEOUT, endpoint_settings, prove_endpoint

    catalog = load_catalog()
    spec = resolve_model(catalog.default.id if model is None else model, catalog)
    name = served_model_name or (spec.serve.served_model_name if spec.serve is not None else spec.id)
    settings = endpoint_settings(
        url, model_id=spec.id, served_model_name=name, engine=engine,
        max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        timeout=DEFAULT_TIMEOUT if timeout is None else timeout, concurrency=concurrency, requests=requests,
        precision=precision, device=device,
    )  # fmt: skip
    return prove_endpoint(settings)
