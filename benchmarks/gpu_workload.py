"""GPU memory of serving-shaped workloads: long text prompts and phone screenshots, every precision.

    python benchmarks/gpu_workload.py --out DIR [--precisions bf16,nf4,int8] [--text 8192,65536]
                                      [--screens 1,3] [--screen-size 1080x2400] [--screen-text 1000]
                                      [--new-tokens 4] [--workdir /tmp/gpu-workload] [--deadline 560]
    python benchmarks/gpu_workload.py --report DIR/gpu-workload-fit.json --md docs/gpu-workload-fit.md

1. Writes the full-size architecture with random bf16 weights once (``provision.smoke.tiny.build_synthetic``,
   in a child process, so this one never holds a CUDA context).
2. For each precision, one fresh process loads that folder once through the toolkit's own path
   (``provision.smoke.load.from_pretrained_kwargs`` + ``load_model``), warms up, then runs every case from the
   shortest prompt to the longest: one prefill and ``--new-tokens`` greedy decode steps. A text case of C tokens
   is a chat prompt of C - new tokens (so prompt + generated = C); a screenshot case holds N generated
   1080x2400 PNG screenshots (the model's image processor, size {"shortest_edge": 12544,
   "longest_edge": 5000000}, patch 14, merge 2, temporal 2; the visual tokens sit between
   image_start/image_end with ``image_grid_thw``) plus ``--screen-text`` text tokens.
   Before each case the allocator's cache is emptied and its peaks reset; while the case's peak is still held
   (the caching allocator keeps what it reserved) nvidia-smi's per-process figure is read, and a thread polls
   NVML's per-process figure during the whole case. Out-of-memory is caught and recorded per case.
3. Writes ``gpu-workload-fit.json`` (``gpu-workload-heldout.json`` with ``--allow-held-out``) under ``--out``
   (one object per case, plus the environment) after every precision, and each child's own record to
   ``parts/PRECISION.json`` after every case, so a timeout keeps what was done; deletes the random checkpoint
   at the end.

``--report`` puts ``provision.plan.memory.estimate_memory`` next to every measured case (text:
context = prompt + generated; screenshots: ``image_tokens`` = the visual tokens) and writes a Markdown table.
The held-out cases of the memory study (25,480 and 49,152 tokens, 1440x3200 screenshots) are refused unless
``--allow-held-out`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GB = 1e9
MIB = 1 << 20
#: The serving-side image settings (Open-AutoGLM's max_pixels 5,000,000; shared/notes/serving.md).
IMAGE_SIZE = {"shortest_edge": 12544, "longest_edge": 5_000_000}
IMAGE_GEOMETRY = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
#: Measured in a later session, against estimates fixed before it: never fit on these.
HELD_OUT_CONTEXTS = frozenset({25480, 49152})
HELD_OUT_SCREENS = frozenset({(1440, 3200)})
SCHEMA = "provision.gpu-workload/v1"
_POLL_S = 0.005
_IMAGE_TOKEN = "<|image|>"  # noqa: S105 - a vocabulary entry, not a secret
_FILL = "\u241fPROVISION_FILL\u241f"
_FILLER = (
    "The phone agent reads the screen, decides on one action, taps or types, and then looks again. "
    "It keeps a short memory of what it has done so far and stops when the task is finished. "
)


# ----------------------------------------------------------------------------- probes (child side)


def _nvidia_smi_process(pid: int) -> dict[str, Any]:
    """``nvidia-smi --query-compute-apps=pid,used_memory`` for this process: bytes, and the raw answer."""
    argv = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"bytes": None, "raw": f"{type(exc).__name__}: {exc}"}
    used = None
    for line in proc.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            used = int(parts[1]) * MIB
    return {"bytes": used, "raw": (proc.stdout + proc.stderr).strip()[-500:]}


class Nvml:
    """NVML on GPU 0: the device's used memory and this process's own figure (None where unreadable)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml: Any = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML: the torch and nvidia-smi views remain
            self.handle = None

    def device_used(self) -> int | None:
        if self.handle is None:
            return None
        try:
            return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        except Exception:
            return None

    def process_used(self) -> int | None:
        if self.handle is None:
            return None
        try:
            for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if int(p.pid) == self.pid and p.usedGpuMemory is not None:
                    return int(p.usedGpuMemory)
        except Exception:
            return None
        return None

    def driver(self) -> str | None:
        if self.handle is None:
            return None
        try:
            v = self.nvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        except Exception:
            return None


@contextlib.contextmanager
def _polled(nvml: Nvml) -> Iterator[dict[str, int | None]]:
    """Poll NVML's per-process and device figures in a thread while the block runs; keeps the maxima."""
    seen: dict[str, int | None] = {"process_max": None, "device_max": None, "samples": 0}
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, value in (("process_max", nvml.process_used()), ("device_max", nvml.device_used())):
                if value is not None:
                    seen[key] = max(value, seen[key] or 0)
            seen["samples"] = int(seen["samples"] or 0) + 1
            stop.wait(_POLL_S)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=5)


# ----------------------------------------------------------------------------- inputs (child side)


def screenshot(width: int, height: int, seed: int) -> Any:
    """A phone-screenshot-like RGB picture (status bar, cards, text lines, noise), through a PNG round trip."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 246, dtype=np.float64)
    img[: height // 30] = rng.integers(20, 235, 3)
    y = height // 20
    while y < height - height // 12:
        h = int(rng.integers(height // 20, height // 7))
        img[y : y + h, width // 27 : width - width // 27] = rng.integers(60, 240, 3)
        for k in range(max(1, h // 40 - 1)):
            top = y + 16 + 40 * k
            img[top : top + 16, width // 13 : width // 13 + int(rng.integers(width // 5, width * 3 // 4))] = 30
        y += h + height // 60
    img[-height // 12 :] = rng.integers(200, 250, 3)
    img = np.clip(img + rng.normal(0.0, 6.0, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    buf.seek(0)
    with Image.open(buf) as png:
        return png.convert("RGB")


def image_processor(path: Path, procs: Any) -> Any:
    """The model's own image-processor class, loaded from the folder with the serving size and geometry."""
    cls = type(procs.image_processor)
    return cls.from_pretrained(path, local_files_only=True, size=dict(IMAGE_SIZE), **IMAGE_GEOMETRY)


def _render(procs: Any, content: list[dict[str, Any]]) -> str:
    owner = procs.template_owner
    return str(owner.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True))  # fmt: skip


def screens_inputs(procs: Any, improc: Any, config: Any, images: list[Any], text_tokens: int) -> dict[str, Any]:
    """N screenshots then prose, as the chat template lays them out, with exactly ``text_tokens`` non-visual
    tokens; each ``<|image|>`` expanded to its grid's merged patches, as Glm4vProcessor does."""
    import torch

    tok = procs.tokenizer
    text = _render(procs, [*({"type": "image"} for _ in images), {"type": "text", "text": _FILL}])
    vision = improc(images=images, return_tensors="pt")
    grid = vision["image_grid_thw"]
    merge = int(IMAGE_GEOMETRY["merge_size"])
    counts = [int(g.prod()) // (merge * merge) for g in grid]
    pieces = text.split(_IMAGE_TOKEN)
    if len(pieces) != len(images) + 1:
        raise RuntimeError(f"the chat template produced {len(pieces) - 1} image placeholders for {len(images)} images")
    text = pieces[0] + "".join(_IMAGE_TOKEN * c + p for c, p in zip(counts, pieces[1:], strict=True))
    pre, _, post = text.partition(_FILL)
    head = tok(pre, add_special_tokens=False)["input_ids"]
    tail = tok(post, add_special_tokens=False)["input_ids"]
    room = text_tokens - (len(head) + len(tail) - sum(counts))
    if room < 0:
        raise RuntimeError(f"{text_tokens} text tokens is less than the template's own")
    one = len(tok(_FILLER, add_special_tokens=False)["input_ids"])
    filler = tok(_FILLER * (room // max(one, 1) + 2), add_special_tokens=False)["input_ids"][:room]
    ids = torch.tensor([head + filler + tail], dtype=torch.long)
    image_id = int(config.image_token_id)
    is_image = ids == image_id
    if int(is_image.sum()) != sum(counts):
        raise RuntimeError(f"{int(is_image.sum())} image tokens in the prompt, the grids give {sum(counts)}")
    _check_wrapped(ids[0].tolist(), image_id, int(config.image_start_token_id), int(config.image_end_token_id),
                   len(images))  # fmt: skip
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": is_image.long(),
            "pixel_values": vision["pixel_values"], "image_grid_thw": grid}  # fmt: skip


def _check_wrapped(ids: list[int], image_id: int, start_id: int, end_id: int, images: int) -> None:
    """Every run of visual tokens sits between image_start and image_end."""
    runs = []
    i = 0
    while i < len(ids):
        if ids[i] == image_id:
            j = i
            while j < len(ids) and ids[j] == image_id:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    bad = [r for r in runs if r[0] == 0 or ids[r[0] - 1] != start_id or r[1] >= len(ids) or ids[r[1]] != end_id]
    if len(runs) != images or bad:
        raise RuntimeError(f"visual tokens: {len(runs)} runs for {images} images, {len(bad)} not wrapped")


def _screen_cases(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(images, text tokens) of every screenshot case: ``--screen-cases N:TEXT,...``, else each of
    ``--screens`` with ``--screen-text``."""
    if args.screen_cases:
        return [(int(n), int(t)) for n, t in (item.split(":") for item in args.screen_cases.split(",") if item)]
    return [(int(v), args.screen_text) for v in args.screens.split(",") if v]


def _case_plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    width, height = (int(v) for v in args.screen_size.lower().split("x"))
    cases: list[dict[str, Any]] = []
    for n, text in _screen_cases(args):
        name = f"screens-{n}x{width}x{height}" + ("" if text == 1000 else f"-text{text}")
        cases.append({"case": name, "kind": "screens", "images": n,
                      "screen_size": [width, height], "text_tokens_target": text})  # fmt: skip
    for c in (int(v) for v in args.text.split(",") if v):
        cases.append({"case": f"text-{c}", "kind": "text", "context_target": c})
    return cases


def _build_inputs(cases: list[dict[str, Any]], path: Path, procs: Any, config: Any, new_tokens: int) -> list[Any]:
    """Model inputs for every case (CPU tensors), and each case's token counts filled in."""
    from provision.smoke.inputs import text_inputs

    improc = None
    built = []
    for case in cases:
        if case["kind"] == "text":
            inputs = text_inputs(procs, True, case["context_target"] - new_tokens)
        else:
            improc = improc or image_processor(path, procs)
            width, height = case["screen_size"]
            images = [screenshot(width, height, seed) for seed in range(case["images"])]
            inputs = screens_inputs(procs, improc, config, images, case["text_tokens_target"])
            grid = [[int(v) for v in g] for g in inputs["image_grid_thw"]]
            case.update(image_grid_thw=grid, pixel_values_shape=list(inputs["pixel_values"].shape),
                        image_processor=type(improc).__name__, image_processor_size=_jsonable(improc.size))  # fmt: skip
        ids = inputs["input_ids"]
        visual = int((ids == int(config.image_token_id)).sum())
        case.update(prompt_tokens=int(ids.shape[1]), visual_tokens=visual, text_tokens=int(ids.shape[1]) - visual)
        built.append(inputs)
    return built


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "items"):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


# ----------------------------------------------------------------------------- one precision (child)


def _environment(nvml: Nvml, device: str) -> dict[str, Any]:
    import platform

    import torch

    from provision.smoke.report import stack_versions

    env: dict[str, Any] = {"versions": stack_versions(), "python": platform.python_version(),
                           "torch_cuda": torch.version.cuda, "device": device,
                           "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}  # fmt: skip
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_total_bytes=int(props.total_memory),
                   capability=list(torch.cuda.get_device_capability(0)), driver=nvml.driver())  # fmt: skip
    return env


class Cuda:
    """torch's allocator view on GPU 0; every figure None on CPU (a dry run)."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def sync(self) -> None:
        if self.on:
            import torch

            torch.cuda.synchronize(0)

    def fresh(self) -> None:
        gc.collect()
        if self.on:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(0)

    def read(self, what: str) -> int | None:
        if not self.on:
            return None
        import torch

        return int(getattr(torch.cuda, what)(0))

    def free(self) -> int | None:
        if not self.on:
            return None
        import torch

        return int(torch.cuda.mem_get_info(0)[0])


def _child_run(args: argparse.Namespace) -> int:
    out = Path(args.json_out)
    pid = os.getpid()
    nvml = Nvml(pid)
    doc: dict[str, Any] = {"precision": args.precision, "pid": pid, "nvml_device_used_before": nvml.device_used(),
                           "cases": [], "in_flight": None}  # fmt: skip

    def save() -> None:
        out.write_text(json.dumps(doc, indent=2) + "\n")

    save()
    import torch

    from provision.plan.serve import model_load
    from provision.smoke.inputs import load_processors, text_inputs
    from provision.smoke.load import from_pretrained_kwargs, load_model
    from provision.smoke.measure import decode_rate, timed_generate

    spec = _spec(args.model)
    path = Path(args.model_path)
    cuda = Cuda(args.device == "cuda")
    if cuda.on:
        torch.cuda.init()
        doc["cuda_free_before_load"] = cuda.free()
    doc["environment"] = _environment(nvml, args.device)
    procs = load_processors(path, True)
    doc["processor"] = procs.how
    cases = _case_plan(args)
    config = _config_object(path)
    inputs = _build_inputs(cases, path, procs, config, args.new_tokens)
    order = sorted(range(len(cases)), key=lambda i: cases[i]["prompt_tokens"])
    save()

    skip = spec.skip_modules(args.precision)  # what transformers leaves unquantized, as the server does
    bf16 = not cuda.on or torch.cuda.get_device_capability(0)[0] >= 8
    kwargs = from_pretrained_kwargs(load=model_load(args.precision, bf16=bf16), device=args.device,
                                    gpus=(0,) if cuda.on else (), max_memory=None, device_map=None)  # fmt: skip
    doc["load"] = {"kwargs": {k: str(v) for k, v in kwargs.items()}, "keep_16bit": list(skip)}
    try:
        model, seconds = load_model(path, spec.auto_class, kwargs, model_id=spec.id, precision=args.precision,
                                    sync=cuda.sync)  # fmt: skip
    except Exception as exc:  # SmokeError wraps OOM and every load failure
        doc["load"].update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000])
        for i in order:
            doc["cases"].append({**cases[i], "precision": args.precision, "status": "not-run (load failed)"})
        save()
        return 1
    doc["load"].update(status="ok", seconds=seconds, weights_allocated=cuda.read("memory_allocated"),
                       load_peak_allocated=cuda.read("max_memory_allocated"),
                       load_peak_reserved=cuda.read("max_memory_reserved"),
                       nvidia_smi_after_load=_nvidia_smi_process(pid) if cuda.on else None,
                       nvml_process_after_load=nvml.process_used(),
                       attn_implementation=getattr(model.config, "_attn_implementation", None))  # fmt: skip
    save()
    print(f"[{args.precision}] loaded in {seconds:.1f} s; weights {(cuda.read('memory_allocated') or 0) / GB:.3f} GB",
          flush=True)  # fmt: skip
    timed_generate(model, text_inputs(procs, True, None), 2, cuda.sync)  # warm-up: kernels, cuBLAS workspace

    for i in order:
        case = {**cases[i], "precision": args.precision, "load_seconds": seconds}
        doc["in_flight"] = case["case"]
        save()
        case.update(_one_case(model, inputs[i], args.new_tokens, cuda, nvml, pid, timed_generate, decode_rate))
        doc["cases"].append(case)
        doc["in_flight"] = None
        save()
        peak = case.get("nvidia_smi_process_bytes")
        print(f"[{args.precision}] {case['case']}: {case['status']}, prompt {case['prompt_tokens']} "
              f"({case['visual_tokens']} visual), nvidia-smi {peak / GB if peak else float('nan'):.3f} GB, "
              f"allocated peak {(case.get('max_memory_allocated') or 0) / GB:.3f} GB, "
              f"prefill {case.get('prefill_seconds') or float('nan'):.1f} s", flush=True)  # fmt: skip
    del model
    cuda.fresh()
    save()
    return 0


def _one_case(model: Any, inputs: dict[str, Any], new_tokens: int, cuda: Cuda, nvml: Nvml, pid: int,
              timed_generate: Any, decode_rate: Any) -> dict[str, Any]:  # fmt: skip
    """One prefill + decode; every memory view while its peak is still held. OOM is a result, not a crash."""
    import torch

    cuda.fresh()
    rec: dict[str, Any] = {"allocated_before": cuda.read("memory_allocated"), "reserved_before": cuda.read("memory_reserved"),
                           "nvml_process_before": nvml.process_used()}  # fmt: skip
    out = None
    with _polled(nvml) as polled:
        start = time.perf_counter()
        try:
            out, stamps = timed_generate(model, inputs, new_tokens, cuda.sync)
            rec["status"] = "ok"
        except torch.cuda.OutOfMemoryError as exc:
            rec.update(status="oom", error=str(exc)[:1500])
        except Exception as exc:
            rec.update(status="error", error=f"{type(exc).__name__}: {exc}"[:1500])
        rec["seconds"] = time.perf_counter() - start
        # Still held: the caching allocator keeps every block it reserved until empty_cache.
        rec.update(max_memory_allocated=cuda.read("max_memory_allocated"), max_memory_reserved=cuda.read("max_memory_reserved"),
                   reserved_at_query=cuda.read("memory_reserved"), cuda_free_at_query=cuda.free())  # fmt: skip
        smi = _nvidia_smi_process(pid) if cuda.on else {"bytes": None, "raw": "cpu run"}
        rec.update(nvidia_smi_process_bytes=smi["bytes"], nvidia_smi_raw=smi["raw"], nvml_process_at_query=nvml.process_used(),
                   nvml_device_used_at_query=nvml.device_used())  # fmt: skip
    rec.update(nvml_process_max_polled=polled["process_max"], nvml_device_max_polled=polled["device_max"],
               nvml_samples=polled["samples"])  # fmt: skip
    if out is not None:
        prompt = int(inputs["input_ids"].shape[1])
        rec["generated_tokens"] = int(out.shape[1]) - prompt
        rec["context_tokens"] = prompt + rec["generated_tokens"]
        rec["prefill_seconds"] = stamps[0] - start if stamps else None
        rec["decode_tokens_per_second"] = decode_rate(stamps)[0]
    del out
    return rec


def _config_object(path: Path) -> Any:
    import transformers

    return transformers.AutoConfig.from_pretrained(path, local_files_only=True)


def _spec(model_id: str) -> Any:
    from provision.common.resources import data_dir
    from provision.data import load_catalog, resolve_model

    return resolve_model(model_id, load_catalog(data_dir("matrices") / "models.toml"))


def _child_build(args: argparse.Namespace) -> int:
    from provision.smoke.tiny import build_synthetic

    spec = _spec(args.model)
    start = time.perf_counter()
    path = build_synthetic(spec.config, model_id=spec.id, root=Path(args.workdir), init_device=args.device)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    Path(args.json_out).write_text(json.dumps({"path": str(path), "seconds": time.perf_counter() - start, "bytes": size}))
    return 0


# ----------------------------------------------------------------------------- parent


def _refuse_held_out(args: argparse.Namespace) -> str | None:
    if args.allow_held_out:
        return None
    texts = {int(v) for v in args.text.split(",") if v}
    width, height = (int(v) for v in args.screen_size.lower().split("x"))
    hit = sorted(texts & HELD_OUT_CONTEXTS)
    if hit or (width, height) in HELD_OUT_SCREENS:
        return f"held-out case requested ({hit or args.screen_size}); pass --allow-held-out for the held-out session"
    return None


def _parent(args: argparse.Namespace) -> int:
    refused = _refuse_held_out(args)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    path_env = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path_env}
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--model", args.model, "--device", args.device]
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "environment": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "argv": sys.argv,
                        "new_tokens": args.new_tokens, "image_size": IMAGE_SIZE, **IMAGE_GEOMETRY,
                        "held_out_not_measured": {"contexts": sorted(HELD_OUT_CONTEXTS),
                                                  "screens": [list(s) for s in sorted(HELD_OUT_SCREENS)]}},
        "cases": [], "failures": [],
    }  # fmt: skip
    dest = out / ("gpu-workload-heldout.json" if args.allow_held_out else "gpu-workload-fit.json")

    def write() -> None:
        dest.write_text(json.dumps(doc, indent=2) + "\n")

    scratch = Path(tempfile.mkdtemp(prefix="gpu-workload-"))
    synthetic: dict[str, Any] = {}
    try:
        if args.reuse:
            synthetic = {"path": args.reuse, "seconds": 0.0, "keep": True,
                         "bytes": sum(f.stat().st_size for f in Path(args.reuse).iterdir() if f.is_file())}  # fmt: skip
        else:
            built = scratch / "build.json"
            rc = subprocess.run([*me, "--child-build", *common, "--workdir", args.workdir, "--json-out", str(built)],
                                env=env, check=False).returncode  # fmt: skip
            if rc != 0 or not built.is_file():
                doc["failures"].append({"step": "build", "returncode": rc})
                write()
                print("building the synthetic checkpoint failed", flush=True)
                return 1
            synthetic = json.loads(built.read_text())
        doc["environment"].update(synthetic_checkpoint_bytes=synthetic["bytes"],
                                  synthetic_write_seconds=round(synthetic["seconds"], 1))  # fmt: skip
        print(f"synthetic checkpoint: {synthetic['bytes'] / GB:.2f} GB in {synthetic['seconds']:.1f} s", flush=True)
        write()
        for precision in args.precisions.split(","):
            left = args.deadline - (time.monotonic() - began)
            if left < 30:
                doc["failures"].append({"precision": precision, "step": "not started: deadline reached"})
                write()
                continue
            part = out / "parts" / f"{precision}.json"  # the child rewrites it after every case: kept on a timeout
            part.parent.mkdir(exist_ok=True)
            argv = [*me, "--child-run", *common, "--model-path", synthetic["path"], "--precision", precision,
                    "--json-out", str(part), "--text", args.text, "--screens", args.screens,
                    "--screen-size", args.screen_size, "--screen-text", str(args.screen_text),
                    "--screen-cases", args.screen_cases or "",
                    "--new-tokens", str(args.new_tokens)]  # fmt: skip
            try:
                rc = subprocess.run(argv, env=env, check=False, timeout=left - 15).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            got = json.loads(part.read_text()) if part.is_file() else {}
            doc["environment"].setdefault("child", got.get("environment"))
            doc.setdefault("loads", {})[precision] = {**got.get("load", {}), "processor": got.get("processor"),
                                                      "nvml_device_used_before": got.get("nvml_device_used_before"),
                                                      "cuda_free_before_load": got.get("cuda_free_before_load")}  # fmt: skip
            doc["cases"].extend(got.get("cases", []))
            if rc != 0:
                doc["failures"].append({"precision": precision, "returncode": rc, "in_flight": got.get("in_flight")})
                print(f"[{precision}] child ended with {rc}; case in flight: {got.get('in_flight')}", flush=True)
            write()
    finally:
        if synthetic and not synthetic.get("keep"):
            shutil.rmtree(synthetic["path"], ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {dest} ({len(doc['cases'])} cases, {len(doc['failures'])} failures) in "
          f"{time.monotonic() - began:.0f} s", flush=True)  # fmt: skip
    return 1 if doc["failures"] else 0


# ----------------------------------------------------------------------------- report (no GPU needed)


def estimate_for(case: dict[str, Any]) -> Any:
    """The toolkit's current estimate for a measured case."""
    from provision.data import load_catalog, resolve_model
    from provision.plan.memory import estimate_memory

    spec = resolve_model("autoglm-phone-9b", load_catalog())
    context = case.get("context_tokens") or case["prompt_tokens"]
    return estimate_memory(spec, precision=case["precision"], context_tokens=context,
                           image_tokens=case.get("visual_tokens") or 0)  # fmt: skip


def predict(args: argparse.Namespace) -> dict[str, Any]:
    """What the estimator says for every case ``args`` would measure, before it is measured.

    Token counts follow from the case plan alone: a text case's context is its target; a
    screenshot case holds ``--screen-text`` text tokens, the visual tokens ``visual_tokens`` gives
    for ``--screen-size`` under the serving cap, and the generated tokens. The claim checked
    afterwards: nvidia-smi's per-process figure lies in [total - 1.5 GB, total].
    """
    from provision.data import load_catalog, resolve_model
    from provision.plan.memory import estimate_memory
    from provision.plan.workload import visual_tokens

    spec = resolve_model(args.model, load_catalog())
    width, height = (int(v) for v in args.screen_size.lower().split("x"))
    per_image = visual_tokens(spec, width=width, height=height, max_pixels=IMAGE_SIZE["longest_edge"])
    rows = []
    for precision in args.precisions.split(","):
        for case in _case_plan(args):
            if case["kind"] == "text":
                context, visual = case["context_target"], 0
            else:
                visual = case["images"] * per_image
                context = case["text_tokens_target"] + visual + args.new_tokens
            est = estimate_memory(spec, precision=precision, context_tokens=context, image_tokens=visual)
            rows.append({"precision": precision, "case": case["case"], "context_tokens": context,
                         "visual_tokens": visual, "weights": est.weights, "kv_cache": est.kv_cache,
                         "activations": est.activations, "peak_allocated": est.peak_allocated,
                         "allocator_slack": est.overhead_parts["allocator_slack"],
                         "cuda_context": est.overhead_parts["cuda_context"], "total": est.total,
                         "claim_nvidia_smi_bytes": [est.total - int(1.5 * GB), est.total]})  # fmt: skip
    return {"schema": "provision.gpu-workload-prediction/v1", "model": spec.id, "new_tokens": args.new_tokens,
            "screen_size": [width, height], "visual_tokens_per_image": per_image, "image_size": IMAGE_SIZE,
            "predictions": rows}  # fmt: skip


def compare(predicted: Path, measured: Path) -> str:
    """Predicted next to measured, per case: the Markdown table of the held-out report."""
    pred = {(r["precision"], r["case"]): r for r in json.loads(predicted.read_text())["predictions"]}
    doc = json.loads(measured.read_text())
    lines = [
        "| precision | case | context (visual) | nvidia-smi GB | predicted total GB | total - nvidia-smi | within "
        "[0, 1.5] | weights meas. / pred. GB | prefill meas. / pred. GB | R-A meas. / slack pred. GB |",
        "|" + "---|" * 10,
    ]
    for c in doc["cases"]:
        p = pred.get((c["precision"], c["case"]))
        if p is None or c.get("status") != "ok":
            lines.append(f"| {c['precision']} | {c['case']} | - | - | - | - | {c.get('status')} | - | - | - |")
            continue
        smi, alloc, res = c["nvidia_smi_process_bytes"], c["max_memory_allocated"], c["max_memory_reserved"]
        weights = doc["loads"][c["precision"]]["weights_allocated"]
        used = max(smi, alloc)
        above = p["total"] - used
        ok = "yes" if 0 <= above <= 1.5 * GB else "**NO**"
        same = c["context_tokens"] == p["context_tokens"] and c["visual_tokens"] == p["visual_tokens"]
        ctx = f"{c['context_tokens']} ({c['visual_tokens']})" + ("" if same else f" [predicted {p['context_tokens']}]")
        lines.append(
            f"| {c['precision']} | {c['case']} | {ctx} | {_g(smi)} | {_g(p['total'])} | {_g(above, '+.3f')} | {ok} "
            f"| {_g(weights)} / {_g(p['weights'])} | {_g(alloc - weights - p['kv_cache'])} / {_g(p['activations'])} "
            f"| {_g(res - alloc)} / {_g(p['allocator_slack'])} |"
        )
    return "\n".join(lines) + "\n"


def _g(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v / GB, spec)


def report(src: Path) -> str:
    doc = json.loads(src.read_text())
    lines = [
        "| precision | case | prompt (text + visual) | context | load s | nvidia-smi process GB | torch alloc peak GB "
        "| torch reserved peak GB | weights meas. GB | est. weights GB | est. total GB | total - nvidia-smi "
        "| total - alloc peak | total - reserved | prefill meas. GB | est. activations GB | run |",
        "|" + "---|" * 17,
    ]
    for c in doc["cases"]:
        load = doc.get("loads", {}).get(c["precision"], {})
        weights = load.get("weights_allocated")
        smi, alloc, res = c.get("nvidia_smi_process_bytes"), c.get("max_memory_allocated"), c.get("max_memory_reserved")
        est = estimate_for(c)
        prefill = alloc - weights - est.kv_cache if alloc is not None and weights is not None else None
        diff = [None if v is None else est.total - v for v in (smi, alloc, res)]
        lines.append(
            f"| {c['precision']} | {c['case']} | {c['prompt_tokens']} ({c['text_tokens']} + {c['visual_tokens']}) "
            f"| {c.get('context_tokens', '-')} | {c['load_seconds']:.1f} | {_g(smi)} | {_g(alloc)} | {_g(res)} "
            f"| {_g(weights)} | {_g(est.weights)} | {_g(est.total)} | {_g(diff[0], '+.3f')} | {_g(diff[1], '+.3f')} "
            f"| {_g(diff[2], '+.3f')} | {_g(prefill)} | {_g(est.activations)} | {c['status']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu-workload-out")
    p.add_argument("--model", default="autoglm-phone-9b")
    p.add_argument("--precisions", default="bf16,nf4,int8")
    p.add_argument("--text", default="8192,65536", help="text cases: context = prompt + generated tokens")
    p.add_argument("--screens", default="1,3", help="screenshot cases: images per prompt")
    p.add_argument("--screen-size", default="1080x2400", help="WIDTHxHEIGHT of each generated screenshot")
    p.add_argument("--screen-text", type=int, default=1000, help="non-visual tokens beside the screenshots")
    p.add_argument("--screen-cases", default="", help="IMAGES:TEXT,... screenshot cases (instead of --screens and "
                                                      "--screen-text), e.g. 1:1000,3:1000,1:22368")
    p.add_argument("--new-tokens", type=int, default=4)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "gpu-workload"))
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--deadline", type=float, default=560.0, help="seconds for the whole run; later precisions are skipped")
    p.add_argument("--reuse", help="measure this model folder instead of writing a synthetic one (kept)")
    p.add_argument("--allow-held-out", action="store_true", help="measure the held-out cases (later session only)")
    p.add_argument("--report", help="a gpu-workload-fit.json: print (or --md write) the table against the estimator")
    p.add_argument("--md", help="with --report or --compare: write the table here")
    p.add_argument("--predict", metavar="FILE", help="write the estimator's predictions for the cases to FILE (no GPU)")
    p.add_argument("--compare", nargs=2, metavar=("PREDICTED", "MEASURED"),
                   help="predicted vs measured: the held-out table")
    p.add_argument("--child-build", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--json-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.predict:
        Path(args.predict).write_text(json.dumps(predict(args), indent=2) + "\n")
        return 0
    if args.compare:
        table = compare(Path(args.compare[0]), Path(args.compare[1]))
        if args.md:
            Path(args.md).write_text(table)
        print(table)
        return 0
    if args.report:
        table = report(Path(args.report))
        if args.md:
            Path(args.md).write_text(table)
        print(table)
        return 0
    if args.child_build:
        return _child_build(args)
    if args.child_run:
        return _child_run(args)
    return _parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
