"""The served path on a GPU: ``transformers serve`` of the full-size architecture, proven and loaded.

    python benchmarks/gpu_serve.py --out DIR [--modes eager,cb] [--single-tokens 256] [--probe-tokens 128]
                                   [--probes 1:8,4:16,8:16] [--cb-probes 8:16]
                                   [--workdir /tmp/gpu-serve] [--deadline 560] [--keep]
    python benchmarks/gpu_serve.py --out DIR --tiny --device cpu     # a dry run: the tiny stand-in on the CPU
    python benchmarks/gpu_serve.py --report DIR/gpu-serve.json       # the Markdown tables of a run

1. A child process writes the full-size ``autoglm-phone-9b`` architecture with random bf16 weights
   (``provision.smoke.tiny.build_synthetic``; reused from ``--workdir`` when an earlier call left it), reads the
   stack's versions and measures the device-to-device copy bandwidth (``provision.smoke.measure``).
2. For each mode, ``transformers serve autoglm-phone-9b --device cuda --dtype bfloat16`` (``cb`` adds
   ``--continuous-batching``) starts in its own process group, from a folder where ``autoglm-phone-9b`` links to
   the checkpoint (the served name is the path given). /health is awaited against a deadline.
3. Then ``python -m provision smoke --endpoint URL --json``: a 4-token warm-up, one request of ``--single-tokens``,
   then one load probe per ``--probes`` entry (concurrency:requests, ``--probe-tokens`` each). Random weights
   never stop early, so every answer is exactly its max_tokens. A probe is cut to the requests that fit in the
   time left (estimated from the single request, as if the server answered one request at a time); the cut is
   recorded. A thread samples NVML (device memory, the server's memory, utilisation) during every step.
4. The decode roofline: the copy bandwidth (bytes read + written per second) over the bytes one decode step
   reads (the decoder weights as stored, without the vision tower and input embeddings, read from the
   safetensors headers, plus the KV cache at the mean length), and the fraction the single request reached.

Everything lands in ``DIR/gpu-serve.json`` after every step, so a timeout keeps what was done; each server's log
is ``DIR/serve-<mode>.log`` and its tail is printed when it fails. The server is stopped (its whole process
group) on every exit path, SIGTERM included.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provision.common.net import NotHealthy, free_port, wait_healthy  # noqa: E402 (after the checkout joins the path)

SCHEMA = "provision.gpu-serve/v1"
NAME = "autoglm-phone-9b"
GB = 1e9
#: Datasheet memory bandwidth (bytes/s), for a second roofline column.
SPEC_BANDWIDTH = {"NVIDIA H200": 4.8e12, "NVIDIA H100 80GB HBM3": 3.35e12}
#: Package versions recorded beside the run (read with importlib.metadata in the child).
PACKAGES = ("torch", "transformers", "torchvision", "accelerate", "tokenizers", "huggingface_hub", "safetensors",
            "fastapi", "starlette", "uvicorn", "pydantic", "openai", "pillow", "nvidia-ml-py")
_SAMPLE_S = 0.25
#: The stand-in tokenizer's byte tokens (ids 0-255, provision.smoke.tiny): the only head rows left non-zero.
BYTE_TOKENS = 256


# ----------------------------------------------------------------------------- child: build, versions, bandwidth


def _child_prep(args: argparse.Namespace) -> int:
    """Reuse or build the checkpoint, then read versions and the copy bandwidth; one JSON object to --json-out."""
    import importlib.metadata as md
    import platform

    import torch

    from provision.common.resources import data_dir
    from provision.data import load_catalog, resolve_model

    spec = resolve_model(NAME, load_catalog(data_dir("matrices") / "models.toml"))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    record = work / ("tiny.json" if args.tiny else "synthetic.json")
    doc: dict[str, Any] = {}
    old = json.loads(record.read_text()) if record.is_file() else {}
    if old and (Path(old["path"]) / "config.json").is_file():
        doc["model"] = {**old, "reused": True}
    else:
        start = time.perf_counter()
        if args.tiny:
            from provision.smoke.tiny import build_tiny

            path = Path(build_tiny(spec.config, model_id=spec.id, root=work).path)
        else:
            from provision.smoke.tiny import build_synthetic

            path = build_synthetic(spec.config, model_id=spec.id, root=work, init_device=args.device)
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        doc["model"] = {"path": str(path), "bytes": size, "write_seconds": round(time.perf_counter() - start, 1)}
        if not args.tiny:
            doc["model"]["lm_head"] = byte_rows_only(path, BYTE_TOKENS)
        record.write_text(json.dumps(doc["model"]))
        doc["model"]["reused"] = False
    versions = {}
    for name in PACKAGES:
        with suppress(md.PackageNotFoundError):
            versions[name] = md.version(name)
    env: dict[str, Any] = {"python": platform.python_version(), "versions": versions, "torch_cuda": torch.version.cuda}
    if args.device == "cuda":
        from provision.smoke.measure import measure_copy_bandwidth

        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_total_bytes=int(props.total_memory),
                   capability=list(torch.cuda.get_device_capability(0)),
                   copy_bandwidth_bytes_per_second=measure_copy_bandwidth(0, size_bytes=1 << 30, repeats=10))  # fmt: skip
    doc["environment"] = env
    Path(args.json_out).write_text(json.dumps(doc))
    return 0


# ----------------------------------------------------------------------------- the stand-in's head


def byte_rows_only(folder: Path, keep: int) -> dict[str, Any]:
    """Zero every ``lm_head`` row from ``keep`` on, in place in its safetensors shard.

    The synthetic checkpoint has the real 151,552-token head but the stand-in's byte-level tokenizer knows only
    ids 0-287; greedy decoding of random weights picks ids past it, which decode to nothing, and the endpoint
    proof fails on an empty answer. With only the byte rows non-zero the argmax is a byte, so every answer is
    text and never the end-of-text id. The shapes, and so every byte read and every FLOP, stay the same.
    """
    for shard in sorted(folder.glob("*.safetensors")):
        with shard.open("r+b") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
            names = [n for n in header if n.endswith("lm_head.weight")]
            if not names:
                continue
            meta = header[names[0]]
            rows, cols = meta["shape"]
            width = {"BF16": 2, "F16": 2, "F32": 4}[meta["dtype"]]
            begin, end = (8 + length + int(v) for v in meta["data_offsets"])
            fh.seek(begin + keep * cols * width)
            todo = end - fh.tell()
            chunk = bytes(1 << 24)
            while todo > 0:
                todo -= fh.write(chunk[: min(todo, len(chunk))])
        return {"tensor": names[0], "shard": shard.name, "rows": rows, "rows_kept": keep}
    raise SystemExit(f"no lm_head.weight in {folder}")


# ----------------------------------------------------------------------------- pure parts


def safetensors_tensors(folder: Path) -> dict[str, int]:
    """{tensor name: bytes} from every ``*.safetensors`` header in ``folder`` (the 8-byte length, then JSON)."""
    out: dict[str, int] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with shard.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, meta in header.items():
            if name != "__metadata__":
                begin, end = meta["data_offsets"]
                out[name] = int(end) - int(begin)
    return out


def decode_bytes(tensors: dict[str, int], config: dict[str, Any]) -> dict[str, int]:
    """Bytes one decode step reads: the decoder weights as stored (the vision tower, rotary tables and, unless tied,
    the input embeddings are not read), and the K and V bytes per token of context (bf16)."""
    weights = sum(size for name, size in tensors.items()
                  if not any(k in name for k in ("visual", "vision", "rotary"))
                  and ("embed_tokens" not in name or config.get("tie_word_embeddings")))  # fmt: skip
    text = config.get("text_config") or config
    heads = int(text.get("num_attention_heads", 1))
    kv_heads = int(text.get("num_key_value_heads", heads))
    head_dim = int(text.get("head_dim") or int(text.get("hidden_size", 0)) // max(heads, 1))
    kv = 2 * int(text.get("num_hidden_layers", 0)) * kv_heads * head_dim * 2
    return {"weights": weights, "kv_per_token": kv, "all_tensors": sum(tensors.values())}


def roofline(report: dict[str, Any], moved: dict[str, int], bandwidths: dict[str, float]) -> dict[str, Any] | None:
    """The single request's decode rate against bandwidth / bytes per token at its mean context length."""
    rate = report.get("tokens_per_second") or 0.0
    if not rate or not moved["weights"]:
        return None
    context = (report.get("prompt_tokens") or 0) + (report.get("tokens_generated") or 0) / 2
    per_token = moved["weights"] + moved["kv_per_token"] * context
    out: dict[str, Any] = {"bytes_per_token": round(per_token), "mean_context_tokens": context,
                           "tokens_per_second": rate}  # fmt: skip
    for label, bw in bandwidths.items():
        out[f"roofline_tokens_per_second_{label}"] = round(bw / per_token, 1)
        out[f"fraction_of_roofline_{label}"] = round(rate * per_token / bw, 4)
    return out


def fit_requests(wanted: int, concurrency: int, per_request: float, left: float) -> int:
    """Requests of a probe that fit in ``left`` seconds if answered one at a time (the proof request is one more)."""
    if per_request <= 0:
        return wanted
    return max(0, min(wanted, math.floor(left / per_request) - 1)) if left > 0 else 0


def parse_probes(text: str) -> list[tuple[int, int]]:
    pairs = []
    for item in filter(None, text.split(",")):
        conc, _, reqs = item.partition(":")
        pairs.append((int(conc), int(reqs or 4 * int(conc))))
    return pairs


# ----------------------------------------------------------------------------- NVML sampling


class Sampler:
    """A thread reading NVML on GPU 0 every 0.25 s: device memory used, one process's memory, utilisation."""

    def __init__(self) -> None:
        self.nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML (the CPU dry run): the steps carry no GPU figures
            self.nvml = None
        self.pid: int | None = None
        self._lock = threading.Lock()
        self._reset()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        if self.nvml is not None:
            self._thread.start()

    def _reset(self) -> None:
        self.samples: list[tuple[int | None, int | None, int | None]] = []

    def read(self) -> tuple[int | None, int | None, int | None]:
        if self.nvml is None:
            return (None, None, None)
        used = proc = util = None
        with suppress(Exception):
            used = int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        with suppress(Exception):
            util = int(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
        with suppress(Exception):
            for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if self.pid is not None and int(p.pid) == self.pid and p.usedGpuMemory is not None:
                    proc = int(p.usedGpuMemory)
        return (used, proc, util)

    def _loop(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            sample = self.read()
            with self._lock:
                self.samples.append(sample)

    def take(self) -> dict[str, Any] | None:
        """The figures since the last take: peaks of memory, mean and max utilisation."""
        with self._lock:
            samples, self.samples = self.samples, []
        if self.nvml is None:
            return None
        used = [s[0] for s in samples if s[0] is not None]
        proc = [s[1] for s in samples if s[1] is not None]
        util = [s[2] for s in samples if s[2] is not None]
        return {"samples": len(samples), "device_used_max_bytes": max(used, default=None),
                "server_process_max_bytes": max(proc, default=None),
                "gpu_util_mean_percent": round(sum(util) / len(util), 1) if util else None,
                "gpu_util_max_percent": max(util, default=None)}  # fmt: skip

    def driver(self) -> str | None:
        if self.nvml is None:
            return None
        try:
            value = self.nvml.nvmlSystemGetDriverVersion()
        except Exception:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def close(self) -> None:
        self._stop.set()


# ----------------------------------------------------------------------------- the server


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class Server:
    """``transformers serve`` in its own process group; ``stop`` ends the whole group."""

    def __init__(self, argv: list[str], cwd: Path, log: Path, env: dict[str, str], pidfile: Path) -> None:
        self.log = log
        self.pidfile = pidfile
        with log.open("wb") as sink:
            self.proc = subprocess.Popen(argv, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)  # fmt: skip
        pidfile.write_text(str(self.proc.pid))

    def stop(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        with suppress(ProcessLookupError):  # what the server itself started, if anything outlived it
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        return {"returncode": self.proc.returncode}


def _kill_stale(pidfile: Path) -> None:
    """A server this script started in an earlier, killed call on the same machine (its pid file is ours)."""
    if pidfile.is_file():
        with suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(pidfile.read_text().strip()), signal.SIGKILL)
        pidfile.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- parent


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.workdir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.began = time.monotonic()
        path_env = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path_env, "HF_HUB_OFFLINE": "1"}
        self.doc: dict[str, Any] = {
            "schema": SCHEMA,
            "environment": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "argv": sys.argv,
                            "device": args.device, "stand_in": "tiny" if args.tiny else "synthetic"},
            "modes": [], "failures": [],
        }  # fmt: skip
        self.sampler = Sampler()
        self.server: Server | None = None

    def left(self) -> float:
        return self.args.deadline - (time.monotonic() - self.began)

    def write(self) -> None:
        tmp = self.out / "gpu-serve.json.tmp"
        tmp.write_text(json.dumps(self.doc, indent=2) + "\n")
        tmp.replace(self.out / "gpu-serve.json")

    def fail(self, step: str, **what: Any) -> None:
        self.doc["failures"].append({"step": step, **what})
        self.write()
        print(f"FAILED {step}: {json.dumps(what)[:2000]}", flush=True)

    def prep(self) -> dict[str, Any] | None:
        part = self.work / "prep.json"
        part.unlink(missing_ok=True)
        argv = [sys.executable, str(Path(__file__).resolve()), "--child-prep", "--workdir", str(self.work),
                "--device", self.args.device, "--json-out", str(part), *(["--tiny"] if self.args.tiny else [])]  # fmt: skip
        start = time.monotonic()
        try:
            rc: int | str = subprocess.run(argv, env=self.env, check=False, timeout=max(30.0, self.left() - 60)).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        if rc != 0 or not part.is_file():
            self.fail("prep", returncode=rc)
            return None
        got: dict[str, Any] = json.loads(part.read_text())
        got["model"]["prep_seconds"] = round(time.monotonic() - start, 1)
        return got

    def smoke(self, port: int, name: str, max_tokens: int, probe: tuple[int, int] | None, timeout: float) -> dict[str, Any]:
        """One ``provision smoke --endpoint`` run as its own process; its report, exit code and NVML figures."""
        report_path = self.work / f"smoke-{name}.json"
        report_path.unlink(missing_ok=True)
        argv = [self.args.client_python, "-m", "provision", "smoke", "--endpoint", f"http://127.0.0.1:{port}/v1",
                "--engine", "transformers", "--json", "--max-tokens", str(max_tokens), "--timeout", "600",
                "-o", str(report_path)]  # fmt: skip
        if probe is not None:
            argv += ["--concurrency", str(probe[0]), "--requests", str(probe[1])]
        self.sampler.take()
        start = time.monotonic()
        step: dict[str, Any] = {"name": name, "argv": ["python", *argv[1:]], "max_tokens": max_tokens}
        try:
            proc = subprocess.run(argv, env=self.env, cwd=ROOT, capture_output=True, text=True, check=False,
                                  timeout=max(10.0, timeout))  # fmt: skip
            step.update(returncode=proc.returncode, stderr_tail=proc.stderr[-1500:])
        except subprocess.TimeoutExpired as exc:
            step.update(returncode="timeout", stderr_tail=str(exc.stderr or "")[-1500:])
        step["seconds"] = round(time.monotonic() - start, 2)
        step["gpu"] = self.sampler.take()
        if report_path.is_file():
            step["report"] = json.loads(report_path.read_text())
        return step

    def mode(self, mode: str, model_path: Path, moved: dict[str, int], bandwidths: dict[str, float]) -> None:
        args = self.args
        rec: dict[str, Any] = {"mode": mode, "steps": []}
        self.doc["modes"].append(rec)
        run_dir = self.work / "run"
        run_dir.mkdir(exist_ok=True)
        link = run_dir / NAME
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(model_path, target_is_directory=True)  # the relative path given is the served name
        port = free_port()
        dtype = "bfloat16" if args.device == "cuda" else "float32"
        argv = [args.serve_python, "-m", "transformers.cli.transformers", "serve", NAME, "--host", "127.0.0.1",
                "--port", str(port), "--device", args.device, "--dtype", dtype]  # fmt: skip
        if mode == "cb":
            argv.append("--continuous-batching")
        rec["serve_argv"] = ["transformers", *argv[3:]]
        log = self.out / f"serve-{mode}.log"
        pidfile = self.work / "server.pid"
        _kill_stale(pidfile)
        before = self.sampler.read()
        rec["device_used_before_bytes"] = before[0]
        self.sampler.take()
        start = time.monotonic()
        self.server = Server(argv, run_dir, log, self.env, pidfile)
        self.sampler.pid = self.server.proc.pid
        try:
            limit = min(args.start_timeout, self.left() - 30)
            proc = self.server.proc
            try:
                wait_healthy(f"http://127.0.0.1:{port}/health", deadline_s=limit - (time.monotonic() - start),
                             running=lambda: proc.poll() is None)
            except NotHealthy as exc:
                why = "exited" if exc.exited else f"not healthy in {limit:.0f} s"
                self.fail(f"{mode}: start", why=why, returncode=proc.returncode, log_tail=_tail(log))
                return
            rec["healthy_after_seconds"] = round(time.monotonic() - start, 1)
            rec["gpu_during_start"] = self.sampler.take()
            after = self.sampler.read()
            rec["after_load"] = {"device_used_bytes": after[0], "server_process_bytes": after[1]}
            print(f"[{mode}] healthy after {rec['healthy_after_seconds']} s; server holds "
                  f"{(after[1] or 0) / GB:.2f} GB", flush=True)  # fmt: skip
            self.write()
            self._steps(mode, rec, port, moved, bandwidths)
        finally:
            rec["log_has_cb_fallback"] = "does not support continuous batching" in _tail(log, 200_000)
            rec["stop"] = self.server.stop()
            self.server = None
            rec["log_tail"] = _tail(log, 1500)
            self.write()

    def _steps(self, mode: str, rec: dict[str, Any], port: int, moved: dict[str, int], bandwidths: dict[str, float]) -> None:
        args = self.args
        plan: list[tuple[str, int, tuple[int, int] | None]] = [("warmup", 4, None), ("single", args.single_tokens, None)]
        probes = args.cb_probes if mode == "cb" and args.cb_probes is not None else args.probes
        plan += [(f"c{c}", args.probe_tokens, (c, r)) for c, r in parse_probes(probes)]
        per_token = ttft = None
        for name, max_tokens, probe in plan:
            left = self.left() - 40  # time to stop the server and write
            if left < 15:
                rec["steps"].append({"name": name, "skipped": "deadline"})
                continue
            if probe is not None and per_token is not None and ttft is not None:
                per_request = ttft + max_tokens * per_token
                n = fit_requests(probe[1], probe[0], per_request, left)
                if n < probe[0]:
                    rec["steps"].append({"name": name, "skipped": f"{probe[1]} requests do not fit in {left:.0f} s"})
                    self.write()
                    continue
                if n < probe[1]:
                    rec.setdefault("cut", {})[name] = {"wanted": probe[1], "sent": n}
                probe = (probe[0], n)
            step = self.smoke(port, name, max_tokens, probe, left)
            rec["steps"].append(step)
            report = step.get("report") or {}
            ok = step.get("returncode") == 0 and report.get("ok") is True
            summary = {k: report.get(k) for k in ("ttft_seconds", "tokens_per_second", "latency_seconds",
                                                  "tokens_generated", "prompt_tokens")}  # fmt: skip
            print(f"[{mode}] {name}: rc={step.get('returncode')} {step['seconds']} s {json.dumps(summary)} "
                  f"load={json.dumps(report.get('load'))} gpu={json.dumps(step['gpu'])}", flush=True)  # fmt: skip
            if not ok:
                self.fail(f"{mode}: {name}", returncode=step.get("returncode"), error=report.get("error"),
                          stderr=step.get("stderr_tail"), log_tail=_tail(self.out / f"serve-{mode}.log"))  # fmt: skip
                if self.server is not None and self.server.proc.poll() is not None:
                    return
                continue
            if name == "single":
                rate = report.get("tokens_per_second") or 0.0
                per_token = 1 / rate if rate else None
                ttft = report.get("ttft_seconds") or 0.0
                rec["roofline"] = roofline(report, moved, bandwidths)
            self.write()

    def main(self) -> int:
        args = self.args
        got = self.prep()
        if got is None:
            return 1
        env = got["environment"]
        env["gpu_driver"] = self.sampler.driver()
        self.doc["environment"].update(env)
        model_path = Path(got["model"]["path"])
        config = json.loads((model_path / "config.json").read_text())
        moved = decode_bytes(safetensors_tensors(model_path), config)
        self.doc["model"] = {**got["model"], "decode_bytes": moved}
        bandwidths: dict[str, float] = {}
        if env.get("copy_bandwidth_bytes_per_second"):
            bandwidths["copy"] = float(env["copy_bandwidth_bytes_per_second"])
        if env.get("gpu") in SPEC_BANDWIDTH:
            bandwidths["datasheet"] = SPEC_BANDWIDTH[env["gpu"]]
        self.doc["environment"]["bandwidths_bytes_per_second"] = bandwidths
        print(f"model: {got['model']}; decode bytes {moved}; bandwidths {bandwidths}", flush=True)
        self.write()
        for mode in args.modes.split(","):
            if self.left() < 90:
                self.doc["modes"].append({"mode": mode, "skipped": "deadline"})
                continue
            self.mode(mode, model_path, moved, bandwidths)
        if not args.keep:
            shutil.rmtree(model_path, ignore_errors=True)
            (self.work / ("tiny.json" if args.tiny else "synthetic.json")).unlink(missing_ok=True)
        self.write()
        return 1 if self.doc["failures"] else 0


# ----------------------------------------------------------------------------- report


def report_tables(doc: dict[str, Any]) -> str:
    """The Markdown tables of a run: one row per single request, one per load probe."""
    lines = ["| mode | step | max_tokens | prompt tokens | TTFT s | decode tok/s | latency s | roofline tok/s (copy) "
             "| fraction | GPU util mean % | server GB (max) |", "|" + "---|" * 11]  # fmt: skip
    probes = ["| mode | concurrency | requests | max_tokens | errors | latency p50 s | p95 s | TTFT p50 s | p95 s "
              "| req/s | output tok/s | wall s | GPU util mean % | server GB (max) |", "|" + "---|" * 14]  # fmt: skip
    for m in doc.get("modes", []):
        roof = m.get("roofline") or {}
        for s in m.get("steps", []):
            r, gpu = s.get("report") or {}, s.get("gpu") or {}
            mem = gpu.get("server_process_max_bytes")
            mem_s = f"{mem / GB:.2f}" if mem else "-"
            if s.get("skipped"):
                continue
            load = r.get("load")
            if load:
                probes.append(f"| {m['mode']} | {load['concurrency']} | {load['requests']} | {s['max_tokens']} "
                              f"| {load['errors']} | {load['latency_p50_seconds']} | {load['latency_p95_seconds']} "
                              f"| {load['ttft_p50_seconds']} | {load['ttft_p95_seconds']} | {load['requests_per_second']} "
                              f"| {load['output_tokens_per_second']} | {load['wall_seconds']} "
                              f"| {gpu.get('gpu_util_mean_percent')} | {mem_s} |")  # fmt: skip
            else:
                single = s["name"] == "single"
                lines.append(f"| {m['mode']} | {s['name']} | {s['max_tokens']} | {r.get('prompt_tokens')} "
                             f"| {r.get('ttft_seconds')} | {r.get('tokens_per_second')} | {r.get('latency_seconds')} "
                             f"| {roof.get('roofline_tokens_per_second_copy', '-') if single else ''} "
                             f"| {roof.get('fraction_of_roofline_copy', '-') if single else ''} "
                             f"| {gpu.get('gpu_util_mean_percent')} | {mem_s} |")  # fmt: skip
    return "\n".join([*lines, "", *probes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", default=None)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "gpu-serve"))
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="the tiny stand-in (a dry run on a CPU)")
    p.add_argument("--modes", default="eager", help="eager, cb (--continuous-batching), comma-separated")
    p.add_argument("--single-tokens", type=int, default=256)
    p.add_argument("--probe-tokens", type=int, default=128)
    p.add_argument("--probes", default="1:8,4:16,8:16", help="concurrency:requests, comma-separated")
    p.add_argument("--cb-probes", default=None, help="the probes of the cb mode (default: --probes)")
    p.add_argument("--deadline", type=float, default=560.0, help="seconds for the whole run")
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--serve-python", default=sys.executable)
    p.add_argument("--client-python", default=sys.executable)
    p.add_argument("--keep", action="store_true", help="keep the checkpoint in --workdir for a later call")
    p.add_argument("--report", type=Path, help="print the Markdown tables of this gpu-serve.json")
    p.add_argument("--child-prep", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.report:
        sys.stdout.write(report_tables(json.loads(args.report.read_text())))
        return 0
    if args.child_prep:
        return _child_prep(args)
    if not args.out:
        p.error("--out is required")
    run = Run(args)

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        return run.main()
    except BaseException as exc:
        run.fail("unexpected", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if run.server is not None:
            run.server.stop()
        run.sampler.close()
        run.write()


if __name__ == "__main__":
    sys.exit(main())
