"""GPU proof: the full-size model, random weights, every precision, next to the estimator.

    python benchmarks/gpu_smoke.py --out DIR [--model autoglm-phone-9b] [--precisions bf16,fp16,int8,nf4]
                                   [--contexts 0,4096] [--new-tokens 64] [--workdir /tmp/gpu-smoke]

1. Writes the full-size architecture with random bf16 weights once (``provision.smoke.tiny.build_synthetic``,
   in a child process so this one never holds a CUDA context).
2. For each precision and context, a fresh process runs ``provision.smoke.run.run_smoke`` on that folder
   (the same ``from_pretrained`` path as real weights): load time, torch allocated after load,
   peak allocated during ``generate``, NVML device-used delta, decode tok/s, roofline fraction.
   Context 0 means the short chat prompt.
3. Puts each figure next to ``provision.plan.memory``'s estimate and writes ``gpu_smoke.json`` and
   ``gpu_smoke.md`` under ``--out``; deletes the random checkpoint at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Datasheet memory bandwidth (bytes/s) by device name, for the spec roofline column.
SPEC_BANDWIDTH = {
    "NVIDIA H100 80GB HBM3": 3.35e12,  # H100 SXM5
    "NVIDIA H100 PCIe": 2.0e12,
    "NVIDIA H100 NVL": 3.9e12,
    "NVIDIA H200": 4.8e12,
    "NVIDIA A100-SXM4-80GB": 2.039e12,
    "NVIDIA A100-SXM4-40GB": 1.555e12,
    "NVIDIA A100 80GB PCIe": 1.935e12,
    "NVIDIA L40S": 0.864e12,
    "NVIDIA A10G": 0.6e12,
}


def _spec(model_id: str):  # -> ModelSpec, imported lazily
    from provision.common.resources import data_dir
    from provision.data import load_catalog, resolve_model

    return resolve_model(model_id, load_catalog(data_dir("matrices") / "models.toml"))


def _child_build(args: argparse.Namespace) -> int:
    from provision.smoke.tiny import build_synthetic

    spec = _spec(args.model)
    start = time.perf_counter()
    path = build_synthetic(spec.config, model_id=spec.id, root=Path(args.workdir), init_device="cuda")
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(json.dumps({"path": str(path), "seconds": time.perf_counter() - start, "bytes": size}))
    return 0


def _child_run(args: argparse.Namespace) -> int:
    from provision.smoke.run import run_smoke

    spec = _spec(args.model)
    report = run_smoke(
        model=spec,
        model_path=Path(args.model_path),
        precision=args.precision,
        device=args.device,
        gpus=[0] if args.device == "cuda" else [],
        context_tokens=args.context or None,
        new_tokens=args.new_tokens,
        measure_bandwidth=args.device == "cuda",
        image=not args.no_image,
    )
    Path(args.json_out).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0


def _pct(est: float | None, measured: float | None) -> float | None:
    if est is None or not measured:
        return None
    return 100.0 * (est - measured) / measured


def _row(report: dict, spec_bw: float | None) -> dict:
    est = report.get("estimate") or {}
    roof = report.get("roofline") or {}
    achieved = roof.get("achieved_bytes_per_second")
    return {
        "precision": report["precision"],
        "context": report["context_tokens"],
        "prompt_tokens": report["prompt_tokens"],
        "load_s": report["load_seconds"],
        "weights_measured": report.get("weights_bytes"),
        "weights_estimated": est.get("weights"),
        "weights_err_pct": _pct(est.get("weights"), report.get("weights_bytes")),
        "generate_peak_measured": report.get("generate_peak_bytes"),
        "peak_allocated_estimated": est.get("peak_allocated"),
        "peak_err_pct": _pct(est.get("peak_allocated"), report.get("generate_peak_bytes")),
        "peak_memory_bytes": report["peak_memory_bytes"],
        "reserved_peak": report.get("reserved_peak_bytes"),
        "nvml_delta": report.get("nvml_used_delta_bytes"),
        "total_estimated": est.get("total"),
        "total_minus_peak": (est["total"] - report["generate_peak_bytes"])
        if est.get("total") and report.get("generate_peak_bytes")
        else None,
        "total_minus_nvml": (est["total"] - report["nvml_used_delta_bytes"])
        if est.get("total") and report.get("nvml_used_delta_bytes")
        else None,
        "tokens_generated": report["tokens_generated"],
        "tok_s": report["tokens_per_second"],
        "bytes_per_token": roof.get("bytes_per_token"),
        "roofline_copy": roof.get("fraction_of_copy_bandwidth"),
        "copy_bw": roof.get("copy_bandwidth_bytes_per_second"),
        "roofline_spec": achieved / spec_bw if achieved and spec_bw else None,
        "image_tokens": (report.get("image") or {}).get("image_tokens"),
        "image_generated": (report.get("image") or {}).get("tokens_generated"),
    }


def _gb(v: float | None) -> str:
    return "-" if v is None else f"{v / 1e9:.2f}"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _markdown(rows: list[dict], meta: dict) -> str:
    head = (
        "| precision | context (prompt+new) | load s | weights measured GB | weights est. GB | err % "
        "| generate peak GB | est. peak_allocated GB | err % | NVML delta GB | est. total GB "
        "| total - peak GB | decode tok/s | roofline (copy bw) | roofline (spec bw) |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        lines.append(
            f"| {r['precision']} | {r['context']} ({r['prompt_tokens']}+{r['tokens_generated']}) "
            f"| {r['load_s']:.1f} | {_gb(r['weights_measured'])} | {_gb(r['weights_estimated'])} "
            f"| {_fmt(r['weights_err_pct'], '+.2f')} | {_gb(r['generate_peak_measured'])} "
            f"| {_gb(r['peak_allocated_estimated'])} | {_fmt(r['peak_err_pct'], '+.2f')} "
            f"| {_gb(r['nvml_delta'])} | {_gb(r['total_estimated'])} | {_gb(r['total_minus_peak'])} "
            f"| {_fmt(r['tok_s'], '.1f')} | {_fmt(r['roofline_copy'], '.1%')} | {_fmt(r['roofline_spec'], '.1%')} |"
        )
    info = ", ".join(f"{k} {v}" for k, v in meta.items() if not isinstance(v, dict))
    return "\n".join([info, "", *lines, ""])


def _parent(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    me = [sys.executable, str(Path(__file__).resolve())]
    if args.reuse:  # an existing folder (e.g. a tiny build for a dry run on CPU); kept afterwards
        synthetic = {"path": args.reuse, "seconds": 0.0, "keep": True,
                     "bytes": sum(f.stat().st_size for f in Path(args.reuse).iterdir() if f.is_file())}  # fmt: skip
    else:
        built = subprocess.run([*me, "--child-build", "--model", args.model, "--workdir", str(workdir)], env=env,
                               check=False, capture_output=True, text=True)  # fmt: skip
        if built.returncode != 0:
            print(f"building the synthetic checkpoint failed:\n{built.stderr[-3000:]}", flush=True)
            return 1
        synthetic = json.loads(built.stdout.strip().splitlines()[-1])
    print(f"synthetic checkpoint: {synthetic['bytes'] / 1e9:.2f} GB written in {synthetic['seconds']:.1f} s",
          flush=True)  # fmt: skip
    name = _device_name() if args.device == "cuda" else args.device
    spec_bw = SPEC_BANDWIDTH.get(name)
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": name,
        "spec_bandwidth_TBps": spec_bw / 1e12 if spec_bw else None,
        "synthetic_checkpoint_GB": round(synthetic["bytes"] / 1e9, 2),
        "synthetic_write_s": round(synthetic["seconds"], 1),
        "new_tokens": args.new_tokens,
    }
    reports: list[dict] = []
    failures: list[dict] = []
    try:
        for precision in args.precisions.split(","):
            for context in (int(c) for c in args.contexts.split(",")):
                dest = out / f"smoke-{precision}-{context}.json"
                argv = [*me, "--child-run", "--model", args.model, "--model-path", synthetic["path"],
                        "--precision", precision, "--context", str(context), "--new-tokens", str(args.new_tokens),
                        "--device", args.device, "--json-out", str(dest)]  # fmt: skip
                if context:  # the image prompt runs with the short prompt only
                    argv.append("--no-image")
                proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    failures.append({"precision": precision, "context": context, "stderr": proc.stderr[-3000:]})
                    print(f"FAILED {precision} {context}:\n{proc.stderr[-1500:]}", flush=True)
                    continue
                reports.append(json.loads(dest.read_text()))
                dest.unlink()
                _write(out, meta, reports, failures, spec_bw)  # after each run: a timeout keeps what was done
                print(f"done {precision} context {context}", flush=True)
    finally:
        if not synthetic.get("keep"):
            shutil.rmtree(synthetic["path"], ignore_errors=True)
    print(_write(out, meta, reports, failures, spec_bw))
    return 1 if failures else 0


def _device_name() -> str:
    """GPU 0's name through NVML, so this parent process never creates a CUDA context."""
    import pynvml

    pynvml.nvmlInit()
    try:
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        return name.decode() if isinstance(name, bytes) else str(name)
    finally:
        pynvml.nvmlShutdown()


def _write(out: Path, meta: dict, reports: list[dict], failures: list[dict], spec_bw: float | None) -> str:
    rows = [_row(r, spec_bw) for r in reports]
    versions = reports[0].get("versions", {}) if reports else {}
    doc = {"meta": {**meta, "versions": versions}, "rows": rows, "reports": reports, "failures": failures}
    (out / "gpu_smoke.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = _markdown(rows, meta) + "\nversions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "\n"
    (out / "gpu_smoke.md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu-smoke-out")
    p.add_argument("--model", default="autoglm-phone-9b")
    p.add_argument("--precisions", default="bf16,fp16,int8,nf4")
    p.add_argument("--contexts", default="0,4096", help="0 = the short chat prompt")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "gpu-smoke"))
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--reuse", help="measure this model folder instead of writing a synthetic one")
    p.add_argument("--child-build", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--context", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--json-out", help=argparse.SUPPRESS)
    p.add_argument("--no-image", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_build:
        return _child_build(args)
    if args.child_run:
        return _child_run(args)
    return _parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
