"""The command line: parse options, call the library, print, map errors to exit codes.

This is the only module that prints or exits. ``--json`` writes exactly one JSON
document to stdout; human text goes to stderr when JSON is requested.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from provision.display import show_host, show_no_plan, show_plan, show_smoke
from provision.errors import EXIT_BAD_INPUT, InvalidInput, NoViablePlan, ProvisionError
from provision.vocab import (
    DEFAULT_CONTEXT,
    DEVICE_CHOICES,
    DEVICES,
    PRECISIONS,
    PYTORCH_INDEX,
    RENDER_SCHEMA,
    is_buildable_variant,
)

if TYPE_CHECKING:
    from provision.common.net import IndexProbe
    from provision.data.catalog import ModelSpec
    from provision.data.matrix import Matrix
    from provision.host.profile import HostProfile
    from provision.plan.search import Plan

__all__ = ["main"]



class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is the contract's one-line exit-2 error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InvalidInput("command line", "options", message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError(f"{value} is out of range [1, 10000000]")
    return value


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", type=Path, help="plan for the machine this host profile describes")
    p.add_argument("--model", default=None, help="catalog id or local directory with config.json")
    p.add_argument("--python", help="Python X.Y the environment is built with (default: the host's)")
    p.add_argument("--context", type=_positive_int, default=DEFAULT_CONTEXT, help="tokens to budget for")
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--torch", dest="torch_version", help="pin this torch release")
    p.add_argument("--variant", help="pin this PyTorch index variant (cpu, cu126, cu128, ...)")
    p.add_argument("--wheelhouse", action="append", metavar="DIR",
                   help="take torch from wheels in DIR (repeatable; env PROVISION_WHEELHOUSE); 'auto' uses "
                        "pip's find-links folders when the PyTorch index is unreachable")
    p.add_argument("--index-url", help="mirror of the PyTorch index to install torch from (env PROVISION_INDEX_URL)")
    p.add_argument("--matrix", type=Path, help="read the matrices from this folder instead of the bundled ones")


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

    p = sub.add_parser("detect", help="describe this machine as a host profile")
    p.add_argument("--json", action="store_true")
    p.add_argument("-o", "--output", type=Path, help="also write the profile to FILE")

    p = sub.add_parser("plan", help="choose torch, CUDA variant, precision and placement")
    _add_plan_options(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("render", help="write the environment files for a plan")
    _add_plan_options(p)
    p.add_argument("--plan", dest="plan_file", type=Path, help="render this plan JSON instead of planning")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--force", action="store_true", help="overwrite files edited since the last render")
    p.add_argument("--no-resolve", action="store_true", help="do not run a resolver for hashes")
    p.add_argument("--gpu-runner", action="append", metavar="LABEL",
                   help="runs-on label for the CI workflow's GPU jobs (repeatable; default: self-hosted linux gpu)")
    p.add_argument("--cpu-runner", action="append", metavar="LABEL",
                   help="runs-on label for the CI workflow's CPU job (repeatable; default: ubuntu-22.04)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("smoke", help="load the model in this environment and generate")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-path", type=Path)
    src.add_argument("--tiny", action="store_true")
    src.add_argument("--synthetic", action="store_true")
    p.add_argument("--model", default=None)
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--lock", type=Path, help="take model, precision and placement from this provision.lock.json")
    p.add_argument("--context", type=_positive_int, default=None)
    p.add_argument("--new-tokens", type=_positive_int, default=16)
    p.add_argument("-o", "--output", type=Path, help="also write the report to FILE")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("doctor", help="diagnose this environment against the machine and the model")
    p.add_argument("--model", default=None)
    p.add_argument("--lock", type=Path)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("build", help="build the venv for a rendered folder and run the smoke test in it")
    p.add_argument("out", type=Path, help="a folder written by provision render")
    p.add_argument("--no-smoke", action="store_true")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("matrix", help="inspect or refresh the compatibility matrices")
    msub = p.add_subparsers(dest="matrix_command", required=True, parser_class=_Parser)
    r = msub.add_parser("refresh", help="rebuild torch rows from the PyTorch wheel index")
    r.add_argument("--matrix", type=Path)
    r.add_argument("--write", action="store_true", help="write the change (default: show the diff only)")
    r.add_argument("--variant", action="append", help="variants to fetch (default: those in the matrix)")
    return parser


# ---------------------------------------------------------------------------
# Shared steps


def _load_inputs(args: argparse.Namespace, model_id: str | None = None) -> tuple[HostProfile, Matrix, ModelSpec]:
    """Host, matrix and model: ``model_id`` (a plan's) wins over ``--model``, then the catalog default."""
    from provision.data.catalog import load_catalog, resolve_model
    from provision.data.matrix import load_matrix

    matrix = load_matrix(args.matrix)
    catalog = load_catalog(matrix.catalog_path)
    if model_id is None:
        model_id = catalog.default.id if args.model is None else args.model
    model = resolve_model(model_id, catalog)
    return _host(args), matrix, model


def _host(args: argparse.Namespace) -> HostProfile:
    """The ``--host`` profile, else this machine."""
    if args.host is not None:
        from provision.host.profile import load_host

        return load_host(args.host)
    from provision.host.detect import detect_host

    return detect_host()


def _wheelhouses(args: argparse.Namespace, index_url: str | None, probe: IndexProbe) -> tuple[Path, ...]:
    """The wheel folders to take torch from; ``auto`` asks ``probe`` about ``index_url`` (else the PyTorch index)."""
    from provision.render.sources import resolve_wheelhouses

    index = index_url or PYTORCH_INDEX
    return resolve_wheelhouses(args.wheelhouse, os.environ, index_reachable=lambda: probe.reachable(index))


def _preferences(args: argparse.Namespace, host: HostProfile, wheelhouses: tuple[Path, ...]) -> Any:
    import re

    from packaging.version import InvalidVersion, Version

    from provision.plan.search import Preferences
    from provision.render.sources import torch_builds

    python = args.python
    if python is not None and not re.fullmatch(r"^3\.\d{1,2}$", python):
        raise InvalidInput("--python", "python", f"{python!r} is not a Python version like '3.11'")
    torch_version = None
    if args.torch_version:
        try:
            torch_version = Version(args.torch_version)
        except InvalidVersion:
            raise InvalidInput("--torch", "torch", f"{args.torch_version!r} is not a version") from None
    available = None
    if wheelhouses:
        available = torch_builds(wheelhouses, python=python or host.python_minor, platform=host.platform)
    variant = args.variant
    if variant is not None and not is_buildable_variant(variant):
        raise InvalidInput("--variant", "variant", f"{variant!r} is not a variant like 'cu128' or 'cpu'")
    return Preferences(python=python, context_tokens=args.context, precision=args.precision, device=args.device,
                       torch_version=torch_version, variant=variant, torch_available=available)


def _make_plan(args: argparse.Namespace) -> tuple[HostProfile, Matrix, ModelSpec, Plan]:
    from provision.common.net import IndexProbe
    from provision.plan.search import plan
    from provision.render.sources import resolve_index_url

    host, matrix, model = _load_inputs(args)
    wheelhouse = _wheelhouses(args, resolve_index_url(getattr(args, "index_url", None), os.environ), IndexProbe())
    return host, matrix, model, plan(host, matrix, model, _preferences(args, host, wheelhouse))


def _print_json(doc: object) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _console(stderr: bool) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


# ---------------------------------------------------------------------------
# Commands


def _cmd_detect(args: argparse.Namespace) -> int:
    from provision.host.detect import detect_host

    host = detect_host()
    doc = host.to_dict()
    text = json.dumps(doc, indent=2) + "\n"
    if args.output:
        from provision.common.atomic import write_atomic

        write_atomic(args.output, text)
    if args.json:
        sys.stdout.write(text)
    else:
        show_host(host, _console(stderr=False))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    _host, _matrix, _model, plan = _make_plan(args)  # no plan: main() reports it, exit 3
    if args.json:
        _print_json(plan.to_dict())
    else:
        show_plan(plan, _console(stderr=False))
    return 0


_COMMANDS = {
    "detect": "_cmd_detect",
    "plan": "_cmd_plan",
    "render": "_cmd_render",
    "smoke": "_cmd_smoke",
    "doctor": "_cmd_doctor",
    "build": "_cmd_build",
    "matrix": "_cmd_matrix",
}


def _one_line(text: str) -> str:
    """Escape anything that could break the contract's single ``error:`` line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from provision.display import show_findings
    from provision.doctor.report import DoctorReport
    from provision.doctor.run import run_doctor

    report = DoctorReport(findings=tuple(run_doctor(model_id=args.model, lock_path=args.lock)))
    if args.json:
        _print_json(report.to_dict())
    else:
        show_findings(report, _console(stderr=False))
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the only place that turns errors into exit codes."""
    try:
        args = _build_parser().parse_args(argv)
        return int(globals()[_COMMANDS[args.command]](args))
    except NoViablePlan as exc:
        if getattr(locals().get("args"), "json", False):
            _print_json(exc.to_dict())
        show_no_plan(exc, _console(stderr=True))
        return exc.exit_code
    except InvalidInput as exc:
        sys.stderr.write(f"error: {_one_line(str(exc))}\n")
        return exc.exit_code
    except ProvisionError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except SystemExit as exc:  # argparse --help / --version
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_BAD_INPUT


def _read_plan_file(path: Path) -> dict[str, Any]:
    from provision.common.fields import read_json_file
    from provision.render.files import validate_plan

    doc = read_json_file(path)
    validate_plan(doc, source=str(path))
    return dict(doc)


class _RunnerLabels(TypedDict, total=False):
    """The ``--gpu-runner``/``--cpu-runner`` overrides; absent keys keep ``RenderInputs``' defaults."""

    gpu_runner_labels: tuple[str, ...]
    cpu_runner_labels: tuple[str, ...]


def _cmd_render(args: argparse.Namespace) -> int:
    """Plan (or read ``--plan``), resolve hashes, render every file, write them atomically."""
    from provision.build import source_root
    from provision.common.net import IndexProbe
    from provision.common.quoting import check_label
    from provision.render.files import RenderInputs, render_files, write_rendered
    from provision.render.requirements import resolve, resolve_request
    from provision.render.sources import resolve_index_url

    probe = IndexProbe()  # one per command: the wheel folders and the resolver share its answers
    index_url = resolve_index_url(args.index_url, os.environ)
    for option in ("gpu_runner", "cpu_runner"):  # checked before any planning or resolving
        for label in getattr(args, option) or ():
            check_label(label, source=f"--{option.replace('_', '-')}", field="label")
    if args.plan_file is not None:
        plan_doc = _read_plan_file(args.plan_file)
        host, matrix, model = _load_inputs(args, plan_doc["model"]["id"])
        variants: tuple[Mapping[str, Any], ...] = ()
        wheelhouse = _wheelhouses(args, index_url, probe)
    else:
        host, matrix, model = _load_inputs(args)
        wheelhouse = _wheelhouses(args, index_url, probe)
        prefs = _preferences(args, host, wheelhouse)
        from provision.plan.search import plan, sibling_variants

        chosen = plan(host, matrix, model, prefs)
        plan_doc = chosen.to_dict()
        variants = tuple(sibling_variants(host, matrix, model, prefs, chosen))
    host_doc = host.to_dict()
    hashes = None
    if not args.no_resolve:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "provision" / "resolve"
        request = resolve_request(plan_doc, host_doc, wheelhouse=[str(w) for w in wheelhouse], index_url=index_url)
        hashes = resolve(request, cache_dir=cache, probe=probe)
    root = source_root()
    out = args.out.resolve()
    docker_dir = os.path.relpath(out, root) if root is not None and out.is_relative_to(root) else "."
    flags = {k: v for k, v in sorted(vars(args).items())
             if k in ("model", "python", "context", "precision", "device", "torch_version", "variant")
             and v is not None}
    runner_labels: _RunnerLabels = {}
    if args.gpu_runner:
        runner_labels["gpu_runner_labels"] = tuple(args.gpu_runner)
    if args.cpu_runner:
        runner_labels["cpu_runner_labels"] = tuple(args.cpu_runner)
    inputs = RenderInputs(
        plan=plan_doc, host=host_doc, model=model.id, context=args.context, flags=flags,
        matrix_digest=matrix.digest, variants=variants, wheelhouse=tuple(str(w) for w in wheelhouse),
        index_url=index_url, hashes=hashes, toolkit_source=str(root) if root else None,
        docker_env_dir=docker_dir, **runner_labels,
    )
    files = render_files(inputs)
    changed = write_rendered(out, files, force=args.force)
    if args.json:
        _print_json({"schema": RENDER_SCHEMA, "out": str(out), "files": sorted(files), "changed": changed,
                     "hashes": hashes.status if hashes else "none", "plan": plan_doc})
    else:
        err = _console(stderr=True)
        if args.plan_file is None:
            show_plan(chosen, err)
        state = hashes.status if hashes else "none (--no-resolve)"
        err.print(f"rendered {len(files)} files into {out} ({len(changed)} changed); hashes: {state}")
        if hashes is not None and hashes.status != "complete":
            for reason in hashes.reasons:
                err.print(f"  - {reason}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from provision.build import build_environment, source_root

    result = build_environment(args.out, smoke=not args.no_smoke, toolkit_source=source_root(),
                               echo=sys.stderr.write)
    if args.json:
        _print_json(result.to_dict())
        return 0
    err = _console(stderr=True)
    err.print(f"environment {'reused' if result.reused else 'built'}: {result.venv} ({result.seconds:.1f} s)")
    if result.smoke is not None:
        err.print(f"smoke report: {args.out / 'smoke.json'}")
    return 0


def _smoke_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What to smoke-test: the lock's plan (model, precision, placement), overridden by options."""
    import re

    from provision.common.fields import Fields
    from provision.render.lock import read_lock

    settings: dict[str, Any] = {"model": args.model, "precision": args.precision, "device": None, "gpus": (),
                                "max_memory": None, "device_map": None}
    if args.lock is not None:
        lock = read_lock(args.lock)
        if lock is None:
            raise InvalidInput(str(args.lock), "(file)", "no such file")
        from provision.render.files import validate_plan

        validate_plan(lock.get("plan"), source=str(args.lock), prefix="plan")
        plan = Fields(lock.get("plan"), str(args.lock), "plan")
        model = plan.obj("model")
        assert model is not None
        settings["model"] = settings["model"] or model.str("id")
        settings["precision"] = settings["precision"] or plan.choice("precision", PRECISIONS)
        settings["device"] = plan.choice("device", DEVICES)
        gpus = plan.list("gpus", required=False)
        for i, gpu in enumerate(gpus):
            if not isinstance(gpu, int) or isinstance(gpu, bool) or not 0 <= gpu < 64:
                raise InvalidInput(str(args.lock), f"plan.gpus[{i}]", "expected a GPU index 0-63")
        settings["gpus"] = tuple(gpus)
        memory = plan.obj("memory", required=False)
        limits = memory.obj("max_memory", required=False) if memory is not None else None
        if limits is not None:
            settings["max_memory"] = {
                key: limits.int(key, minimum=1) for key in limits.data if re.fullmatch(r"\d{1,2}|cpu", key)
            }
            if len(settings["max_memory"]) != len(limits.data):
                raise InvalidInput(str(args.lock), "plan.memory.max_memory", "keys must be GPU indices or 'cpu'")
        placed = memory.obj("device_map", required=False) if memory is not None else None
        if placed is not None:
            settings["device_map"] = {}
            for key in placed.data:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key):
                    raise placed.fail(key, "is not a module name")
                settings["device_map"][key] = placed.int(key, maximum=63)
    return settings


def _cmd_smoke(args: argparse.Namespace) -> int:
    from provision.data.catalog import load_catalog, resolve_model
    from provision.smoke.run import run_smoke

    settings = _smoke_settings(args)
    catalog = load_catalog()
    model_path = args.model_path or (Path(os.environ["PROVISION_MODEL_PATH"])
                                     if os.environ.get("PROVISION_MODEL_PATH") else None)
    if model_path is not None and not (model_path / "config.json").is_file():
        raise InvalidInput("--model-path", str(model_path), "no config.json in this directory")
    spec = resolve_model(catalog.default.id if settings["model"] is None else settings["model"], catalog)
    source = "tiny" if args.tiny else "synthetic" if args.synthetic else "weights" if model_path else "auto"
    report = run_smoke(model=spec, model_path=model_path, source=source, precision=settings["precision"],
                       device=settings["device"], gpus=settings["gpus"], max_memory=settings["max_memory"],
                       device_map=settings["device_map"],
                       context_tokens=args.context, new_tokens=args.new_tokens)
    doc = report.to_dict()
    if args.output:
        from provision.common.atomic import write_atomic

        write_atomic(args.output, json.dumps(doc, indent=2) + "\n")
    if args.json:
        _print_json(doc)
    show_smoke(report, _console(stderr=args.json))
    return 0


def _cmd_matrix(args: argparse.Namespace) -> int:
    """``matrix refresh``: rebuild torch rows from the PyTorch index; show the diff, write on --write."""
    from provision.common.atomic import write_atomic
    from provision.data.matrix import load_matrix
    from provision.data.refresh import refresh_torch

    matrix = load_matrix(args.matrix)
    path = matrix.root / "torch.toml"
    variants = args.variant or sorted({v.name for r in matrix.torch for v in r.variants})
    result = refresh_torch(path, variants, min_version="2.2")
    if not result.changed:
        sys.stderr.write(f"{path}: up to date with the PyTorch index ({', '.join(variants)})\n")
        return 0
    sys.stdout.write(result.diff)
    if args.write:
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # the refreshed data must validate before it lands
            trial = Path(tmp) / "matrices"
            shutil.copytree(matrix.root, trial)
            (trial / "torch.toml").write_text(result.new_text, encoding="utf-8")
            try:
                load_matrix(trial)
            except InvalidInput as exc:
                raise ProvisionError(
                    f"not written: the refreshed torch.toml needs facts only a person can add ({exc.field}: "
                    f"{exc.problem}); apply the diff above and fill in archs, date and torchvision by hand"
                ) from None
        write_atomic(path, result.new_text)
        sys.stderr.write(f"wrote {path}\n")
    else:
        sys.stderr.write("dry run: pass --write to apply this change\n")
    return 0
