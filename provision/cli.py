"""The command line: parse options, call a use case, show its result, map errors to exit codes.

Each command is parse -> one use-case function (in the package of its stage) -> display ->
exit code. This is the only module that prints or exits. ``--json`` writes exactly one JSON
document to stdout; human text goes to stderr when JSON is requested.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.display import show_host, show_no_plan, show_plan, show_smoke
from provision.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    InvalidInput,
    NoViablePlan,
    ProvisionError,
    write_failure,
)
from provision.vocab import (
    DEFAULT_CONTEXT,
    DEFAULT_ENGINE,
    DEVICE_CHOICES,
    ENGINE_CHOICES,
    MIN_SERVING_CONTEXT,
    PRECISIONS,
)

if TYPE_CHECKING:
    from provision.plan.usecase import PlanRequest
    from provision.render.usecase import RenderRequest

__all__ = ["main", "render_out_dir"]


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it says it already or has none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, argparse.SUPPRESS) or not action.option_strings
                or isinstance(default, list)):
            return text
        return f"{text} (default: {default})"


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is the contract's one-line exit-2 error, and help shows defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InvalidInput("command line", "options", message)


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range [{low}, {high}]")
        return value

    return parse


_positive_int = _int_in(1, 10_000_000)
_count = _int_in(0, 1000)


def _pixels(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pixels") from None
    if not 12_544 <= value <= 1_000_000_000:
        raise argparse.ArgumentTypeError(f"{value} is out of range [12544, 1000000000]")
    return value


# ---------------------------------------------------------------------------
# The parser: one function per command

_Sub = Any  # argparse's private _SubParsersAction


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", type=Path, metavar="FILE",
                   help="plan for the machine this host profile (provision detect -o FILE) describes "
                        "(default: this machine)")
    p.add_argument("--model", default=None, metavar="ID_OR_DIR",
                   help="catalog id (provision models), Hugging Face repo id in any case, or a local directory "
                        "with config.json (default: autoglm-phone-9b)")
    p.add_argument("--python", help="Python X.Y the environment is built with (default: the host's)")
    p.add_argument("--context", type=_positive_int, default=None,
                   help="the longest request to budget for, in tokens; a given value is planned exactly (default: "
                        "the model's serving context from the catalog, 25480 for autoglm-phone-9b, lowered with a "
                        f"warning to what fits, not below {MIN_SERVING_CONTEXT}; {DEFAULT_CONTEXT} for a local model "
                        "directory)")
    p.add_argument("--images", type=_count, metavar="N",
                   help="phone screenshots per request the memory budget holds, within --context (default: the "
                        "model's catalog entry, one for AutoGLM; 0 budgets text only)")
    p.add_argument("--max-pixels", type=_pixels, metavar="P",
                   help="the image processor's pixel cap a screenshot is budgeted under (default: the catalog's, "
                        "5000000 for AutoGLM: 3,108 visual tokens per 1080x2400 screenshot)")
    p.add_argument("--engine", choices=ENGINE_CHOICES, default=DEFAULT_ENGINE,
                   help="the serving engine (default: auto: vLLM, else SGLang, where the host runs them, else "
                        "transformers serve)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="force this precision; a no-plan (exit 3) if it cannot run or fit (default: the best that "
                        "fits: bf16, fp16, int8, then nf4 on a GPU)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where the model runs; auto takes the GPUs where it fits, else the CPU")
    p.add_argument("--torch", dest="torch_version", metavar="VERSION",
                   help="pin this torch release from matrices/torch.toml; an engine that pins another is passed "
                        "over (default: the engine's pin, else the newest that fits the host)")
    p.add_argument("--variant", help="pin this PyTorch index variant: cpu, cu126, cu128, ... (default: the engine's "
                                     "PyPI build, else the newest the driver runs)")
    p.add_argument("--wheelhouse", action="append", metavar="DIR",
                   help="take torch from wheels in DIR (repeatable; env PROVISION_WHEELHOUSE); 'auto' uses "
                        "pip's find-links folders when the PyTorch index is unreachable (default: the index)")
    p.add_argument("--index-url", metavar="URL", help="mirror of the PyTorch index to install torch from (env "
                                                      "PROVISION_INDEX_URL; default: download.pytorch.org, or PyPI "
                                                      "where it carries the build)")
    p.add_argument("--matrix", type=Path, metavar="DIR",
                   help="read the matrices from this folder (default: the bundled matrices/)")


def _add_detect(sub: _Sub) -> None:
    p = sub.add_parser("detect", help="describe this machine as a host profile")
    p.add_argument("--json", action="store_true", help="print the profile as JSON on stdout instead of a table")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="also write the profile to FILE, for plan --host FILE (default: not written)")


def _add_plan(sub: _Sub) -> None:
    p = sub.add_parser("plan", help="choose torch, CUDA variant, precision and placement")
    _add_plan_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (human text goes to stderr)")


def _add_render(sub: _Sub) -> None:
    p = sub.add_parser("render", help="write the environment files for a plan")
    _add_plan_options(p)
    p.add_argument("--plan", dest="plan_file", type=Path, metavar="FILE",
                   help="render this plan JSON (provision plan --json) instead of planning (default: plan now)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="the folder to write the files into (created if missing; staged inside it, so only DIR "
                        "itself must be writable)")
    p.add_argument("--force", action="store_true", help="overwrite files edited since the last render")
    p.add_argument("--no-resolve", action="store_true",
                   help="pin versions without running uv for hashes (default: resolve hashes where the index "
                        "answers)")
    p.add_argument("--gpu-runner", action="append", metavar="LABEL",
                   help="runs-on label for the CI workflow's GPU jobs (repeatable; default: self-hosted linux gpu)")
    p.add_argument("--cpu-runner", action="append", metavar="LABEL",
                   help="runs-on label for the CI workflow's CPU job (repeatable; default: ubuntu-22.04)")
    p.add_argument("--image", metavar="REF",
                   help="the serving image compose.yaml tags and k8s/ runs, e.g. ghcr.io/you/autoglm:cu128 "
                        "(default: provision-MODEL:VARIANT, and a registry.example.com placeholder for k8s/)")
    p.add_argument("--json", action="store_true", help="print what was written as one JSON document on stdout")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text} is out of range (0, 3600]")
    return value


#: Options of the endpoint proof (dest -> flag) and of a local load, which the other mode refuses.
_ENDPOINT_ONLY = {"served_model_name": "--served-model-name", "endpoint_engine": "--engine",
                  "concurrency": "--concurrency", "requests": "--requests", "max_tokens": "--max-tokens",
                  "timeout": "--timeout"}
_LOCAL_ONLY = {"precision": "--precision", "context": "--context", "new_tokens": "--new-tokens"}


def _add_smoke(sub: _Sub) -> None:
    p = sub.add_parser("smoke", help="load the model in this environment and generate, or prove a running server")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-path", type=Path, metavar="DIR",
                     help="load the checkpoint in DIR (env PROVISION_MODEL_PATH; default: the model's snapshot in "
                          "the Hugging Face cache, else the tiny stand-in)")
    src.add_argument("--tiny", action="store_true",
                     help="load a small model of the same architecture with random weights, built here in seconds "
                          "and cached: proves the software stack, not the model")
    src.add_argument("--synthetic", action="store_true",
                     help="build the full-size architecture with random weights (about 20 GB for AutoGLM-Phone-9B, "
                          "written to TMPDIR) and load it: proves memory and speed without a download; checks RAM, "
                          "GPU memory and disk first")
    src.add_argument("--endpoint", metavar="URL",
                     help="prove the OpenAI-compatible server at URL (e.g. http://127.0.0.1:8000/v1) with the phone "
                          "agent's request (default: load the model here instead)")
    p.add_argument("--model", default=None, metavar="ID_OR_DIR",
                   help="catalog id, Hugging Face repo id or directory (default: the lock's, else autoglm-phone-9b)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="load in this precision (default: the lock's, else bf16 on a GPU with bf16, fp16 on an "
                        "older one, fp32 on the CPU)")
    p.add_argument("--lock", type=Path, metavar="FILE",
                   help="take model, precision and placement (and the served name and engine, with --endpoint) from "
                        "this provision.lock.json (default: the options and the catalog decide)")
    p.add_argument("--context", type=_positive_int, default=None, metavar="TOKENS",
                   help="make the prompt this long minus --new-tokens, to measure memory at that context (default: "
                        "a short prompt)")
    p.add_argument("--new-tokens", type=_positive_int, default=None, help="tokens to generate (default: 16)")
    e = p.add_argument_group("with --endpoint")
    e.add_argument("--served-model-name", metavar="NAME", help="the name to request (default: the model's, "
                                                              "autoglm-phone-9b)")
    e.add_argument("--engine", dest="endpoint_engine", choices=[x for x in ENGINE_CHOICES if x != "auto"],
                   help="the engine behind URL, where its /v1/models does not say (default: the lock's, else "
                        "what /v1/models says)")
    e.add_argument("--concurrency", type=_positive_int, metavar="N",
                   help="then a load probe, N requests in flight (default: no load probe)")
    e.add_argument("--requests", type=_positive_int, metavar="M", help="the load probe's requests (default: 4 x N)")
    e.add_argument("--max-tokens", type=_positive_int, metavar="N",
                   help="bound on each answer (default: 64; the agent asks for up to 3000)")
    e.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                   help="wait at most this long to connect and for each read (default: 120)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="also write the report to FILE (default: "
                                                                     "not written)")
    p.add_argument("--json", action="store_true", help="print the smoke report as one JSON document on stdout")


def _add_doctor(sub: _Sub) -> None:
    p = sub.add_parser("doctor", help="diagnose this environment against the machine and the model")
    p.add_argument("--model", default=None, metavar="ID_OR_DIR",
                   help="the model to check the environment for (default: the lock's, else autoglm-phone-9b)")
    p.add_argument("--lock", type=Path, metavar="FILE",
                   help="the provision.lock.json to check for drift (default: the one beside this venv, else "
                        "build/provision/<host>/)")
    p.add_argument("--json", action="store_true", help="print the findings as one JSON document on stdout")


def _add_build(sub: _Sub) -> None:
    p = sub.add_parser("build", help="build the venv for a rendered folder and run the smoke test in it")
    p.add_argument("out", type=Path, help="a folder written by provision render")
    p.add_argument("--no-smoke", action="store_true", help="build (or reuse) the venv but skip the smoke test")
    p.add_argument("--json", action="store_true", help="print the build (and its smoke report) as JSON on stdout")


def _add_serve(sub: _Sub) -> None:
    p = sub.add_parser("serve", help="run the planned server of a built folder in the foreground (Ctrl-C stops it)")
    p.add_argument("out", type=Path, nargs="?",
                   help="a folder written by provision render and built "
                        "(default: this machine's build/provision/<host-id>/<model-id>)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, help="port to listen on (default: the plan's, 8000)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-path", type=Path, help="serve the checkpoint in this folder (default: the plan's repo, from the "
                                                                     "Hugging Face cache)")
    src.add_argument("--tiny", action="store_true",
                     help="serve the tiny stand-in the build's smoke test made (random weights: proves the stack only)")
    p.epilog = "Arguments after -- go to the server itself (e.g. provision serve -- --log-level info)."


def _add_models(sub: _Sub) -> None:
    p = sub.add_parser("models", help="list the models --model takes by id (a Hugging Face repo id or a local "
                                      "directory with config.json also works)")
    p.add_argument("--matrix", type=Path, help="read the catalog from this matrices folder (default: the bundled one)")
    p.add_argument("--json", action="store_true", help="print the list as one JSON document on stdout")


def _add_matrix(sub: _Sub) -> None:
    p = sub.add_parser("matrix", help="inspect or refresh the compatibility matrices")
    msub = p.add_subparsers(dest="matrix_command", required=True, parser_class=_Parser)
    r = msub.add_parser("refresh", help="rebuild torch rows from the PyTorch wheel index, engine pins from PyPI "
                                        "and image digests from the images' registries")
    r.add_argument("--matrix", type=Path, metavar="DIR",
                   help="refresh the matrices in this folder (default: the bundled matrices/)")
    r.add_argument("--write", action="store_true", help="write the change (default: show the diff only)")
    r.add_argument("--variant", action="append", help="variants to fetch (default: those in the matrix)")
    r.add_argument("--only", choices=("torch", "engines", "images"),
                   help="refresh one part: torch.toml, engines.toml's pins, or the digests of the images in "
                        "images.toml and engines.toml (default: all three)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="provision",
        description="A pinned, proven environment for GLM-family 9B models (AutoGLM-Phone-9B) on this machine: "
                    "detect it, plan torch/CUDA/precision/placement, render the files, build and smoke-test.",
        epilog="Exit codes: 0 done, 1 a build or smoke test failed, 2 bad input, 3 no viable plan.",
    )
    from provision import __version__

    parser.add_argument("--version", action="version", version=f"provision {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_detect, _add_plan, _add_render, _add_smoke, _add_doctor, _add_build, _add_serve, _add_models,
                _add_matrix):
        add(sub)
    return parser


# ---------------------------------------------------------------------------
# Options -> requests


def _plan_request(args: argparse.Namespace) -> PlanRequest:
    from provision.plan.usecase import PlanRequest

    return PlanRequest(host=args.host, model=args.model, python=args.python, context=args.context,
                       engine=args.engine, images=args.images, max_pixels=args.max_pixels,
                       precision=args.precision, device=args.device, torch_version=args.torch_version,
                       variant=args.variant, wheelhouse=tuple(args.wheelhouse) if args.wheelhouse else None,
                       index_url=args.index_url, matrix=args.matrix)


def _render_request(args: argparse.Namespace) -> RenderRequest:
    from provision.render.usecase import RenderRequest

    return RenderRequest(plan=_plan_request(args), out=args.out, plan_file=args.plan_file, force=args.force,
                         resolve=not args.no_resolve, gpu_runners=tuple(args.gpu_runner or ()),
                         cpu_runners=tuple(args.cpu_runner or ()), image=args.image)


def render_out_dir(argv: Sequence[str], base: Path) -> Path:
    """Where ``provision render`` with the options ``argv`` (all but ``--out``) renders under ``base``, one folder
    per host and model (``base/<host-id>/<model-id>``): the ``--out`` that ``nox -s provision`` passes.

    :raises InvalidInput: a bad option, host file, plan file or model (what the render itself would refuse).
    """
    from provision.render.usecase import render_target

    args = _build_parser().parse_args(["render", *argv, "--out", str(base)])
    return render_target(_render_request(args), base)


# ---------------------------------------------------------------------------
# Output


def _print_json(doc: object) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _console(stderr: bool) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _write_json_file(path: Path, doc: object) -> None:
    """``-o FILE``: the same document, written whole; a folder or an unwritable place is bad input.

    :raises InvalidInput: ``path`` is a folder, or it cannot be written (naming the OS's reason).
    :raises ProvisionError: the disk is full (exit 1).
    """
    from provision.common.atomic import write_atomic

    if path.is_dir():
        raise InvalidInput("-o", "output", f"{path} is a folder; name the file to write")
    try:
        write_atomic(path, json.dumps(doc, indent=2) + "\n")
    except OSError as exc:
        raise write_failure("-o", "output", exc, where=str(path)) from None


# ---------------------------------------------------------------------------
# Commands


def _cmd_detect(args: argparse.Namespace) -> int:
    from provision.host import detect_host

    host = detect_host()
    doc = host.to_dict()
    if args.output:
        _write_json_file(args.output, doc)
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        show_host(host, _console(stderr=False))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from provision.plan.usecase import plan_command

    plan = plan_command(_plan_request(args))  # no plan: main() reports it, exit 3
    if args.json:
        _print_json(plan.to_dict())
    else:
        show_plan(plan, _console(stderr=False))
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from provision.display import show_render
    from provision.render.usecase import render_command

    result = render_command(_render_request(args))
    if args.json:
        _print_json(result.to_dict())
        return 0
    err = _console(stderr=True)
    if result.planned is not None:
        show_plan(result.planned, err)
    show_render(result, err)
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from provision.build import build_environment
    from provision.display import show_build

    result = build_environment(args.out, smoke=not args.no_smoke, echo=sys.stderr.write)
    if args.json:
        _print_json(result.to_dict())
    else:
        show_build(result, args.out, _console(stderr=True))
    return 0


def _smoke_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What to smoke-test: the lock's plan (model, precision, placement, how it is served), overridden by options."""
    from provision.plan.document import Plan
    from provision.plan.serve import serve_load
    from provision.render.lock import read_lock

    settings: dict[str, Any] = {"model": args.model, "precision": args.precision, "device": None, "gpus": (),
                                "max_memory": None, "device_map": None, "served_model_name": None, "engine": None,
                                "load": None}
    if args.lock is not None:
        lock = read_lock(args.lock)
        if lock is None:
            raise InvalidInput(str(args.lock), "(file)", "no such file")
        plan = Plan.from_dict(lock.get("plan"), source=str(args.lock), where="plan")
        placement = plan.placement
        load = serve_load(plan.serve, plan.precision) if args.precision is None else None  # as the server loads
        settings.update(model=settings["model"] or plan.model_id, precision=settings["precision"] or plan.precision,
                        device=placement.device, gpus=placement.gpus, max_memory=placement.max_memory,
                        device_map=placement.device_map, load=load)
        if plan.serve is not None:
            settings.update(served_model_name=plan.serve.served_model_name, engine=plan.serve.engine)
    return settings


def _check_smoke_mode(args: argparse.Namespace) -> None:
    """An option of the other mode is bad input, not silently ignored.

    :raises InvalidInput: naming the first such option.
    """
    endpoint = args.endpoint is not None
    for dest, flag in (_LOCAL_ONLY if endpoint else _ENDPOINT_ONLY).items():
        if getattr(args, dest) is not None:
            problem = "does not apply to --endpoint (the server decides it)" if endpoint else "needs --endpoint"
            raise InvalidInput(flag, "options", problem)


def _lock_sha256(lock: Path | None) -> str | None:
    """The digest a report records of the lock it tested (``_smoke_settings`` has read the file)."""
    if lock is None:
        return None
    from provision.render.lock import sha256_hex

    try:
        return sha256_hex(lock.read_bytes())
    except OSError as exc:
        raise InvalidInput(str(lock), "(file)", f"unreadable ({exc.strerror or exc})") from None


def _cmd_smoke(args: argparse.Namespace) -> int:
    from provision.smoke import endpoint_command, smoke_command

    _check_smoke_mode(args)
    settings = _smoke_settings(args)
    tested = _lock_sha256(args.lock)
    if args.endpoint is not None:
        report = endpoint_command(
            args.endpoint, model=settings["model"], served_model_name=args.served_model_name or
            settings["served_model_name"], engine=args.endpoint_engine or settings["engine"],
            max_tokens=args.max_tokens, timeout=args.timeout, concurrency=args.concurrency, requests=args.requests,
            precision=settings["precision"], device=settings["device"],
        )  # fmt: skip
    else:
        load = settings["load"]  # the lock's server's load; its precision (an engine's fp8 loads 16-bit here)
        report = smoke_command(
            model=settings["model"], precision=load.precision if load else settings["precision"],
            device=settings["device"], gpus=settings["gpus"], load=load,
            max_memory=settings["max_memory"], device_map=settings["device_map"], model_path=args.model_path,
            stand_in="tiny" if args.tiny else "synthetic" if args.synthetic else None, context_tokens=args.context,
            new_tokens=16 if args.new_tokens is None else args.new_tokens,
        )  # fmt: skip
    if tested is not None:
        import dataclasses

        report = dataclasses.replace(report, lock_sha256=tested)
    doc = report.to_dict()
    if args.output:
        _write_json_file(args.output, doc)
    if args.json:
        _print_json(doc)
    if not report.ok:  # an endpoint that failed the proof: the report says so, and one line why
        sys.stderr.write(f"error: {_one_line(f'{report.endpoint}: {report.error}')}\n")
        return EXIT_FAILED
    show_smoke(report, _console(stderr=args.json))
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from provision.display import show_findings
    from provision.doctor import DoctorReport, run_doctor

    report = DoctorReport(findings=tuple(run_doctor(model_id=args.model, lock_path=args.lock)))
    if args.json:
        _print_json(report.to_dict())
    else:
        show_findings(report, _console(stderr=False))
    return 0 if report.ok else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    """Check the folder, say where the phone agent should point, then become its ``serve.sh``."""
    import os

    from provision.common.run import NotRun, replace_process
    from provision.serve import ServeRequest, default_serve_dir, prepare_serve

    out = args.out
    if out is None:
        from provision.build import source_root
        from provision.data import load_catalog
        from provision.host import detect_host

        out = default_serve_dir(source_root(), detect_host().host_id, load_catalog().default.id)
        if out is None:
            raise InvalidInput("command line", "out", "name the rendered folder to serve (no checkout to default to)")
    extra = tuple(args.passthrough)
    launch = prepare_serve(ServeRequest(out=out, host=args.host, port=args.port, model_path=args.model_path,
                                        tiny=args.tiny, extra_args=extra), os.environ)
    sys.stderr.write(f"serving {launch.served_model_name} ({launch.model_source}) with {launch.engine} "
                     f"{launch.engine_version} at {launch.base_url}; Ctrl-C stops it\n"
                     f"phone agent (Open-AutoGLM): {launch.agent_command}\n")
    sys.stderr.flush()
    try:
        replace_process(launch.argv, launch.env)
    except NotRun as exc:
        raise ProvisionError(str(exc)) from None
    return 1  # not reached: the process became the server


def _cmd_models(args: argparse.Namespace) -> int:
    from provision.data import load_catalog, load_matrix
    from provision.data.catalog import catalog_document
    from provision.display import show_models

    doc = catalog_document(load_catalog(load_matrix(args.matrix).catalog_path if args.matrix else None))
    if args.json:
        _print_json(doc)
    else:
        show_models(doc, _console(stderr=False))
    return 0


def _cmd_matrix(args: argparse.Namespace) -> int:
    """``matrix refresh``: torch rows from the PyTorch index, engine pins from PyPI, image digests from the
    registries; a diff each, written on --write."""
    if args.only in (None, "torch"):
        _refresh_torch(args)
    if args.only in (None, "engines"):
        _refresh_engines(args)
    if args.only in (None, "images"):
        _refresh_images(args)
    return 0


def _refresh_torch(args: argparse.Namespace) -> None:
    import os

    from provision.data.pypi import PypiClient, parse_simple_json, pip_network
    from provision.data.refresh import apply_refresh, plan_refresh
    from provision.render.sources import read_pip_config

    index, verify = pip_network(os.environ, read_pip_config(os.environ))
    client = PypiClient(index, verify=verify)

    def pypi_names(package: str) -> list[str]:  # the manylinux tags of PyPI's wheels: torch.toml's glibc floors
        return [f.filename for f in parse_simple_json(client.project_page(package), f"{index}/{package}/")]

    refresh = plan_refresh(args.matrix, args.variant, pypi=pypi_names)
    if not refresh.result.changed:
        sys.stderr.write(f"{refresh.path}: up to date with the PyTorch index ({', '.join(refresh.variants)})\n")
        return
    sys.stdout.write(refresh.result.diff)
    if args.write:
        try:
            apply_refresh(refresh)  # only once the refreshed matrix validates
        except OSError as exc:
            raise write_failure(str(refresh.path), "(file)", exc) from None
        sys.stderr.write(f"wrote {refresh.path}\n")
    else:
        sys.stderr.write("dry run: pass --write to apply this change\n")


def _refresh_engines(args: argparse.Namespace) -> None:
    import os

    from provision.data.pypi import pip_network
    from provision.data.refresh_engines import apply_engine_refresh, plan_engine_refresh
    from provision.render.sources import read_pip_config

    index, verify = pip_network(os.environ, read_pip_config(os.environ))
    refresh = plan_engine_refresh(args.matrix, index, verify=verify)
    for message in refresh.result.messages:
        sys.stderr.write(f"{message}\n")
    if not refresh.result.changed:
        sys.stderr.write(f"{refresh.path}: up to date with {refresh.index}\n")
        return
    sys.stdout.write(refresh.result.diff)
    if args.write:
        try:
            apply_engine_refresh(refresh)  # only once the refreshed file validates against the matrix
        except OSError as exc:
            raise write_failure(str(refresh.path), "(file)", exc) from None
        sys.stderr.write(f"wrote {refresh.path}\n")
    else:
        sys.stderr.write("dry run: pass --write to apply this change\n")


def _refresh_images(args: argparse.Namespace) -> None:
    from provision.data.refresh_images import apply_image_refresh, plan_image_refresh

    refresh = plan_image_refresh(args.matrix)
    for line in refresh.unreachable:  # one line per image, then the error: nothing is written
        sys.stderr.write(f"{_one_line(line)}\n")
    if refresh.unreachable:
        raise ProvisionError(f"no digest written: {len(refresh.unreachable)} of {refresh.images} images' registries "
                             "could not be reached (above); run it where they can be (HTTPS_PROXY is honoured)")
    for message in refresh.messages:
        sys.stderr.write(f"{_one_line(message)}\n")
    names = ", ".join(str(f.path) for f in refresh.files)
    if not refresh.changed:
        sys.stderr.write(f"{names}: image digests up to date with the registries ({refresh.images} images)\n")
        return
    sys.stdout.write(refresh.diff)
    if args.write:
        try:
            written = apply_image_refresh(refresh)  # only once the refreshed matrix validates
        except OSError as exc:
            raise write_failure(str(exc.filename or names), "(file)", exc) from None
        for path in written:
            sys.stderr.write(f"wrote {path}\n")
    else:
        sys.stderr.write("dry run: pass --write to apply this change\n")


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "detect": _cmd_detect,
    "plan": _cmd_plan,
    "render": _cmd_render,
    "smoke": _cmd_smoke,
    "doctor": _cmd_doctor,
    "build": _cmd_build,
    "serve": _cmd_serve,
    "models": _cmd_models,
    "matrix": _cmd_matrix,
}


def _one_line(text: str) -> str:
    """Escape anything that could break the contract's single ``error:`` line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the only place that turns errors into exit codes, and warnings into ``warning:`` lines."""
    import warnings

    from provision.common.fields import UnknownKeyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", UnknownKeyWarning)
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], *rest: Any, **kw: Any) -> None:
            if issubclass(category, UnknownKeyWarning):
                sys.stderr.write(f"warning: {_one_line(str(message))}\n")
            else:
                shown(message, category, *rest, **kw)

        warnings.showwarning = show
        from provision.common.interrupt import interrupt_on_signals
        from provision.common.progress import reporting

        with reporting(_StatusLines()), interrupt_on_signals():  # SIGTERM unwinds like Ctrl-C: cleanup runs
            return _main(argv)


class _StatusLines:
    """Shows each long step on stderr: a live spinner with the elapsed time on a terminal, else a line
    when it starts; a line with its time when it ends. A step inside another is shown as lines only."""

    def __init__(self) -> None:
        self._console: Any = None
        self._live = False

    @contextlib.contextmanager
    def __call__(self, text: str) -> Iterator[None]:
        import time

        from rich.markup import escape

        if self._console is None:
            self._console = _console(stderr=True)
        console = self._console
        start = time.perf_counter()
        if console.is_terminal and not self._live:
            self._live = True
            try:
                with console.status(escape(text) + " ..."):
                    yield
            finally:
                self._live = False
        else:
            console.print(escape(text) + " ...", soft_wrap=True)
            yield
        console.print(f"{escape(text)}: done in {time.perf_counter() - start:.1f} s", soft_wrap=True)


def _main(argv: Sequence[str] | None) -> int:
    args: argparse.Namespace | None = None
    try:
        words = list(sys.argv[1:] if argv is None else argv)
        passthrough: list[str] = []
        if "--" in words:  # only `serve` hands what follows to another program
            cut = words.index("--")
            words, passthrough = words[:cut], words[cut + 1:]
        args = _build_parser().parse_args(words)
        if passthrough and args.command != "serve":
            raise InvalidInput("command line", "--", f"provision {args.command} takes no arguments after --")
        args.passthrough = passthrough
        return _COMMANDS[args.command](args)
    except NoViablePlan as exc:
        if getattr(args, "json", False):
            _print_json(exc.to_dict())
        show_no_plan(exc, _console(stderr=True))
        return exc.exit_code
    except InvalidInput as exc:
        sys.stderr.write(f"error: {_one_line(str(exc))}\n")
        return exc.exit_code
    except ProvisionError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP (provision.common.interrupt)
        from provision.common.interrupt import exit_status

        sys.stderr.write("interrupted\n")
        return exit_status(exc)
    except SystemExit as exc:  # argparse --help / --version
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_BAD_INPUT
    except OSError as exc:  # a read or write no step expected to fail: a full disk, a permission, a device gone
        _debug_traceback()
        where = f"{exc.filename}: " if exc.filename is not None else ""
        sys.stderr.write(f"error: {_one_line(f'{where}{exc.strerror or exc}')}\n")
        return EXIT_FAILED
    except Exception as exc:  # a bug: one line, and the traceback only when asked for
        debug = _debug_traceback()
        hint = "" if debug else f" (rerun with {DEBUG_ENV}=1 for the traceback)"
        sys.stderr.write(f"error: internal: {type(exc).__name__}: {_one_line(str(exc))}{hint}\n")
        return EXIT_FAILED


#: Set (to anything but empty or 0) to see the traceback behind an ``error: internal:`` line.
DEBUG_ENV = "PROVISION_DEBUG"


def _debug_traceback() -> bool:
    """Print the traceback being handled when ``PROVISION_DEBUG`` asks for it; True if it did."""
    import os

    if os.environ.get(DEBUG_ENV, "") in ("", "0"):
        return False
    import traceback

    traceback.print_exc(file=sys.stderr)
    return True
