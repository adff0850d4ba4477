"""Check vLLM or SGLang server commands with the engine's own argument parser, on a CPU-only machine.

Runs inside a venv built from ``<engine>-<version>.txt`` beside this file (``nox -s engine_args`` builds
them): the engine wheel, a CPU torch and the small packages its parser imports; no GPU, no model.

    python check_argv.py --engine vllm -- vllm serve zai-org/AutoGLM-Phone-9B --max-model-len 25480 ...
    python check_argv.py --engine sglang --batch argvs.json     # a JSON list of argvs, "-" for stdin

An argv is a whole server command as ``provision plan --json`` writes it in ``serve.argv``
(``vllm serve MODEL ...``, ``python3 -m vllm.entrypoints.openai.api_server ...``,
``python3 -m sglang.launch_server ...``) or only the flags after the entrypoint. Each is taken
through what the entrypoint does before it loads anything:

  vLLM    ``vllm serve``: the ``vllm`` CLI parser with its ``serve`` subcommand (vllm/entrypoints/cli/main.py
          and cli/serve.py), the positional model copied to ``--model``, ``validate_parsed_serve_args``,
          then ``AsyncEngineArgs.from_cli_args``; the module form: the api_server's own parser instead.
  SGLang  ``sglang.srt.server_args.prepare_server_args``, which ``sglang.launch_server`` calls first (before
          ``ServerArgs.resolve_once`` exists, its steps without ``ServerArgs.__post_init__``, which asks the GPU).

Values that only the model's config or the GPU can judge (a context above the model's limit, a
tensor-parallel size that does not divide the heads, the quantization method) are not checked here.

Prints one JSON object on stdout: ``{"engine", "version", "ok", "error", "results": [{"argv", "ok",
"stage", "error", "values"}]}``; ``values`` are the parsed values under the plan's ``serve`` names.
Exit 0 when every argv is accepted, 1 when one is rejected, 3 when the engine does not import here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import re
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any, TextIO

#: The plan's ``serve`` field -> the attribute the engine parses it into (vLLM, SGLang).
FIELDS = {
    "served_model_name": ("served_model_name", "served_model_name"),
    "max_model_len": ("max_model_len", "context_length"),
    "gpu_memory_utilization": ("gpu_memory_utilization", "mem_fraction_static"),
    "tensor_parallel_size": ("tensor_parallel_size", "tp_size"),
    "quantization": ("quantization", "quantization"),
    "port": ("port", "port"),
}

#: Where ``make_arg_parser`` lives: openai.cli_args up to 0.28, launchers.cli_args 0.29-0.32, common.cli_args 0.33.
VLLM_CLI_ARGS = ("vllm.entrypoints.common.cli_args", "vllm.entrypoints.launchers.cli_args",
                 "vllm.entrypoints.openai.cli_args")

Check = Callable[[list[str]], dict[str, Any]]


class Rejected(Exception):
    """The engine refused the argv at ``stage``."""

    def __init__(self, stage: str, error: str) -> None:
        super().__init__(error)
        self.stage = stage


def _module_form(argv: list[str], module: str) -> bool:
    """``python[3[.X]] -m MODULE ...``."""
    return (len(argv) >= 3 and re.fullmatch(r"python(3(\.\d+)?)?", Path(argv[0]).name) is not None
            and argv[1:3] == ["-m", module])


def _parse(parse: Callable[[list[str]], Any], argv: list[str]) -> Any:
    """Run an argparse-based ``parse``; a usage error becomes ``Rejected("parse", <argparse's message>)``."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse(argv)
    except SystemExit as e:
        lines = [line.split(": error: ", 1)[1] for line in err.getvalue().splitlines() if ": error: " in line]
        message = lines[-1] if lines else err.getvalue().strip()[-500:] or f"exit {e.code}"
        raise Rejected("parse", re.sub(r" at 0x[0-9a-f]+", "", message)) from None  # "<function loads at 0x..>"
    except Exception as e:  # a type converter or a dataclass check that raises instead of calling parser.error
        raise Rejected("parse", f"{type(e).__name__}: {e}") from None


def _values(engine: str, *sources: object) -> dict[str, Any]:
    """The parsed values under the plan's names, from the first source that has each attribute."""
    col = 0 if engine == "vllm" else 1
    out: dict[str, Any] = {}
    for field, attrs in FIELDS.items():
        value = next((getattr(s, attrs[col]) for s in sources if hasattr(s, attrs[col])), None)
        if isinstance(value, list) and len(value) == 1:  # vLLM's --served-model-name takes several names
            value = value[0]
        out[field] = value
    return out


def vllm_check() -> Check:
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # else "Failed to infer device type" without a GPU
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    # HF_HUB_OFFLINE stays unset: with it, EngineArgs resolves a hub id through the local cache and fails.
    platforms = importlib.import_module("vllm.platforms")
    # 0.19.1 and 0.27.1 only detect CPU from a "+cpu" version: None there, or (0.27.1, already resolved
    # while vllm imports) the UnspecifiedPlatform, which has no device type.
    current = getattr(platforms, "_current_platform", None)
    if current is None or not getattr(current, "device_type", ""):
        platforms.__dict__["_current_platform"] = importlib.import_module("vllm.platforms.cpu").CpuPlatform()
    flexible = importlib.import_module("vllm.utils.argparse_utils").FlexibleArgumentParser
    engine_args = importlib.import_module("vllm.engine.arg_utils").AsyncEngineArgs
    cli_args = None
    for name in VLLM_CLI_ARGS:
        try:
            cli_args = importlib.import_module(name)
            break
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise  # a missing dependency, not this release's module path
    if cli_args is None:
        raise ImportError(f"no make_arg_parser in {', '.join(VLLM_CLI_ARGS)}")

    def check(argv: list[str]) -> dict[str, Any]:
        if argv[:2] == ["vllm", "serve"]:
            cli = flexible(description="vLLM CLI")
            serve = cli.add_subparsers(required=False, dest="subparser").add_parser(
                "serve", usage="vllm serve [model_tag] [options]")
            cli_args.make_arg_parser(serve)
            args = _parse(cli.parse_args, ["serve", *argv[2:]])
        elif argv[:1] and (argv[0].startswith("-") or _module_form(argv, "vllm.entrypoints.openai.api_server")):
            parser = cli_args.make_arg_parser(flexible(description="vLLM OpenAI-Compatible RESTful API server."))
            args = _parse(parser.parse_args, argv if argv[0].startswith("-") else argv[3:])
        else:
            raise Rejected("entrypoint", "not `vllm serve` nor `python -m vllm.entrypoints.openai.api_server`")
        if getattr(args, "model_tag", None) is not None:
            args.model = args.model_tag  # what `vllm serve MODEL` does (entrypoints/cli/serve.py)
        try:
            cli_args.validate_parsed_serve_args(args)
            parsed = engine_args.from_cli_args(args)
        except Exception as e:
            raise Rejected("validate", f"{type(e).__name__}: {e}") from None
        return _values("vllm", parsed, args)

    return check


def sglang_check() -> Check:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing before resolve_once() needs the hub
    module = importlib.import_module("sglang.srt.server_args")
    parse: Callable[[list[str]], Any] = module.prepare_server_args
    if not hasattr(module.ServerArgs, "resolve_once"):
        # Before resolve_once (0.5.10.post1), ServerArgs.__post_init__ resolves the device, its memory and the
        # model's config, which a CPU-only machine without the model cannot: take prepare_server_args' own steps
        # (this release's parser, then its from_cli_args) with only that resolution left out.
        class Unresolved(module.ServerArgs):  # type: ignore[misc,name-defined]
            def __post_init__(self) -> None:
                pass

        def parse(flags: list[str]) -> Any:
            parser = argparse.ArgumentParser(prog="sglang serve")
            module.ServerArgs.add_cli_args(parser)
            return Unresolved.from_cli_args(parser.parse_args(flags))

    def check(argv: list[str]) -> dict[str, Any]:
        if argv[:1] and argv[0].startswith("-"):
            flags = argv
        elif _module_form(argv, "sglang.launch_server"):
            flags = argv[3:]
        else:
            raise Rejected("entrypoint", "not `python -m sglang.launch_server`")
        return _values("sglang", _parse(parse, flags))

    return check


CHECKS: dict[str, Callable[[], Check]] = {"vllm": vllm_check, "sglang": sglang_check}


def _argvs(ns: argparse.Namespace) -> list[list[str]]:
    if ns.batch is None:
        return [ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv]
    text = sys.stdin.read() if ns.batch == "-" else Path(ns.batch).read_text(encoding="utf-8")
    argvs = json.loads(text)
    if not (isinstance(argvs, list) and all(isinstance(a, list) and all(isinstance(s, str) for s in a) for a in argvs)):
        raise SystemExit(f"{ns.batch}: expected a JSON list of argvs (lists of strings)")
    return argvs


def run(engine: str, argvs: list[list[str]]) -> tuple[int, dict[str, Any]]:
    report: dict[str, Any] = {"engine": engine, "version": None, "ok": False, "error": None, "results": []}
    try:
        report["version"] = version(engine)
        check = CHECKS[engine]()
    except Exception as e:  # the environment, not the argv
        report["error"] = f"{type(e).__name__}: {e}"
        return 3, report
    for argv in argvs:
        result: dict[str, Any] = {"argv": argv, "ok": True, "stage": None, "error": None, "values": None}
        try:
            result["values"] = check(argv)
        except Rejected as e:
            result.update(ok=False, stage=e.stage, error=str(e))
        report["results"].append(result)
    report["ok"] = all(r["ok"] for r in report["results"])
    return (0 if report["ok"] else 1), report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--engine", choices=sorted(CHECKS), required=True)
    parser.add_argument("--batch", metavar="FILE", help="a JSON list of argvs to check ('-': stdin)")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- then one server command")
    ns = parser.parse_args()
    argvs = _argvs(ns)
    # Engines print and log while importing and parsing: keep fd 1 for the JSON alone.
    out: TextIO = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    code, report = run(ns.engine, argvs)
    json.dump(report, out, indent=1, default=str)
    out.write("\n")
    out.flush()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
