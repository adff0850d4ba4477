"""Resolve every reference host's serving-engine pins with ``uv pip compile`` against the real index.

The planner picks an engine release, its exact torch pin, a transformers inside the engine's range
(and at or above the model's minimum) and, for in-flight 4-bit, bitsandbytes. This script asks the
real resolver whether those pins install together for the host's Python and platform (uv reads
package metadata only; no wheel is downloaded), and prints one line per host:

    python scripts/resolve_engines.py [--hosts tests/fixtures/hosts] [--model autoglm-phone-9b]

Exit 0 when every engine plan resolves, 1 otherwise. Hosts no engine serves are listed with why.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provision.data import load_catalog, load_matrix, resolve_model  # noqa: E402
from provision.host import load_host  # noqa: E402
from provision.plan.engine import EngineChoice, EngineSearch, choose_engine  # noqa: E402
from provision.plan.engine_memory import Workload  # noqa: E402


def requirements(choice: EngineChoice) -> list[str]:
    """The pins an engine plan installs: the engine, its torch, transformers, and what its precision needs."""
    release = choice.release
    lines = [f"{choice.engine.package}=={release.version}", f"torch=={release.torch}",
             f"transformers=={choice.transformers}"]
    if release.torchvision is not None:
        lines.append(f"torchvision=={release.torchvision}")
    if choice.quantization is not None and choice.quantization.requires is not None:
        lines.append(str(choice.quantization.requires))
    return lines


def compile_pins(lines: list[str], python: str, platform: str) -> tuple[bool, str]:
    """``uv pip compile`` the pins for ``python`` on ``platform``; (resolved, summary)."""
    uv = shutil.which("uv")
    if uv is None:
        return False, "uv not found on PATH"
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.in"
        req.write_text("\n".join(lines) + "\n", encoding="utf-8")
        out = Path(tmp) / "requirements.txt"
        proc = subprocess.run([uv, "pip", "compile", str(req), "--python-version", python, "--python-platform",
                               platform, "--no-header", "-q", "-o", str(out)],
                              capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            last = [line for line in proc.stderr.splitlines() if line.strip()]
            return False, last[-1] if last else f"uv exited {proc.returncode}"
        pins = [line for line in out.read_text(encoding="utf-8").splitlines() if "==" in line and not line.startswith(" ")]
        return True, f"{len(pins)} packages resolved"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=Path, default=ROOT / "tests" / "fixtures" / "hosts")
    parser.add_argument("--model", default="autoglm-phone-9b")
    args = parser.parse_args()
    matrix = load_matrix()
    model = resolve_model(args.model, load_catalog(matrix.catalog_path))
    if model.serve is None:
        print(f"{args.model}: the catalog has no serving workload for it", file=sys.stderr)
        return 2
    workload = Workload(max_model_len=model.serve.context, images_per_prompt=model.serve.images_per_prompt,
                        max_pixels=model.serve.max_pixels)
    failures = 0
    for path in sorted(args.hosts.glob("*.json")):
        host = load_host(path)
        search = EngineSearch()
        choice = choose_engine(host, matrix, model, matrix.engines.engines, python=host.python_minor,
                               workload=workload, search=search)
        if choice is None:
            why = " | ".join(t for t in (search.explain(e) for e in matrix.engines.engines) if t)
            print(f"{path.stem:40s} transformers serve  ({why})")
            continue
        lines = requirements(choice)
        arch = host.platform.split("-", 1)[1]
        ok, summary = compile_pins(lines, host.python_minor, f"{arch}-manylinux_{choice.release.glibc}".replace(".", "_"))
        failures += not ok
        print(f"{path.stem:40s} {'ok  ' if ok else 'FAIL'} {' '.join(lines)}  [{choice.precision}, TP "
              f"{choice.tensor_parallel_size}, {choice.max_model_len} tokens]  {summary}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
