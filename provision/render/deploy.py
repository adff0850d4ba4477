"""The served model as deployments: ``compose.yaml`` and ``k8s/`` (a Deployment, a Service and a PersistentVolumeClaim).

``deploy_files(plan, DeployInputs) -> {path: bytes}`` is pure and deterministic, like the rest of
``provision.render``. Both deployments run the image of the rendered Dockerfile's ``serve`` target, whose
entry is ``serve.sh``: one server command (``plan.serve.argv``) for the venv, ``docker run``, compose and
Kubernetes. What a node must have for the plan (driver branch, compute capability, GPU memory) comes
from the matrix through ``node_floor``, computed once where the matrix is at hand and passed in.

Every value reaching a file is validated here (names as DNS-1123 labels, image references, paths,
numbers as ints) and placed by the templates through ``yamlstr``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from packaging.version import Version

from provision.common.quoting import check_version, sh_quote
from provision.errors import InvalidInput
from provision.plan.compat import BF16_MIN_CC, cc_text, driver_floor
from provision.plan.engine import ENGINE_LABELS
from provision.render.templating import render_template
from provision.vocab import parse_arch

if TYPE_CHECKING:
    from collections.abc import Sequence

    from provision.data import Matrix
    from provision.data.matrix import BnbRelease
    from provision.plan.document import Plan

__all__ = [
    "COMPOSE_PATH",
    "CONTAINER_ARCH",
    "DEPLOY_FILES",
    "K8S_DEPLOYMENT",
    "K8S_PVC",
    "K8S_SERVICE",
    "LINUX_PLATFORM",
    "DeployInputs",
    "NodeFloor",
    "check_image",
    "deploy_files",
    "k8s_name",
    "node_floor",
]

COMPOSE_PATH = "compose.yaml"
K8S_DEPLOYMENT = "k8s/deployment.yaml"
K8S_SERVICE = "k8s/service.yaml"
K8S_PVC = "k8s/pvc.yaml"
DEPLOY_FILES = (COMPOSE_PATH, K8S_DEPLOYMENT, K8S_SERVICE, K8S_PVC)

#: The Dockerfile's stage whose entry is serve.sh (the same folder's Dockerfile, as the serving render writes it).
SERVE_TARGET = "serve"
#: The routes both engines and ``transformers serve`` answer: alive, and the OpenAI model list (ready to serve).
HEALTH_ROUTE = "/health"
READY_ROUTE = "/v1/models"
#: A 20 GB checkpoint downloaded at about 100 Mbit/s takes about 27 minutes; then it loads.
STARTUP_SECONDS = 30 * 60
#: The registry the k8s image name carries until ``--image`` names the user's own.
PLACEHOLDER_REGISTRY = "registry.example.com"
#: The checkpoints the catalog serves are 16-bit: two bytes per parameter on disk, whatever the planned precision.
_CHECKPOINT_BYTES_PER_PARAM = 2
_MIB, _GIB = 2**20, 2**30
#: Where the Hugging Face cache lives in each image, and the user the image runs as (None: root).
#: Our venv image (Dockerfile ``runtime``) runs as 10001 with HF_HOME under its home; the official vLLM and
#: SGLang images run as root with the default cache (vLLM's docs: "currently designed to be run under the root user").
_OWN_IMAGE_HOME, _ENGINE_IMAGE_HOME = "/home/app/.cache/huggingface", "/root/.cache/huggingface"
_OWN_IMAGE_UID = 10001
#: /dev/shm per engine (compose ``shm_size``, k8s memory emptyDir ``sizeLimit``). SGLang's docs run its image with
#: ``--shm-size 32g``; vLLM's say ``--ipc=host`` or ``--shm-size`` (its processes share tensors, under tensor
#: parallelism and through the ``shm`` multimodal processor cache the plan turns on, 4 GiB by default), no figure:
#: SGLang's covers it. transformers serve is one process: 2 GiB is room for torch's own shared tensors.
_SHM_GIB = {"vllm": 32, "sglang": 32, "transformers": 2}
#: GFD's labels (NVIDIA k8s-device-plugin, gpu-feature-discovery). ``cuda.driver-version.*`` replaced the
#: deprecated ``cuda.driver.*``, which GFD still writes; gpu.memory is the GPU's (or MIG slice's) memory in MiB.
GFD_DRIVER_MAJOR = "nvidia.com/cuda.driver-version.major"
GFD_COMPUTE_MAJOR = "nvidia.com/gpu.compute.major"
GFD_COMPUTE_MINOR = "nvidia.com/gpu.compute.minor"
GFD_MEMORY = "nvidia.com/gpu.memory"
#: A host's CPU architecture as containers and Kubernetes name it (``kubernetes.io/arch``, ``linux/<arch>``).
CONTAINER_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
#: The matrix's Linux platform of that architecture (the image's, whatever the host's OS).
LINUX_PLATFORM = {"x86_64": "linux-x86_64", "aarch64": "linux-aarch64", "arm64": "linux-aarch64"}

_DNS_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_NAME_MAX = 50  # the longest suffix added is "-hf-token"; a label is at most 63
_IMAGE_REF_RE = re.compile(
    r"^(?:[a-z0-9]([a-z0-9.-]*[a-z0-9])?(?::[0-9]{1,5})?/)?"  # registry host[:port]/
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"  # repository path
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
_ARG_RE = re.compile(r"^[ -~]{1,200}$")  # printable ASCII: a comment line cannot be broken out of
_WHY_RE = re.compile(r"^[ -~]{1,300}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFloor:
    """What a node's GPU must have for the plan, from the matrix; every field None for a CPU plan.

    ``driver``: the oldest driver that runs ``cuda`` (the CUDA of the image the Dockerfile builds on);
    ``compute``: the lowest compute capability that has kernels in the build and runs the planned
    precision; ``why``: one line per floor, for the manifest's comments; ``share_covers_weights_and_kv``:
    the engine's memory fraction is SGLang's kind (weights and the KV pool only), not vLLM's (everything).
    """

    driver: Version | None = None
    cuda: Version | None = None
    compute: tuple[int, int] | None = None
    why: tuple[str, ...] = ()
    share_covers_weights_and_kv: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployInputs:
    """The render's inputs the deployments need beyond the plan.

    ``arch``: the planned host's CPU architecture (the image's). ``image``: the
    image compose tags its build with and k8s runs; None keeps the defaults (a local name for compose, the
    placeholder registry for k8s).
    """

    floor: NodeFloor
    arch: str
    image: str | None = None
    toolkit_version: str
    #: comment lines on the Linux image of a macOS or Windows host (``provision.render.container.platform_note``)
    platform_note: tuple[str, ...] = ()


# ---------------------------------------------------------------- the node floor (from the matrix)


def _bf16_floor(precision: str | None, bf16_min_cc: tuple[int, int], label: str) -> tuple[tuple[int, int], str] | None:
    return (bf16_min_cc, f"{label} computes in bf16 from {cc_text(bf16_min_cc)}") if precision == "bf16" else None


def _engine_floors(plan: Plan, matrix: Matrix, platform: str) -> tuple[Version, list[tuple[tuple[int, int], str]]]:
    """(the image's CUDA, the compute-capability floors) of an engine plan: kernels, 16-bit type, quantization."""
    serve = plan.serve
    assert serve is not None
    engine = matrix.engines.get(serve.engine)
    release = engine.release(serve.engine_version) if engine is not None else None
    if engine is None or release is None:
        raise InvalidInput("plan", "serve.engine_version",
                           f"{serve.engine} {serve.engine_version} is not in the matrix's engines.toml")
    label = f"{ENGINE_LABELS.get(engine.name, engine.name)} {release.version}"
    floors = []
    kernels = release.min_cc(platform)
    if kernels is not None:
        floors.append((kernels, f"{label}'s kernels start at sm_{kernels[0]}{kernels[1]} ({platform})"))
    dtype_flag = engine.flags.get("dtype")
    if dtype_flag in serve.argv[:-1]:
        dtype = serve.argv[serve.argv.index(dtype_flag) + 1]
        precision = next((p for p, value in engine.precision.dtypes.items() if value == dtype), None)
        bf16 = _bf16_floor(precision, engine.precision.bf16_min_cc, label)
        if bf16 is not None:
            floors.append(bf16)
    if serve.quantization is not None:
        rules = [q for q in engine.quantization
                 if q.method == serve.quantization and q.releases.contains(release.version, prereleases=True)]
        if rules:
            low = min(q.min_cc for q in rules)
            floors.append((low, f"{label} quantizes with {serve.quantization} from {cc_text(low)}"))
    return release.image_cuda, floors


def _torch_floors(plan: Plan, matrix: Matrix, platform: str) -> list[tuple[tuple[int, int], str]]:
    """The compute-capability floors of a transformers plan: the torch build's kernels, bf16, bitsandbytes."""
    release = next((t for t in matrix.torch if t.version == plan.torch_version), None)
    variant = release.variant(plan.variant) if release is not None else None
    if variant is None:
        raise InvalidInput("plan", "torch", f"torch {plan.torch_version} {plan.variant} is not in the matrix's torch.toml")
    floors = []
    archs = [parse_arch(a) for a in (*variant.archs_for(platform), *variant.ptx_for(platform))]
    if archs:
        low = min(archs)
        floors.append((low, f"torch {plan.torch_version} {plan.variant} has kernels from sm_{low[0]}{low[1]} ({platform})"))
    bf16 = _bf16_floor(plan.precision, BF16_MIN_CC, "torch")
    if bf16 is not None:
        floors.append(bf16)
    if plan.precision in ("int8", "nf4"):
        floors.append(_bnb_floor(plan, matrix))
    return floors


def _bnb_floor(plan: Plan, matrix: Matrix) -> tuple[tuple[int, int], str]:
    """bitsandbytes' floor for the plan's int8/nf4: the pinned release's; a pin the matrix does not know
    (a plan file from another matrix) takes the highest floor of the releases it does know."""
    def floor(b: BnbRelease) -> tuple[int, int]:
        return b.min_cc_int8 if plan.precision == "int8" else b.min_cc_4bit

    pinned = plan.packages.get("bitsandbytes")
    known = next((b for b in matrix.bitsandbytes if str(b.version) == pinned), None)
    if known is not None:
        return floor(known), f"bitsandbytes {known.version} runs {plan.precision} from {cc_text(floor(known))}"
    if not matrix.bitsandbytes:
        raise InvalidInput("plan", "packages.bitsandbytes", "the matrix's bitsandbytes.toml lists no release")
    low = max(floor(b) for b in matrix.bitsandbytes)
    return low, (f"bitsandbytes {pinned or '(unpinned)'} is not in bitsandbytes.toml; "
                 f"its releases run {plan.precision} from {cc_text(low)} at most")


def node_floor(plan: Plan, matrix: Matrix, arch: str) -> NodeFloor:
    """The driver and compute-capability floors of a CUDA plan on a Linux node of ``arch``; empty for other plans.

    The driver floor is the oldest driver that runs the CUDA of the image the Dockerfile builds on (the
    engine image's for vLLM/SGLang, the plan's runtime image's otherwise), with minor-version compatibility,
    as the planner judged the host. The compute floor is the highest of: the lowest architecture the build
    has kernels (or PTX) for, bf16's 8.0 where the plan computes in bf16, and the quantization's own floor.

    :raises InvalidInput: the plan's engine, torch build or bitsandbytes pin is not in ``matrix``.
    """
    if plan.device != "cuda" or plan.cuda is None:
        return NodeFloor()
    platform = LINUX_PLATFORM.get(arch)
    if platform is None:
        raise InvalidInput("host", "arch", f"{arch!r} has no Linux container platform")
    engine = matrix.engines.get(plan.serve.engine) if plan.serve is not None else None
    if plan.serve is not None and plan.serve.engine != "transformers":
        cuda, floors = _engine_floors(plan, matrix, platform)
    else:
        cuda, floors = plan.cuda, _torch_floors(plan, matrix, platform)
    driver = driver_floor("linux", matrix, cuda)
    if driver is None:
        raise InvalidInput("plan", "cuda", f"the matrix's cuda.toml has no driver floor for CUDA {cuda}")
    compute = max((cc for cc, _ in floors), default=None)
    why = (f"driver branch >= {driver.major}: the oldest driver that runs CUDA {cuda} builds (cuda.toml)",
           *(text for _, text in floors))
    return NodeFloor(driver=driver, cuda=cuda, compute=compute, why=why,
                     share_covers_weights_and_kv=engine is not None and engine.memory.fraction == "computed")


# ---------------------------------------------------------------- names and values


def k8s_name(served: str) -> str:
    """A DNS-1123 label (and DNS-1035, so a Service may carry it) from a served model name.

    Lower case; runs of characters a label may not hold become one ``-``; a name that does not start
    with a letter gets ``model-`` in front; at most 50 characters, so every suffix added stays a label.

    :raises InvalidInput: nothing of the name is left.
    """
    name = re.sub(r"[^a-z0-9]+", "-", served.lower()).strip("-")
    if name and not name[0].isalpha():
        name = f"model-{name}"
    name = name[:_NAME_MAX].rstrip("-")
    if not _DNS_LABEL_RE.fullmatch(name):
        raise InvalidInput("plan", "serve.served_model_name", f"{served!r} gives no DNS-1123 name")
    return name


def check_image(ref: str) -> str:
    """An image reference with a tag or digest (``registry[:port]/path/name:tag``), lower-case as Docker requires.

    :raises InvalidInput: naming ``--image``.
    """
    if not _IMAGE_REF_RE.fullmatch(ref) or len(ref) > 255 or (":" not in ref.rsplit("/", 1)[-1] and "@" not in ref):
        raise InvalidInput("--image", "image",
                           f"{ref!r} is not an image reference with a tag or digest (registry/name:tag)")
    return ref


def _one_line(text: str, field: str) -> str:
    if not _WHY_RE.fullmatch(text):
        raise InvalidInput("render", field, f"{text!r} is not one printable line")
    return text


def _argv_line(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if not _ARG_RE.fullmatch(arg):
            raise InvalidInput("plan", f"serve.argv[{i}]", f"{arg!r} is not a plain argument")
    return " ".join(sh_quote(a) for a in argv)


# ---------------------------------------------------------------- the server the deployments run


@dataclass(frozen=True, slots=True, kw_only=True)
class _Server:
    engine: str
    label: str
    served: str
    port: int
    argv: tuple[str, ...] | None
    base_image: str | None


def _server(plan: Plan) -> _Server:
    """The plan's server; a transformers plan without a ``serve`` object serves its model id on 8000."""
    serve = plan.serve
    if serve is None:
        return _Server(engine="transformers", label=ENGINE_LABELS["transformers"], served=plan.model_id, port=8000,
                       argv=None, base_image=None)
    version = check_version(serve.engine_version, field="serve.engine_version")
    label = f"{ENGINE_LABELS.get(serve.engine, serve.engine)} {version}"
    if serve.engine != "transformers" and plan.device == "cuda" and serve.tensor_parallel_size != len(plan.placement.gpus):
        raise InvalidInput("plan", "serve.tensor_parallel_size",
                           f"{serve.tensor_parallel_size} differs from the {len(plan.placement.gpus)} GPUs placed")
    return _Server(engine=serve.engine, label=label, served=serve.served_model_name, port=serve.port,
                   argv=tuple(serve.argv), base_image=serve.image)


def _memory_floor_mib(plan: Plan, floor: NodeFloor) -> tuple[int, str]:
    """The GPU memory (MiB) a node's GPU needs: the plan's per-GPU need, over the engine's memory fraction.

    vLLM's fraction covers the whole need. SGLang's covers the weights and the KV pool only, the rest
    comes on top: the GPU needs the whole need, and a share of it that holds weights and the cache.
    """
    gpus = len(plan.placement.gpus) or 1
    per_gpu = math.ceil(plan.placement.required_bytes / gpus)
    share = plan.serve.gpu_memory_utilization if plan.serve is not None else None
    if share and floor.share_covers_weights_and_kv:
        # an engine plan's breakdown is one GPU's (the tightest), its required_bytes all GPUs'
        outside = sum(v for k, v in plan.placement.breakdown.items() if k not in ("weights", "kv_cache"))
        pool = per_gpu - outside  # the weights and the cache of the planned context, per GPU
        mib = math.ceil(max(per_gpu, pool / share) / _MIB)
        return mib, (f"GPU memory >= {mib} MiB: {per_gpu / 1e9:.1f} GB per GPU for the plan, of which "
                     f"{pool / 1e9:.1f} GB (weights and KV cache) is {share:g} of it")
    if share:
        mib = math.ceil(per_gpu / share / _MIB)
        return mib, f"GPU memory >= {mib} MiB: {per_gpu / 1e9:.1f} GB per GPU for the plan is {share:g} of it"
    mib = math.ceil(per_gpu / _MIB)
    return mib, f"GPU memory >= {mib} MiB: the plan needs {per_gpu / 1e9:.1f} GB per GPU"


def _at_least(major_key: str, minor_key: str, floor: tuple[int, int]) -> list[list[dict[str, Any]]]:
    """Label expressions for ``major.minor >= floor`` (GFD writes the two parts as separate integer labels)."""
    major, minor = floor
    if minor == 0:
        return [[{"key": major_key, "operator": "Gt", "values": [str(major - 1)]}]]
    return [[{"key": major_key, "operator": "Gt", "values": [str(major)]}],
            [{"key": major_key, "operator": "In", "values": [str(major)]},
             {"key": minor_key, "operator": "Gt", "values": [str(minor - 1)]}]]


def _node_terms(plan: Plan, floor: NodeFloor, arch: str) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """nodeSelectorTerms (ORed; expressions inside one ANDed) and one comment line per floor."""
    base = [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
            {"key": "kubernetes.io/arch", "operator": "In", "values": [CONTAINER_ARCH[arch]]}]
    if plan.device != "cuda":
        return [base], []
    if floor.driver is None or floor.compute is None:
        raise InvalidInput("render", "node_floor", "a GPU plan's deployment needs its driver and compute floors "
                                                   "(provision.render.deploy.node_floor)")
    memory_mib, memory_why = _memory_floor_mib(plan, floor)
    gpu = [{"key": GFD_DRIVER_MAJOR, "operator": "Gt", "values": [str(floor.driver.major - 1)]},
           {"key": GFD_MEMORY, "operator": "Gt", "values": [str(memory_mib - 1)]}]
    terms = [[*base, *cc, *gpu] for cc in _at_least(GFD_COMPUTE_MAJOR, GFD_COMPUTE_MINOR, floor.compute)]
    why = [f"compute capability >= {cc_text(floor.compute)}", *floor.why, memory_why]
    return terms, [_one_line(w, "node_floor.why") for w in why]


# ---------------------------------------------------------------- the files


def _view(plan: Plan, inputs: DeployInputs) -> dict[str, Any]:
    if inputs.arch not in CONTAINER_ARCH:
        raise InvalidInput("host", "arch", f"{inputs.arch!r} has no Linux container platform")
    server = _server(plan)
    name = k8s_name(server.served)
    own_image = server.engine == "transformers"
    gpus = [str(g) for g in plan.placement.gpus] if plan.device == "cuda" else []
    tag = f"provision-{name}:{plan.variant}"
    image = None if inputs.image is None else check_image(inputs.image)
    terms, floor_why = _node_terms(plan, inputs.floor, inputs.arch)
    shm = _SHM_GIB.get(server.engine, _SHM_GIB["transformers"])
    checkpoint = plan.parameters * _CHECKPOINT_BYTES_PER_PARAM
    return {
        "toolkit_version": check_version(inputs.toolkit_version, source="render", field="toolkit_version"),
        "model_id": plan.model_id, "name": name, "served": server.served, "engine": server.engine,
        # MPS stays on the Mac: in a container the model runs on the CPU (platform_note says why)
        "engine_label": server.label, "precision": plan.precision, "variant": plan.variant,
        "device": "cpu" if plan.device == "mps" else plan.device,
        "port": server.port, "gpus": gpus, "gpu_count": len(gpus),
        "argv_line": _argv_line(server.argv) if server.argv else None,
        "base_image": server.base_image,
        "compose_image": image or tag, "k8s_image": image or f"{PLACEHOLDER_REGISTRY}/{tag}",
        "image_given": image is not None,
        "target": SERVE_TARGET,
        "hf_home": _OWN_IMAGE_HOME if own_image else _ENGINE_IMAGE_HOME,
        "uid": _OWN_IMAGE_UID if own_image else None,
        "shm_gib": shm, "health": HEALTH_ROUTE, "ready": READY_ROUTE,
        "healthcheck": ["CMD", "python3", "-c",
                        "import urllib.request; urllib.request.urlopen("
                        f"'http://127.0.0.1:{server.port}{HEALTH_ROUTE}', timeout=4)"],
        "startup_minutes": STARTUP_SECONDS // 60, "startup_period": 10, "startup_failures": STARTUP_SECONDS // 10,
        "node_terms": terms, "floor_why": floor_why,
        "memory_request_mib": math.ceil(plan.placement.required_bytes / _MIB) if plan.device != "cuda" else None,
        "pvc_gib": math.ceil(checkpoint * 3 / 2 / _GIB), "checkpoint_gb": f"{checkpoint / 1e9:.1f}",
        "platform_note": list(inputs.platform_note),
    }


def deploy_files(plan: Plan, inputs: DeployInputs) -> dict[str, bytes]:
    """``compose.yaml`` and ``k8s/{deployment,service,pvc}.yaml`` for the plan, keyed by path.

    :raises InvalidInput: a value that would reach a file fails validation, or a GPU plan lacks its floors.
    """
    view = _view(plan, inputs)
    return {
        COMPOSE_PATH: render_template("compose.yaml.j2", view),
        K8S_DEPLOYMENT: render_template("k8s/deployment.yaml.j2", view),
        K8S_SERVICE: render_template("k8s/service.yaml.j2", view),
        K8S_PVC: render_template("k8s/pvc.yaml.j2", view),
    }
