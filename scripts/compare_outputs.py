#!/usr/bin/env python3
"""Prove that two trees of ``provision`` behave byte-identically on the command line.

Made for refactors that move code but must not change behaviour. It materialises two trees,
runs the same set of ``python -m provision ...`` invocations in each, and compares exit codes,
stdout, stderr and every file the invocations wrote (path, permission bits and bytes).

Usage::

    python scripts/compare_outputs.py --before REF [--after REF_OR_PATH] [--fast] [--keep DIR]
                                      [--allow matrix-digest] [--jobs N] [--filter REGEX] [--list]
                                      [--python EXE] [--quiet] [--max-diff-lines N]

    # the usual check before committing a refactor: HEAD against the working tree, no network
    python scripts/compare_outputs.py --before HEAD --fast
    # two commits against each other, with real hash resolution for a few renders (PyPI)
    python scripts/compare_outputs.py --before main~3 --after main --allow matrix-digest

``--before`` is a git ref, checked out with ``git worktree add --detach`` into a temporary folder
(and removed again with ``git worktree remove``). ``--after`` is a git ref (the same way) or a
folder (default ``.``, the working tree; ``--before`` may be a folder too). A folder is copied
first (``git ls-files`` of its tracked and untracked, not ignored, files), so concurrent edits
cannot change it halfway through a run and ignored leftovers such as ``build/`` cannot leak in.
Both trees then sit at paths of the same length. That way rich wraps its output at the same
columns in both trees.

``--python`` (default: this interpreter) runs both trees. It needs provision's runtime
dependencies (jinja2, rich, packaging, requests, nvidia-ml-py) but not its smoke extras. With torch
installed, the smoke cases that would load a model are left out.

Every invocation runs with ``cwd`` = the tree and ``PYTHONPATH`` = the tree. ``HOME``,
``XDG_*`` and ``TMPDIR`` point into a fresh folder for each case. ``COLUMNS=120``, ``TERM=dumb``,
``NO_COLOR=1``, ``LC_ALL=C.UTF-8``, ``TZ=UTC`` and ``PYTHONHASHSEED=0`` are set. ``PROVISION_*``,
``PYTHON*``, ``CUDA_*``, ``HF_*`` and colour and terminal variables are removed from the caller's
environment unless a case sets them on purpose. Network and pip settings (proxies, CA bundles,
``PIP_*``) pass through unchanged, and ``uv`` keeps the caller's cache.

What the cases cover (``--list`` prints them):

* ``help``: ``--help`` and ``--version`` of the program and of every subcommand.
* ``plan``: every ``tests/fixtures/hosts/*.json`` as JSON and as text, with option combinations
  (precision, context, device, model, Python, torch, variant, a local model folder, broken
  matrices through ``--matrix``).
* ``render``: every host (with the default ``--engine auto`` and with ``--engine transformers``),
  with option combinations (SGLang and vLLM among them), runner labels, a wheelhouse, index URLs
  (option and environment variable), ``--plan`` from a saved plan (an engine plan too), re-render,
  edit, ``--force``, and an ``--out`` inside the tree. ``--fast`` passes ``--no-resolve``
  everywhere (no network). Without ``--fast``, a few hosts also render with real ``uv pip
  compile`` hash resolution against PyPI, and with ``--wheelhouse auto``.
* ``hostile``: every file under ``tests/fixtures/hostile`` through the command that reads it
  (hosts: ``plan``, and ``render`` for the five that tests/test_hostile.py renders; plans:
  ``render --plan``; locks: ``doctor --lock`` and ``smoke --lock``). Also huge and deeply
  nested inputs, bad options, hostile model ids, index URLs, wheelhouses and runner labels.
* ``detect``: ``detect`` behind a stand-in ``nvidia-smi`` on ``PATH`` that answers from
  ``tests/fixtures/nvidia-smi/<scenario>.*`` (``CUDA_VISIBLE_DEVICES`` included), and the
  no-GPU path. NVML is not faked: on a machine with a real NVIDIA driver, NVML answers first.
  ``/proc/driver/nvidia`` cannot be faked from outside.
* ``doctor``: plain, ``--json``, ``--model``, the stand-in GPU, and ``--lock`` on a fresh render.
* ``smoke``: the paths that stop before loading a model.
* ``matrix``: ``matrix refresh`` against ``tests/fixtures/pytorch-index``. A ``sitecustomize.py``
  on ``PYTHONPATH``, used only for these cases, answers ``requests`` for
  ``https://download.pytorch.org/whl/<variant>/`` from the recorded pages (404 for the others).
  The cases cover an up-to-date matrix, a stale copy of ``matrices/`` (dry run, ``--write``, run
  again), a broken copy, and variants without a page.

The case list and the inputs they make (fixture names, a model's ``config.json``) come from the
``--before`` tree. The stand-in ``nvidia-smi`` and the index pages also read their recordings from
the ``--before`` tree, so both trees get the same inputs.

Normalisation replaces only what must differ between two folders or two runs:

* each tree's temporary root becomes ``<RUN>``; ``tempfile`` names (below a case's TMPDIR, and
  the ``.NAME.xxxxxxxx`` staging file of an atomic write) and ``0x...`` object addresses in
  messages are masked;
* where that changed a file, the sha256 of the file's old bytes becomes that of its new bytes
  wherever an output records it (the lock's ``files``, the Dockerfile's requirements label);
* cases that read the real machine (``detect``, ``doctor``) have free disk space and available
  RAM masked, because they change from one second to the next;
* ``--allow matrix-digest`` masks the lock's ``inputs.matrix_digest``, the same hex value
  wherever else it appears, and (as above) the checksums of files that held it. A case that
  differs only there is reported as ``expected``, not as a difference, and counted separately.

Exit status: 0 when every case is ``same`` or ``expected``, 1 when any case differs, 2 on a
usage or setup error. ``--keep DIR`` writes the normalised outputs of both trees under
``DIR/before`` and ``DIR/after`` for ``diff -r``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# ---------------------------------------------------------------------------------------------
# What a case is

CASE_DIR = "@CASE@"  # in argv and environment values: this case's folder (captured)
TREE_DIR = "@TREE@"  # in argv and environment values: the tree under test
ETC_FROM_TREE = "@ETC@"  # in argv: /etc as a relative path from the tree (a ../ traversal)

FIXTURES = "tests/fixtures"
HOSTS_DIR = f"{FIXTURES}/hosts"
HOSTILE_DIR = f"{FIXTURES}/hostile"
SMI_DIR = f"{FIXTURES}/nvidia-smi"
INDEX_DIR = f"{FIXTURES}/pytorch-index"
A10G = f"{HOSTS_DIR}/linux-x86_64-a10g-driver535.json"
H100 = f"{HOSTS_DIR}/linux-x86_64-h100-80gb-driver580.json"
CPU_ONLY = f"{HOSTS_DIR}/linux-x86_64-cpu-only-32gb.json"


@dataclass(frozen=True)
class Run:
    """One ``python -m provision ARGV`` call."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    stdout_to: str | None = None  # also save stdout as this case-relative file
    timeout: float = 120.0


@dataclass(frozen=True)
class WriteFile:
    """Create a case-relative file before the next step."""

    path: str
    data: bytes


@dataclass(frozen=True)
class AppendFile:
    """Append to a case-relative file (to simulate a hand edit)."""

    path: str
    data: bytes


@dataclass(frozen=True)
class CopyFromTree:
    """Copy a tree-relative folder into the case folder."""

    src: str
    dst: str


@dataclass(frozen=True)
class ReplaceInFile:
    """Replace the first ``old`` in a case-relative text file (``old`` None: append ``new``)."""

    path: str
    old: str | None
    new: str


Step = Run | WriteFile | AppendFile | CopyFromTree | ReplaceInFile


@dataclass(frozen=True)
class Case:
    """A named sequence of steps in a fresh folder; everything written there is compared."""

    name: str
    steps: tuple[Step, ...]
    volatile: bool = False  # reads the real machine: mask free disk space and available RAM
    fake_smi: str | None = None  # the stand-in nvidia-smi answers as this recorded scenario
    fake_index: bool = False  # requests for the PyTorch wheel index are answered from recordings
    capture_tree: tuple[str, ...] = ()  # tree-relative folders the case writes into, also compared


def run(*argv: str, env: Mapping[str, str] | None = None, stdout_to: str | None = None,
        timeout: float = 120.0) -> Run:
    return Run(argv=tuple(argv), env=tuple(sorted((env or {}).items())), stdout_to=stdout_to, timeout=timeout)


def out_dir(name: str = "out") -> str:
    return f"{CASE_DIR}/{name}"


def host_stem(path: str) -> str:
    return Path(path).stem


# ---------------------------------------------------------------------------------------------
# The cases


@dataclass(frozen=True)
class Inputs:
    """What the case list is built from, read once from the --before tree."""

    hosts: tuple[str, ...]
    hostile: dict[str, tuple[str, ...]]
    smi_scenarios: tuple[str, ...]
    model_ids: tuple[str, ...]
    model_configs: dict[str, bytes]
    index_pages: tuple[str, ...]
    torch_installed: bool


def read_inputs(tree: Path, python: str) -> Inputs:
    hosts = tuple(sorted(f"{HOSTS_DIR}/{p.name}" for p in (tree / HOSTS_DIR).glob("*.json")))
    hostile = {kind: tuple(sorted(f"{HOSTILE_DIR}/{kind}/{p.name}" for p in (tree / HOSTILE_DIR / kind).glob("*.json")))
               for kind in ("hosts", "plans", "locks")}
    scenarios = sorted({p.name.split(".", 1)[0] for p in (tree / SMI_DIR).glob("*.*.txt")})
    catalog = tomllib.loads((tree / "matrices" / "models.toml").read_text(encoding="utf-8"))
    models = [m for m in catalog.get("model", []) if isinstance(m, dict) and isinstance(m.get("id"), str)]
    configs = {m["id"]: (json.dumps(m["config"], indent=2) + "\n").encode() for m in models
               if isinstance(m.get("config"), dict)}
    pages = tuple(sorted(p.stem for p in (tree / INDEX_DIR).glob("*.html")))
    probe = subprocess.run([python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"],
                           capture_output=True, check=False)
    return Inputs(hosts=hosts, hostile=hostile, smi_scenarios=tuple(scenarios), model_ids=tuple(m["id"] for m in models),
                  model_configs=configs, index_pages=pages, torch_installed=probe.returncode == 0)


def help_cases() -> Iterator[Case]:
    yield Case("help/no-arguments", (run(),))
    yield Case("help/--help", (run("--help"),))
    yield Case("help/--version", (run("--version"),))
    for sub in ("detect", "plan", "render", "smoke", "doctor", "build", "matrix"):
        yield Case(f"help/{sub}", (run(sub, "--help"),))
    yield Case("help/matrix-refresh", (run("matrix", "refresh", "--help"),))
    yield Case("help/matrix-no-subcommand", (run("matrix"),))
    yield Case("help/unknown-command", (run("frobnicate"),))


#: Option combinations planned for every host (JSON).
EVERY_HOST_COMBOS: dict[str, tuple[str, ...]] = {
    "nf4": ("--precision", "nf4"),
    "int8": ("--precision", "int8"),
    "fp16": ("--precision", "fp16"),
    "ctx32768": ("--context", "32768"),
    "cpu": ("--device", "cpu"),
    "glm-4-9b-chat-hf": ("--model", "glm-4-9b-chat-hf"),
    "engine-transformers": ("--engine", "transformers"),  # the default is auto
}

RTX4090X2 = f"{HOSTS_DIR}/linux-x86_64-2x-rtx4090-driver550.json"
RTX3070 = f"{HOSTS_DIR}/linux-x86_64-rtx3070-8gb-driver550.json"  # no viable plan by default
MACOS = f"{HOSTS_DIR}/macos-arm64-m2-32gb.json"
WINDOWS = f"{HOSTS_DIR}/windows-x86_64-rtx4070-driver566.json"
GH200 = f"{HOSTS_DIR}/linux-aarch64-gh200-driver570.json"

#: Hosts that also get the combinations above as text.
TEXT_HOSTS = (A10G, RTX4090X2, RTX3070)
#: Hosts that also get the extra combinations below and every catalog model.
EXTRA_HOSTS = (A10G, H100, CPU_ONLY, MACOS)

EXTRA_COMBOS: dict[str, tuple[str, ...]] = {
    "fp32": ("--precision", "fp32"),
    "bf16": ("--precision", "bf16"),
    "cuda": ("--device", "cuda"),
    "mps": ("--device", "mps"),
    "py3.12": ("--python", "3.12"),
    "py3.10": ("--python", "3.10"),
    "torch2.9.1": ("--torch", "2.9.1"),
    "cu128": ("--variant", "cu128"),
    "variant-cpu": ("--variant", "cpu"),
    "ctx1": ("--context", "1"),
    "ctx-max": ("--context", "10000000"),
    "nf4-ctx32768-chat": ("--precision", "nf4", "--context", "32768", "--model", "glm-4-9b-chat-hf"),
    "index-url": ("--index-url", "https://mirror.example/simple"),
}


def plan_cases(inputs: Inputs) -> Iterator[Case]:
    present = set(inputs.hosts)
    for host in inputs.hosts:
        stem = host_stem(host)
        yield Case(f"plan/json/{stem}", (run("plan", "--host", host, "--json"),))
        yield Case(f"plan/text/{stem}", (run("plan", "--host", host),))
        for label, opts in EVERY_HOST_COMBOS.items():
            yield Case(f"plan/json/{stem}/{label}", (run("plan", "--host", host, *opts, "--json"),))
    for host in (h for h in TEXT_HOSTS if h in present):
        for label, opts in EVERY_HOST_COMBOS.items():
            yield Case(f"plan/text/{host_stem(host)}/{label}", (run("plan", "--host", host, *opts),))
    for host in (h for h in EXTRA_HOSTS if h in present):
        stem = host_stem(host)
        for label, opts in EXTRA_COMBOS.items():
            yield Case(f"plan/json/{stem}/{label}", (run("plan", "--host", host, *opts, "--json"),))
        for model in inputs.model_ids:
            if model not in EVERY_HOST_COMBOS:
                yield Case(f"plan/json/{stem}/model-{model}", (run("plan", "--host", host, "--model", model, "--json"),))
    for model, config in sorted(inputs.model_configs.items())[:2]:
        folder = f"models/My {model}"
        steps = (WriteFile(f"{folder}/config.json", config),
                 run("plan", "--host", A10G, "--model", f"{CASE_DIR}/{folder}"),
                 run("plan", "--host", A10G, "--model", f"{CASE_DIR}/{folder}", "--json"))
        yield Case(f"plan/local-model-dir/{model}", steps)
    yield Case("plan/no-host-file", (run("plan", "--host", f"{CASE_DIR}/nope.json", "--json"),))
    yield Case("plan/host-is-a-directory", (run("plan", "--host", HOSTS_DIR),))
    yield Case("plan/unknown-model", (run("plan", "--host", A10G, "--model", "no-such-model", "--json"),))
    yield from broken_matrix_cases()


#: (label, file, old text or None to append, new text): one broken matrix each, planned with --matrix.
MATRIX_BREAKS = (
    ("cuda-unclosed-table", "cuda.toml", None, "\n[[family]\n"),
    ("cuda-schema-2", "cuda.toml", "schema_version = 1", "schema_version = 2"),
    ("cuda-schema-string", "cuda.toml", "schema_version = 1", 'schema_version = "1"'),
    ("torch-version-word", "torch.toml", 'version = "2.', 'version = "two.'),
    ("torch-arch-typo", "torch.toml", '"sm_80"', '"sm80"'),
    ("models-schema-99", "models.toml", "schema_version = 1", "schema_version = 99"),
)


def broken_matrix_cases() -> Iterator[Case]:
    yield Case("plan/matrix-copy", (CopyFromTree("matrices", "m"),
                                    run("plan", "--host", A10G, "--matrix", f"{CASE_DIR}/m", "--json")))
    for label, name, old, new in MATRIX_BREAKS:
        steps = (CopyFromTree("matrices", "m"), ReplaceInFile(f"m/{name}", old, new),
                 run("plan", "--host", A10G, "--matrix", f"{CASE_DIR}/m", "--json"))
        yield Case(f"plan/broken-matrix/{label}", steps)
    yield Case("plan/matrix-missing", (run("plan", "--host", A10G, "--matrix", f"{CASE_DIR}/none"),))


#: Hosts that also render with the combinations below.
RENDER_HOSTS = (A10G, H100, CPU_ONLY, RTX4090X2, MACOS, WINDOWS)
RENDER_COMBOS: dict[str, tuple[str, ...]] = {
    "nf4": ("--precision", "nf4"),
    "cpu": ("--device", "cpu"),
    "glm-4-9b-chat-hf": ("--model", "glm-4-9b-chat-hf"),
    "ctx32768": ("--context", "32768"),
    "engine-sglang": ("--engine", "sglang"),
    "engine-vllm-ctx16384": ("--engine", "vllm", "--context", "16384"),
}


def render(host: str, *extra: str, out: str = "out", resolve: bool = False, timeout: float = 120.0) -> Run:
    flags = () if resolve else ("--no-resolve",)
    return run("render", "--host", host, "--out", out_dir(out), *flags, *extra, timeout=timeout)


def render_cases(inputs: Inputs, fast: bool) -> Iterator[Case]:
    present = set(inputs.hosts)
    for host in inputs.hosts:
        yield Case(f"render/{host_stem(host)}", (render(host),))
        yield Case(f"render/{host_stem(host)}/engine-transformers", (render(host, "--engine", "transformers"),))
    for host in (h for h in RENDER_HOSTS if h in present):
        stem = host_stem(host)
        yield Case(f"render/{stem}/json", (render(host, "--json"),))
        for label, opts in RENDER_COMBOS.items():
            yield Case(f"render/{stem}/{label}", (render(host, *opts),))
    yield Case("render/runner-labels", (render(H100, "--gpu-runner", "self-hosted", "--gpu-runner", "h100",
                                               "--cpu-runner", "ubuntu-24.04"),))
    wheel = "wheels/torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    yield Case("render/wheelhouse-option", (WriteFile(wheel, b""),
                                            render(CPU_ONLY, "--wheelhouse", f"{CASE_DIR}/wheels", "--json")))
    yield Case("render/wheelhouse-env", (WriteFile(wheel, b""),
                                         run("render", "--host", CPU_ONLY, "--out", out_dir(), "--no-resolve",
                                             env={"PROVISION_WHEELHOUSE": f"{CASE_DIR}/wheels"})))
    yield Case("render/wheelhouse-empty", (WriteFile("wheels/README", b"no wheels\n"),
                                           render(A10G, "--wheelhouse", f"{CASE_DIR}/wheels")))
    yield Case("render/index-url-option", (render(A10G, "--index-url", "https://mirror.example/whl/cu126"),))
    yield Case("render/index-url-env", (run("render", "--host", A10G, "--out", out_dir(), "--no-resolve",
                                            env={"PROVISION_INDEX_URL": "https://mirror.example/simple"}),))
    yield Case("render/python-torch-variant", (render(A10G, "--python", "3.12", "--torch", "2.9.1",
                                                      "--variant", "cu128"),))
    yield Case("render/from-plan-file", (run("plan", "--host", H100, "--precision", "nf4", "--json",
                                             stdout_to="plan.json"),
                                         run("render", "--plan", f"{CASE_DIR}/plan.json", "--host", H100,
                                             "--out", out_dir(), "--no-resolve"),
                                         run("render", "--plan", f"{CASE_DIR}/plan.json", "--host", H100,
                                             "--out", out_dir("json"), "--no-resolve", "--json")))
    yield Case("render/from-engine-plan-file", (run("plan", "--host", H100, "--engine", "auto", "--json",
                                                    stdout_to="plan.json"),
                                                run("render", "--plan", f"{CASE_DIR}/plan.json", "--host", H100,
                                                    "--out", out_dir(), "--no-resolve")))
    yield Case("render/rerender-edit-force", (render(A10G), render(A10G),
                                              AppendFile("out/install.sh", b"# edited by hand\n"),
                                              render(A10G), render(A10G, "--force")))
    yield Case("render/stray-file-in-out", (WriteFile("out/notes.txt", b"mine\n"), render(A10G)))
    yield Case("render/out-is-a-file", (WriteFile("out", b"a file\n"), render(A10G)))
    yield Case("render/no-viable-plan", (render(RTX3070, "--json"),))
    tree_out = "build/provision/compare-outputs-in-tree"
    yield Case("render/out-inside-tree", (run("render", "--host", A10G, "--out", tree_out, "--no-resolve"),),
               capture_tree=(tree_out,))
    config = inputs.model_configs.get("autoglm-phone-9b")
    if config is not None:
        yield Case("render/local-model-dir", (WriteFile("models/Phone Model/config.json", config),
                                              render(A10G, "--model", f"{CASE_DIR}/models/Phone Model", "--json")))
    if not fast:
        for host in (A10G, H100, CPU_ONLY, MACOS, WINDOWS, GH200):
            if host in present:
                yield Case(f"render-resolved/{host_stem(host)}", (render(host, resolve=True, timeout=600),))
        yield Case("render-resolved/wheelhouse-option", (WriteFile(wheel, b""),
                                                         render(CPU_ONLY, "--wheelhouse", f"{CASE_DIR}/wheels",
                                                                resolve=True, timeout=600)))
        yield Case("render-resolved/wheelhouse-auto", (render(CPU_ONLY, "--wheelhouse", "auto", resolve=True,
                                                              timeout=600),))


HOSTILE_MODEL_IDS = (
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "autoglm-phone-9b; touch /tmp/pwned",
    "autoglm-phone-9b\uff1btouch /tmp/pwned",
    "autoglm-phone-9b\u202e",
    "autoglm-phone-9b\nRUN touch /tmp/pwned",
    "autoglm-phone-9b' && touch /tmp/pwned && '",
    'autoglm-phone-9b" && touch /tmp/pwned && "',
    "AUTOGLM-PHONE-9B",
)

BAD_OPTIONS: tuple[tuple[str, ...], ...] = (
    ("plan", "--context", "-5"),
    ("plan", "--context", "0"),
    ("plan", "--context", "1e309"),
    ("plan", "--precision", "int3"),
    ("plan", "--device", "tpu"),
    ("plan", "--python", "3.11; touch /tmp/pwned"),
    ("plan", "--python", "2.7"),
    ("plan", "--torch", "latest"),
    ("plan", "--variant", "cu12$(id)"),
    ("plan", "--bogus"),
    ("plan", "\n"),
    ("render",),
    ("render", "--out"),
    ("smoke", "--tiny", "--synthetic"),
    ("smoke", "--new-tokens", "0"),
    ("build",),
)

HOSTILE_SOURCES = (
    ("--index-url", "https://mirror.example/simple$(touch MARK)"),
    ("--index-url", "https://user:secret@mirror.example/simple"),
    ("--index-url", "https://mirror.example/simple\nRUN touch MARK"),
    ("--index-url", "http://mirror.example/simple"),
    ("--wheelhouse", "/wheels;touch MARK"),
    ("--wheelhouse", "/wheels/../../etc"),
    ("--wheelhouse", "/wheels `touch MARK`"),
    ("--gpu-runner", "x; rm -rf /"),
    ("--cpu-runner", "$(id)"),
)


#: Hostile host profiles that also go through render (tests/test_hostile.py's choice); the rest are planned only.
RENDERED_HOSTILE = frozenset({"free-above-total.json", "truncated.json", "gpu-name-newline.json",
                              "driver-injection.json", "unknown-schema.json"})


def hostile_cases(inputs: Inputs) -> Iterator[Case]:
    for path in inputs.hostile["hosts"]:
        steps = (run("plan", "--host", path, "--json"), *((render(path),) if Path(path).name in RENDERED_HOSTILE else ()))
        yield Case(f"hostile/hosts/{Path(path).stem}", steps)
    for path in inputs.hostile["plans"]:
        yield Case(f"hostile/plans/{Path(path).stem}",
                   (run("render", "--plan", path, "--host", A10G, "--out", out_dir(), "--no-resolve"),))
    for path in inputs.hostile["locks"]:
        yield Case(f"hostile/locks/{Path(path).stem}",
                   (run("doctor", "--lock", path, "--json"),
                    run("smoke", "--lock", path, "--json", "-o", f"{CASE_DIR}/smoke.json")), volatile=True)
    huge = b"{" + b" " * (8 * 1024 * 1024 + 16) + b"}"
    deep = b"[" * 100_000 + b"]" * 100_000
    for label, data in (("huge", huge), ("deep", deep)):
        yield Case(f"hostile/generated/{label}-host", (WriteFile("in/host.json", data),
                                                       run("plan", "--host", f"{CASE_DIR}/in/host.json")))
        yield Case(f"hostile/generated/{label}-plan", (WriteFile("in/plan.json", data),
                                                       run("render", "--plan", f"{CASE_DIR}/in/plan.json", "--host",
                                                           A10G, "--out", out_dir(), "--no-resolve")))
        yield Case(f"hostile/generated/{label}-lock", (WriteFile("in/provision.lock.json", data),
                                                       run("doctor", "--lock", f"{CASE_DIR}/in/provision.lock.json")),
                   volatile=True)
    for i, argv in enumerate(BAD_OPTIONS):
        extra = ("--host", A10G) if argv[0] == "plan" else ()
        yield Case(f"hostile/options/{i:02d}-{slug(' '.join(argv))}", (run(*argv, *extra),))
    for i, model in enumerate(HOSTILE_MODEL_IDS):
        yield Case(f"hostile/model-id/{i:02d}-{slug(model)}", (run("plan", "--host", A10G, "--model", model, "--json"),))
    yield Case("hostile/model-path-traversal", (run("plan", "--host", A10G, "--model", ETC_FROM_TREE),))
    for i, (option, value) in enumerate(HOSTILE_SOURCES):
        yield Case(f"hostile/sources/{i:02d}-{slug(option + ' ' + value)}", (render(A10G, option, value),))
    config = inputs.model_configs.get("autoglm-phone-9b")
    if config is not None:
        for i, dirname in enumerate(("m$(touch MARK)", "m`touch MARK`", "m;touch MARK", "m'q\"x", "--model")):
            yield Case(f"hostile/model-dir/{i:02d}-{slug(dirname)}",
                       (WriteFile(f"models/{dirname}/config.json", config),
                        render(A10G, "--model", f"{CASE_DIR}/models/{dirname}", "--json")))


def detect_cases(inputs: Inputs) -> Iterator[Case]:
    yield Case("detect/no-gpu/json", (run("detect", "--json"),), volatile=True)
    yield Case("detect/no-gpu/text", (run("detect"),), volatile=True)
    for scenario in inputs.smi_scenarios:
        yield Case(f"detect/smi/{scenario}/json", (run("detect", "--json"),), volatile=True, fake_smi=scenario)
        yield Case(f"detect/smi/{scenario}/text", (run("detect"),), volatile=True, fake_smi=scenario)
    if "2x-rtx4090-550" in inputs.smi_scenarios:
        for value in ("1", "0,1", "1,0", "", "GPU-nonexistent", "-1"):
            yield Case(f"detect/smi/2x-rtx4090-550/cuda-visible-devices={value!r}",
                       (run("detect", "--json", env={"CUDA_VISIBLE_DEVICES": value}),),
                       volatile=True, fake_smi="2x-rtx4090-550")
    if "a10g-535" in inputs.smi_scenarios:
        yield Case("detect/smi/a10g-535/output-then-plan-render",
                   (run("detect", "-o", f"{CASE_DIR}/host.json"),
                    run("plan", "--host", f"{CASE_DIR}/host.json", "--json"),
                    run("render", "--host", f"{CASE_DIR}/host.json", "--out", out_dir(), "--no-resolve")),
                   volatile=True, fake_smi="a10g-535")
        yield Case("detect/smi/a10g-535/plan-without-host", (run("plan", "--json"), run("plan")),
                   volatile=True, fake_smi="a10g-535")
        yield Case("detect/smi/a10g-535/doctor", (run("doctor", "--json"), run("doctor")),
                   volatile=True, fake_smi="a10g-535")
    yield Case("detect/no-gpu/plan-without-host", (run("plan", "--json"),), volatile=True)
    yield Case("detect/output-to-directory", (run("detect", "-o", CASE_DIR),), volatile=True)


def doctor_cases(inputs: Inputs) -> Iterator[Case]:
    yield Case("doctor/json", (run("doctor", "--json"),), volatile=True)
    yield Case("doctor/text", (run("doctor"),), volatile=True)
    for model in inputs.model_ids[:3]:
        yield Case(f"doctor/model-{model}", (run("doctor", "--model", model, "--json"),), volatile=True)
    yield Case("doctor/unknown-model", (run("doctor", "--model", "no-such-model"),), volatile=True)
    yield Case("doctor/missing-lock", (run("doctor", "--lock", f"{CASE_DIR}/nope.json"),), volatile=True)
    yield Case("doctor/lock-of-a-render", (render(A10G),
                                           run("doctor", "--lock", f"{CASE_DIR}/out/provision.lock.json", "--json"),
                                           run("doctor", "--lock", f"{CASE_DIR}/out/provision.lock.json")),
               volatile=True)
    yield Case("doctor/lock-of-a-cpu-render", (render(CPU_ONLY),
                                               run("doctor", "--lock", f"{CASE_DIR}/out/provision.lock.json")),
               volatile=True)


def smoke_cases(inputs: Inputs) -> Iterator[Case]:
    yield Case("smoke/model-path-without-config", (run("smoke", "--model-path", CASE_DIR, "--json"),))
    yield Case("smoke/missing-lock", (run("smoke", "--lock", f"{CASE_DIR}/nope.json", "--json"),))
    yield Case("smoke/build-of-an-empty-folder", (run("build", CASE_DIR, "--no-smoke", "--json"),))
    if inputs.torch_installed:
        return  # the remaining cases would load a model
    yield Case("smoke/tiny", (run("smoke", "--tiny", "--json", "-o", f"{CASE_DIR}/smoke.json"),))
    yield Case("smoke/synthetic-nf4", (run("smoke", "--synthetic", "--precision", "nf4"),))
    yield Case("smoke/lock-of-a-render", (render(A10G), run("smoke", "--lock", f"{CASE_DIR}/out/provision.lock.json")))


def matrix_cases(inputs: Inputs) -> Iterator[Case]:
    variants = [arg for page in inputs.index_pages for arg in ("--variant", page)]
    yield Case("matrix/refresh-dry-run", (run("matrix", "refresh", *variants),), fake_index=True)
    yield Case("matrix/refresh-all-variants", (run("matrix", "refresh"),), fake_index=True)
    yield Case("matrix/refresh-unknown-variant", (run("matrix", "refresh", "--variant", "cu999"),), fake_index=True)
    yield Case("matrix/refresh-write-copy", (CopyFromTree("matrices", "m"),
                                             run("matrix", "refresh", "--matrix", f"{CASE_DIR}/m", *variants, "--write"),
                                             run("matrix", "refresh", "--matrix", f"{CASE_DIR}/m", *variants)),
               fake_index=True)
    stale = ReplaceInFile("m/torch.toml", 'version = "2.10.0"\ndate = "2026-01-21"\npythons = ["3.10", "3.11", "3.12", "3.13", '
                          '"3.14"]', 'version = "2.10.0"\ndate = "2026-01-21"\npythons = ["3.11", "3.12"]')
    yield Case("matrix/refresh-stale-copy", (CopyFromTree("matrices", "m"), stale,
                                             run("matrix", "refresh", "--matrix", f"{CASE_DIR}/m", *variants),
                                             run("matrix", "refresh", "--matrix", f"{CASE_DIR}/m", *variants, "--write"),
                                             run("matrix", "refresh", "--matrix", f"{CASE_DIR}/m", *variants)),
               fake_index=True)
    yield Case("matrix/refresh-broken-copy", (CopyFromTree("matrices", "m"),
                                              ReplaceInFile("m/torch.toml", None, "\n[[release]\n"),
                                              run("matrix", "refresh", "--matrix", f"{CASE_DIR}/m", *variants)),
               fake_index=True)


def all_cases(inputs: Inputs, fast: bool) -> list[Case]:
    cases = [*help_cases(), *plan_cases(inputs), *render_cases(inputs, fast), *hostile_cases(inputs),
             *detect_cases(inputs), *doctor_cases(inputs), *smoke_cases(inputs), *matrix_cases(inputs)]
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SystemExit(f"internal error: duplicate case names {duplicates}")
    return cases


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_")[:limit] or "_"


# ---------------------------------------------------------------------------------------------
# The stand-ins: nvidia-smi on PATH, and the PyTorch wheel index behind requests

FAKE_SMI = """#!/bin/sh
# Stand-in for nvidia-smi (compare_outputs.py): answers from $PROVCMP_SMI_DIR/$PROVCMP_SMI.*.txt,
# the recordings tests/test_detect.py replays. A missing recording is a failed call.
dir="${PROVCMP_SMI_DIR:?}"
scenario="${PROVCMP_SMI:-}"
[ -n "$scenario" ] || exit 9
case "$*" in
    "") file="$dir/$scenario.header.txt" ;;
    *compute_cap*) file="$dir/$scenario.query.txt" ;;
    *) file="$dir/$scenario.query-nocc.txt" ;;
esac
if [ ! -f "$file" ] && [ -f "$dir/$scenario.query-error.txt" ] && [ -n "$*" ]; then
    cat "$dir/$scenario.query-error.txt"
    exit 6
fi
[ -f "$file" ] || exit 9
exec cat "$file"
"""

FAKE_INDEX = '''"""compare_outputs.py: answer the PyTorch wheel index from recorded pages (PROVCMP_INDEX_DIR).

On PYTHONPATH only for the ``matrix refresh`` cases; every other request fails like a network without a route.
"""

import os

_PAGES = os.environ.get("PROVCMP_INDEX_DIR")

if _PAGES:
    import requests
    from requests.models import Response
    from requests.sessions import Session

    _PREFIX = "https://download.pytorch.org/whl/"

    def _recorded(self, method, url, *args, **kwargs):
        if not str(url).startswith(_PREFIX):
            raise requests.ConnectionError(f"no network in compare_outputs.py for {url}")
        variant = str(url)[len(_PREFIX):].split("/", 1)[0]
        page = os.path.join(_PAGES, variant + ".html")
        response = Response()
        response.url = str(url)
        response.encoding = "utf-8"
        if os.path.isfile(page):
            response.status_code = 200
            with open(page, "rb") as fh:
                response._content = fh.read()
        else:
            response.status_code = 404
            response._content = b"Not Found"
        return response

    Session.request = _recorded
'''


# ---------------------------------------------------------------------------------------------
# Running a case in one tree


@dataclass
class StepResult:
    label: str
    rc: int | None  # None: timed out
    stdout: bytes
    stderr: bytes


@dataclass
class CaseResult:
    steps: list[StepResult] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # "path [mode]" -> bytes
    seconds: float = 0.0


@dataclass
class Side:
    """One tree under test and where its cases run."""

    label: str  # "before" / "after"
    description: str
    root: Path  # <base>/old or <base>/new: everything of this side lies below
    tree: Path
    python: str  # the interpreter that runs provision
    env: dict[str, str]
    fixtures_from: Path  # the --before tree: recordings for the stand-ins
    results: dict[str, CaseResult] = field(default_factory=dict)
    digests: set[bytes] = field(default_factory=set)

    def case_dir(self, index: int) -> Path:
        return self.root / "c" / f"{index:04d}"

    def home_dir(self, index: int) -> Path:
        return self.root / "h" / f"{index:04d}"


def expand(text: str, side: Side, case_dir: Path) -> str:
    return (text.replace(CASE_DIR, str(case_dir)).replace(TREE_DIR, str(side.tree))
            .replace(ETC_FROM_TREE, os.path.relpath("/etc", side.tree)))


def case_env(side: Side, case: Case, index: int, fakes: Path) -> dict[str, str]:
    home = side.home_dir(index)
    for sub in (".cache", ".config", ".local/share", ".local/state", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env = dict(side.env)
    env.update({
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "TMPDIR": str(home / "tmp"),
        "PYTHONPATH": str(side.tree),
    })
    if case.fake_smi is not None:
        env["PATH"] = f"{fakes / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["PROVCMP_SMI"] = case.fake_smi
        env["PROVCMP_SMI_DIR"] = str(side.fixtures_from / SMI_DIR)
    if case.fake_index:
        env["PYTHONPATH"] = f"{side.tree}{os.pathsep}{fakes / 'shim'}"
        env["PROVCMP_INDEX_DIR"] = str(side.fixtures_from / INDEX_DIR)
    return env


def run_case(side: Side, case: Case, index: int, fakes: Path) -> CaseResult:
    start = time.monotonic()
    case_dir = side.case_dir(index)
    case_dir.mkdir(parents=True, exist_ok=True)
    env = case_env(side, case, index, fakes)
    result = CaseResult()
    for step in case.steps:
        if isinstance(step, Run):
            result.steps.append(run_step(step, side, case_dir, env))
            continue
        try:
            prepare_step(step, side, case_dir)
        except (OSError, ValueError) as exc:  # the tree lacks what the case copies or edits
            result.steps.append(StepResult(label=f"[{type(step).__name__}]", rc=None, stdout=b"",
                                           stderr=f"{type(exc).__name__}: {exc}\n".encode()))
            break
    result.files = snapshot(case_dir, "")
    for rel in case.capture_tree:
        result.files.update(snapshot(side.tree / rel, f"tree:{rel}/"))
    result.seconds = time.monotonic() - start
    return result


def run_step(step: Run, side: Side, case_dir: Path, env: Mapping[str, str]) -> StepResult:
    argv = [expand(a, side, case_dir) for a in step.argv]
    step_env = {**env, **{k: expand(v, side, case_dir) for k, v in step.env}}
    try:
        proc = subprocess.run([side.python, "-m", "provision", *argv], cwd=side.tree, env=step_env,
                              capture_output=True, stdin=subprocess.DEVNULL, timeout=step.timeout, check=False)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, exc.stdout or b"", (exc.stderr or b"") + b"\n[compare_outputs: timed out]\n"
    if step.stdout_to is not None:
        (case_dir / step.stdout_to).write_bytes(out)
    env_note = " ".join(f"{k}={v!r}" for k, v in step.env)
    return StepResult(label=f"{env_note} provision {' '.join(step.argv)}".strip(), rc=rc, stdout=out, stderr=err)


def prepare_step(step: WriteFile | AppendFile | CopyFromTree | ReplaceInFile, side: Side, case_dir: Path) -> None:
    if isinstance(step, WriteFile):
        target = case_dir / step.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(step.data)
    elif isinstance(step, AppendFile):
        with (case_dir / step.path).open("ab") as fh:
            fh.write(step.data)
    elif isinstance(step, CopyFromTree):
        shutil.copytree(side.tree / step.src, case_dir / step.dst)
    else:
        target = case_dir / step.path
        text = target.read_text(encoding="utf-8")
        if step.old is not None and step.old not in text:
            raise ValueError(f"{step.path} does not contain {step.old!r}")
        target.write_text(text + step.new if step.old is None else text.replace(step.old, step.new, 1), encoding="utf-8")


def snapshot(root: Path, prefix: str) -> dict[str, bytes]:
    """Every file, folder and link under ``root``: ``prefix + relative path + [mode]`` -> contents."""
    found: dict[str, bytes] = {}
    if not root.exists():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in [*dirnames, *sorted(filenames)]:
            path = base / name
            rel = prefix + path.relative_to(root).as_posix()
            if path.is_symlink():
                found[f"{rel} [link]"] = str(path.readlink()).encode()
            elif path.is_dir():
                found[f"{rel}/ [{path.stat().st_mode & 0o777:o}]"] = b""
            else:
                found[f"{rel} [{path.stat().st_mode & 0o777:o}]"] = path.read_bytes()
    return found


# ---------------------------------------------------------------------------------------------
# Normalisation and comparison

_ADDRESS = re.compile(rb"\bat 0x[0-9a-fA-F]+")
_TEMP_NAME = re.compile(rb"(<RUN>/h/\d+/tmp/)[^/\s'\"]+")
#: An atomic write's staging file beside its target: ``.NAME.`` + tempfile's 8 random characters.
_STAGING_NAME = re.compile(rb"(<RUN>/(?:[^\s'\"/]+/)*\.[^\s'\"/]+\.)[a-z0-9_]{8}(?![a-z0-9_])")
#: Facts of the real machine that change while the comparison runs.
_VOLATILE: tuple[tuple[re.Pattern[bytes], bytes], ...] = (
    (re.compile(rb'"(disk_free_bytes|ram_available_bytes|free_bytes)": \d+'), rb'"\1": <VOLATILE>'),
    (re.compile(rb"\b\d+(\.\d+)? GB free in\b"), b"<VOLATILE> GB free in"),
    (re.compile(rb"\bdisk free \d+(\.\d+)? GB\b"), b"disk free <VOLATILE> GB"),
)
_DIGEST_RE = re.compile(rb'"matrix_digest": "([0-9a-f]{64})"')
DIGEST_MASK = b"<MATRIX_DIGEST>"
LOCK_NAME = "provision.lock.json"

#: --allow kinds: differences that are accepted and reported as "expected".
ALLOWANCES = {
    "matrix-digest": "the lock's inputs.matrix_digest (and that value wherever else it appears)",
}


def path_subs(side: Side) -> list[tuple[bytes, bytes]]:
    forms = {str(side.root), str(side.root.resolve())}
    return [(f.encode(), b"<RUN>") for f in sorted(forms, key=len, reverse=True)]


def normalise(data: bytes, side: Side, case: Case) -> bytes:
    for old, new in path_subs(side):
        data = data.replace(old, new)
    data = _ADDRESS.sub(b"at 0x<ADDR>", data)
    data = _TEMP_NAME.sub(rb"\1<TMP>", data)
    data = _STAGING_NAME.sub(rb"\1<TMP>", data)
    if case.volatile:
        for pattern, repl in _VOLATILE:
            data = pattern.sub(repl, data)
    return data


def mask_digests(files: Mapping[str, bytes], blobs: Sequence[bytes], digests: set[bytes]) -> tuple[dict[str, bytes],
                                                                                                   list[bytes]]:
    """Mask the matrix digests everywhere (and the checksums of the files that held one)."""

    def mask(data: bytes) -> bytes:
        for digest in digests:
            data = data.replace(digest, DIGEST_MASK)
        return data

    return rehash(files, {k: mask(v) for k, v in files.items()}, [mask(b) for b in blobs])


def rehash(old: Mapping[str, bytes], new: Mapping[str, bytes], blobs: Sequence[bytes]) -> tuple[dict[str, bytes],
                                                                                                 list[bytes]]:
    """Keep the sha256 checksums that outputs record of other outputs true to the normalised bytes.

    The lock records the checksum of every rendered file, and the Dockerfile that of requirements.txt.
    Where normalisation changed a file (a tree path in setup-venv.sh, say), its old checksum becomes
    the checksum of its new bytes wherever it appears, repeated until nothing changes. Then a
    checksum differs only where the file it names really differs.
    """
    current = dict(new)
    mapping: dict[bytes, bytes] = {}
    for _ in range(10):  # checksums of checksums: requirements.txt -> Dockerfile -> lock
        wanted = {hashlib.sha256(old[k]).hexdigest().encode(): hashlib.sha256(current[k]).hexdigest().encode()
                  for k in current if k in old and old[k] != current[k]}
        if wanted == mapping:
            break
        mapping = wanted
        current = {k: substitute(v, mapping) for k, v in new.items()}
    return current, [substitute(b, mapping) for b in blobs]


def substitute(data: bytes, mapping: Mapping[bytes, bytes]) -> bytes:
    for before, after in mapping.items():
        if before in data:
            data = data.replace(before, after)
    return data


def file_path(key: str) -> str:
    """The path part of a snapshot key (``path [mode]``)."""
    return key.rsplit(" [", 1)[0]


@dataclass
class Outcome:
    name: str
    status: str  # "same" | "expected" | "DIFF"
    detail: list[str]
    allowed: list[str]


def flatten(result: CaseResult, side: Side, case: Case) -> tuple[dict[str, bytes], list[bytes]]:
    """The comparable parts of a result: files, and per step label, rc, stdout, stderr."""
    blobs: list[bytes] = []
    for step in result.steps:
        blobs += [normalise(step.label.encode(), side, case), str(step.rc).encode(),
                  normalise(step.stdout, side, case), normalise(step.stderr, side, case)]
    return rehash(result.files, {k: normalise(v, side, case) for k, v in result.files.items()}, blobs)


def compare_case(case: Case, before: Side, after: Side, allow: set[str], max_lines: int) -> Outcome:
    b_files, b_blobs = flatten(before.results[case.name], before, case)
    a_files, a_blobs = flatten(after.results[case.name], after, case)
    if b_files == a_files and b_blobs == a_blobs:
        return Outcome(case.name, "same", [], [])
    allowed: list[str] = []
    if "matrix-digest" in allow:
        mb_files, mb_blobs = mask_digests(b_files, b_blobs, before.digests)
        ma_files, ma_blobs = mask_digests(a_files, a_blobs, after.digests)
        if mb_files != b_files or ma_files != a_files or mb_blobs != b_blobs or ma_blobs != a_blobs:
            allowed.append("matrix-digest")
        b_files, b_blobs, a_files, a_blobs = mb_files, mb_blobs, ma_files, ma_blobs
        if b_files == a_files and b_blobs == a_blobs:
            return Outcome(case.name, "expected", [], allowed)
    return Outcome(case.name, "DIFF", describe(case, before.results[case.name], b_files, b_blobs, a_files, a_blobs,
                                               max_lines), allowed)


def describe(case: Case, before: CaseResult, b_files: Mapping[str, bytes], b_blobs: Sequence[bytes],
             a_files: Mapping[str, bytes], a_blobs: Sequence[bytes], max_lines: int) -> list[str]:
    """Unified diffs of the first differences, at most ``max_lines`` lines."""
    lines: list[str] = []
    labels = [s.label for s in before.steps]
    if len(b_blobs) != len(a_blobs):
        lines.append(f"  steps run: before {len(b_blobs) // 4}, after {len(a_blobs) // 4}")
    for i in range(0, min(len(b_blobs), len(a_blobs)), 4):
        step = labels[i // 4] if i // 4 < len(labels) else f"step {i // 4 + 1}"
        names = ("command", "exit code", "stdout", "stderr")
        for j, part in enumerate(names):
            if b_blobs[i + j] != a_blobs[i + j]:
                lines += text_diff(f"step {i // 4 + 1} {part}: {shorten(step)}", b_blobs[i + j], a_blobs[i + j])
    only_before = sorted(set(b_files) - set(a_files))
    only_after = sorted(set(a_files) - set(b_files))
    if only_before:
        lines.append("  files only in before: " + ", ".join(only_before))
    if only_after:
        lines.append("  files only in after: " + ", ".join(only_after))
    for key in sorted(set(b_files) & set(a_files)):
        if b_files[key] != a_files[key]:
            lines += text_diff(f"file {key}", b_files[key], a_files[key])
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], f"  ... {len(lines) - max_lines} more diff lines (raise --max-diff-lines)"]
    return lines


def text_diff(title: str, before: bytes, after: bytes) -> list[str]:
    try:
        b_text, a_text = before.decode("utf-8"), after.decode("utf-8")
    except UnicodeDecodeError:
        return [f"  {title}: binary content differs ({len(before)} vs {len(after)} bytes)"]
    if len(before) > 2_000_000 or len(after) > 2_000_000:
        return [f"  {title}: large content differs ({len(before)} vs {len(after)} bytes)"]
    diff = difflib.unified_diff(b_text.splitlines(), a_text.splitlines(), "before", "after", lineterm="", n=2)
    return [f"  {title}", *(f"    {line}" for line in diff)]


def shorten(text: str, limit: int = 100) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Materialising the trees


class SetupError(Exception):
    """The comparison cannot start (bad ref, missing git, an interpreter without dependencies)."""


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SetupError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def resolve_commit(repo: Path, ref: str) -> str:
    """The commit ``ref`` names, or "" when it names none."""
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except SetupError:
        return ""


def add_worktree(repo: Path, commit: str, where: Path, worktrees: list[Path]) -> None:
    git(repo, "worktree", "add", "--detach", "--quiet", str(where), commit)
    worktrees.append(where)


def copy_working_tree(source: Path, where: Path) -> None:
    """Copy a folder's tracked and untracked (not ignored) files; without git, skip usual build debris."""
    proc = subprocess.run(["git", "-C", str(source), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          capture_output=True, check=False)
    if proc.returncode == 0:
        where.mkdir(parents=True)
        for raw in sorted(set(proc.stdout.split(b"\0"))):
            if not raw:
                continue
            rel = os.fsdecode(raw)
            src = source / rel
            if not src.exists() and not src.is_symlink():
                continue  # deleted in the working tree
            dst = where / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():
                dst.symlink_to(src.readlink())
            elif src.is_file():
                shutil.copy2(src, dst)
        return
    shutil.copytree(source, where, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.pyc", "build", ".venv", ".nox", ".pytest_cache", ".mypy_cache", ".ruff_cache"))


#: Removed from the caller's environment: whatever could change provision's output between runs.
_DROP_PREFIXES = ("PROVISION_", "PYTHON", "HF_", "HUGGING_FACE", "TRANSFORMERS_", "CUDA_", "NVIDIA_", "XDG_",
                  "LC_", "JUPYTER_", "TTY_", "CLICOLOR", "CONDA_", "PROVCMP_")
_DROP_NAMES = frozenset({"HOME", "TMPDIR", "TEMP", "TMP", "LANG", "LANGUAGE", "TZ", "COLUMNS", "LINES", "TERM",
                         "NO_COLOR", "FORCE_COLOR", "VIRTUAL_ENV", "UV_CACHE_DIR", "PWD", "OLDPWD"})


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_NAMES and not k.startswith(_DROP_PREFIXES)}
    uv_cache = os.environ.get("UV_CACHE_DIR")
    if not uv_cache and shutil.which("uv"):
        proc = subprocess.run(["uv", "cache", "dir"], capture_output=True, text=True, check=False)
        uv_cache = proc.stdout.strip() if proc.returncode == 0 else None
    if uv_cache:
        env["UV_CACHE_DIR"] = uv_cache  # uv's own download cache: speed only, never output
    env.update({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC", "COLUMNS": "120", "LINES": "50",
                "TERM": "dumb", "NO_COLOR": "1", "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8",
                "UV_NO_PROGRESS": "1"})
    return env


def prepare_side(label: str, spec: str, repo: Path, root: Path, worktrees: list[Path], python: str,
                 env: dict[str, str], fixtures_from: Path | None) -> Side:
    tree = root / "tree"
    root.mkdir(parents=True)
    folder = Path(spec)
    if folder.is_dir():
        copy_working_tree(folder.resolve(), tree)
        description = f"{folder.resolve()} (working tree, copied)"
    else:
        commit = resolve_commit(repo, spec)
        if not commit:
            raise SetupError(f"--{label} {spec!r} is neither a git ref nor a folder")
        add_worktree(repo, commit, tree, worktrees)
        description = f"{spec} ({commit[:12]})"
    if not (tree / "provision").is_dir():
        raise SetupError(f"--{label} {spec}: no provision/ package in that tree")
    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", str(tree / "provision")], capture_output=True,
                   check=False, env={**env, "PYTHONPATH": str(tree)})
    return Side(label=label, description=description, root=root, tree=tree, python=python, env=env,
                fixtures_from=fixtures_from or tree)


def write_fakes(fakes: Path) -> None:
    (fakes / "bin").mkdir(parents=True)
    smi = fakes / "bin" / "nvidia-smi"
    smi.write_text(FAKE_SMI, encoding="utf-8")
    smi.chmod(0o755)
    (fakes / "shim").mkdir()
    (fakes / "shim" / "sitecustomize.py").write_text(FAKE_INDEX, encoding="utf-8")


def preflight(side: Side, python: str) -> None:
    """The --before tree must plan and render with ``python``, or every case would fail alike and look "same"."""
    out = side.root / "preflight"
    proc = subprocess.run([python, "-m", "provision", "render", "--host", A10G, "--out", str(out), "--no-resolve"],
                          cwd=side.tree, env={**side.env, "PYTHONPATH": str(side.tree)}, capture_output=True, text=True,
                          check=False)  # human output: rich, besides jinja2 and packaging
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise SetupError(f"{python} cannot render with the {side.label} tree (install provision's dependencies: "
                         f"jinja2, rich, packaging, requests, nvidia-ml-py; or pass --python):\n{proc.stderr.strip()}")


# ---------------------------------------------------------------------------------------------
# Report


def keep_outputs(keep: Path, cases: Sequence[Case], sides: Sequence[Side]) -> None:
    for side in sides:
        for case in cases:
            folder = keep / side.label / case.name.replace("/", os.sep)
            result = side.results[case.name]
            files, _ = flatten(result, side, case)
            folder.mkdir(parents=True, exist_ok=True)
            summary = []
            for n, step in enumerate(result.steps, 1):
                summary.append(f"{n}: rc={step.rc} {normalise(step.label.encode(), side, case).decode(errors='replace')}")
                (folder / f"{n:02d}.stdout").write_bytes(normalise(step.stdout, side, case))
                (folder / f"{n:02d}.stderr").write_bytes(normalise(step.stderr, side, case))
            (folder / "steps.txt").write_text("\n".join(summary) + "\n", encoding="utf-8")
            for key, data in files.items():
                rel = file_path(key).replace("tree:", "_tree/")
                if rel.endswith("/"):
                    (folder / "files" / rel).mkdir(parents=True, exist_ok=True)
                    continue
                target = folder / "files" / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)


def collect_digests(side: Side) -> None:
    for result in side.results.values():
        for key, data in result.files.items():
            if file_path(key).endswith(LOCK_NAME):
                side.digests.update(_DIGEST_RE.findall(data))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Compare provision's CLI behaviour between two trees, byte for byte.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit: 0 all same (or expected), 1 differences, 2 setup error.")
    p.add_argument("--before", required=True, help="git ref of the reference tree")
    p.add_argument("--after", default=".", help="git ref, or a folder (default: . the working tree)")
    p.add_argument("--fast", action="store_true", help="no network: every render passes --no-resolve")
    p.add_argument("--keep", type=Path, metavar="DIR", help="write both trees' normalised outputs under DIR")
    p.add_argument("--allow", action="append", default=[], choices=sorted(ALLOWANCES),
                   help="accept this kind of difference, reported as 'expected': "
                        + "; ".join(f"{k}: {v}" for k, v in ALLOWANCES.items()))
    p.add_argument("--python", default=sys.executable, help="interpreter that runs both trees (default: this one)")
    p.add_argument("--jobs", type=int, default=max(2, os.cpu_count() or 2), help="cases run at once")
    p.add_argument("--filter", metavar="REGEX", help="only the cases whose name matches")
    p.add_argument("--list", action="store_true", help="print the case names and exit")
    p.add_argument("--quiet", action="store_true", help="do not print a line for every case that is the same")
    p.add_argument("--max-diff-lines", type=int, default=60, help="diff lines shown per differing case")
    p.add_argument("--repo", type=Path, default=Path(), help="git repository of the refs (default: .)")
    return p.parse_args(argv)


def run_all(cases: Sequence[Case], sides: Sequence[Side], fakes: Path, jobs: int,
            progress: Callable[[int, int], None]) -> None:
    tasks = [(side, case, i) for i, case in enumerate(cases) for side in sides]
    done = 0
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(run_case, side, case, i, fakes): (side, case) for side, case, i in tasks}
        for future in concurrent.futures.as_completed(futures):
            side, case = futures[future]
            side.results[case.name] = future.result()
            with lock:
                done += 1
                progress(done, len(tasks))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    try:
        repo = Path(git(args.repo, "rev-parse", "--show-toplevel"))
    except (SetupError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="pcmp-"))
    worktrees: list[Path] = []
    try:
        env = base_env()
        fakes = base / "fakes"
        write_fakes(fakes)
        before = prepare_side("before", args.before, repo, base / "old", worktrees, args.python, env, None)
        preflight(before, args.python)
        inputs = read_inputs(before.tree, args.python)
        cases = all_cases(inputs, args.fast)
        if args.filter:
            cases = [c for c in cases if re.search(args.filter, c.name)]
        if args.list:
            print("\n".join(c.name for c in cases))
            print(f"{len(cases)} cases", file=sys.stderr)
            return 0
        after = prepare_side("after", args.after, repo, base / "new", worktrees, args.python, env, before.tree)
        sides = (before, after)
        print(f"before: {before.description}\nafter:  {after.description}\n"
              f"{len(cases)} cases x 2 trees, {args.jobs} at a time{' (--fast)' if args.fast else ''}"
              + ("; torch is installed: smoke cases that load a model are left out" if inputs.torch_installed else ""),
              flush=True)

        def progress(done: int, total: int) -> None:
            if sys.stderr.isatty():
                print(f"\r  {done}/{total} runs", end="" if done < total else "\n", file=sys.stderr, flush=True)

        run_all(cases, sides, fakes, args.jobs, progress)
        for side in sides:
            collect_digests(side)
        outcomes = [compare_case(c, before, after, set(args.allow), args.max_diff_lines) for c in cases]
        if args.keep:
            keep_outputs(args.keep, cases, sides)
        return report(outcomes, cases, sides, time.monotonic() - start, args)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        for where in worktrees:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(where)], capture_output=True,
                           check=False)
        shutil.rmtree(base, ignore_errors=True)


def report(outcomes: Sequence[Outcome], cases: Sequence[Case], sides: Sequence[Side], seconds: float,
           args: argparse.Namespace) -> int:
    groups: dict[str, list[Outcome]] = {"same": [], "expected": [], "DIFF": []}
    for outcome in outcomes:
        groups[outcome.status].append(outcome)
        if outcome.status == "same" and args.quiet:
            continue
        note = f" ({', '.join(outcome.allowed)})" if outcome.allowed else ""
        print(f"{outcome.status:8s} {outcome.name}{note}")
        for line in outcome.detail:
            print(line)
    per_group: dict[str, list[str]] = {}
    for outcome in outcomes:
        per_group.setdefault(outcome.name.split("/", 1)[0], []).append(outcome.status)
    print("\nby group: " + ", ".join(f"{g} {len(s)} ({s.count('DIFF')} DIFF)" for g, s in per_group.items()))
    if groups["expected"]:
        print(f"expected differences ({', '.join(args.allow)}): {len(groups['expected'])} cases")
    allowed_in_diff = [o.name for o in groups["DIFF"] if o.allowed]
    if allowed_in_diff:
        print(f"  {len(allowed_in_diff)} DIFF cases also hold allowed differences (masked in their diffs)")
    runs = sum(len(side.results[c.name].steps) for side in sides for c in cases)
    slowest = max(cases, key=lambda c: max(s.results[c.name].seconds for s in sides))
    print(f"{len(outcomes)} cases ({runs} provision runs): {len(groups['same'])} same, {len(groups['expected'])} "
          f"expected, {len(groups['DIFF'])} DIFF in {seconds:.0f} s (slowest case: {slowest.name}, "
          f"{max(s.results[slowest.name].seconds for s in sides):.1f} s)")
    if groups["DIFF"]:
        print("DIFF: " + ", ".join(o.name for o in groups["DIFF"][:20])
              + (f" and {len(groups['DIFF']) - 20} more" if len(groups["DIFF"]) > 20 else ""))
        return 1
    print("all identical" + (" (apart from the allowed differences)" if groups["expected"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
