"""compose.yaml and k8s/ (provision/render/deploy.py) for every reference host that plans.

Each host is planned with engine auto (vLLM where it runs), transformers, and SGLang where that plans;
transformers plans are also given the ``serve`` object they will carry (``transformers serve``). The
rendered files are read back as YAML and checked against the plan: the GPUs requested, the server
command, the node floors (the planned host's own GPU, labelled as GPU Feature Discovery labels it,
must match; a node just under each floor must not), and then validated by the real tools
(check-jsonschema's compose-spec schema, kubernetes-validate --strict, offline).
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from provision.data import load_catalog, load_matrix, resolve_model
from provision.errors import InvalidInput, NoViablePlan
from provision.host import host_from_dict, load_host
from provision.plan.document import Plan, Preferences
from provision.plan.search import plan
from provision.plan.serve import Serve
from provision.render.deploy import (
    COMPOSE_PATH,
    DEPLOY_FILES,
    GFD_COMPUTE_MAJOR,
    GFD_COMPUTE_MINOR,
    GFD_DRIVER_MAJOR,
    GFD_MEMORY,
    K8S_DEPLOYMENT,
    K8S_PVC,
    K8S_SERVICE,
    DeployInputs,
    NodeFloor,
    check_image,
    deploy_files,
    k8s_name,
    node_floor,
)

try:
    from test_lint import tool  # tests/ is on sys.path (rootdir-less test modules)
except ImportError:  # pragma: no cover
    from tests.test_lint import tool

MATRIX = load_matrix()
MODEL = resolve_model("autoglm-phone-9b", load_catalog(MATRIX.catalog_path))
HOSTS = sorted((Path(__file__).parent / "fixtures" / "hosts").glob("*.json"))
MIB = 2**20
ENGINES = ("auto", "transformers", "sglang", "transformers-serve")


def _plan(host_path: Path, engine: str) -> Plan | None:
    host = load_host(host_path)
    try:
        chosen = plan(host, MATRIX, MODEL, Preferences(engine="transformers" if engine == "transformers-serve" else engine,
                                                       python=host.python_minor))
    except NoViablePlan:
        return None
    if engine == "sglang" and (chosen.serve is None or chosen.serve.engine != "sglang"):
        return None
    if engine == "transformers-serve" and chosen.serve is None:
        chosen = replace(chosen, serve=transformers_serve(chosen))
    return chosen


def transformers_serve(p: Plan) -> Serve:
    """The serve object a transformers plan carries (``transformers serve <served name>`` on 8000), for plans
    made before the planner writes one; a split over GPUs is accelerate's, so the tensor-parallel size is 1."""
    quantization = {"int8": "bnb-8bit", "nf4": "bnb-4bit"}.get(p.precision)
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(p.precision)
    argv = ("transformers", "serve", "autoglm-phone-9b", "--port", "8000",
            *(("--quantization", quantization) if quantization else ("--dtype", str(dtype))),
            "--device", "cpu" if p.device == "cpu" else "auto")
    return Serve(engine="transformers", engine_version=p.packages["transformers"], port=8000,
                 served_model_name="autoglm-phone-9b", max_model_len=25480, gpu_memory_utilization=None,
                 tensor_parallel_size=1, quantization=quantization, image=None, argv=argv)


CASES = [(h, e) for h in HOSTS for e in ENGINES]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[tuple[str, str], tuple[Plan, NodeFloor, str, Path]]:
    """Every (host, engine) that plans, rendered once into its own folder."""
    root = tmp_path_factory.mktemp("deploy")
    out = {}
    for host_path, engine in CASES:
        chosen = _plan(host_path, engine)
        if chosen is None:
            continue
        arch = load_host(host_path).arch
        floor = node_floor(chosen, MATRIX, arch)
        files = deploy_files(chosen, DeployInputs(floor=floor, arch=arch, toolkit_version="0.1.0"))
        folder = root / f"{host_path.stem}-{engine}"
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        out[(host_path.stem, engine)] = (chosen, floor, arch, folder)
    return out


def _load(folder: Path, name: str) -> dict:
    return yaml.safe_load((folder / name).read_text())


def _container(folder: Path) -> dict:
    (container,) = _load(folder, K8S_DEPLOYMENT)["spec"]["template"]["spec"]["containers"]
    return container


def _terms(folder: Path) -> list[list[dict]]:
    spec = _load(folder, K8S_DEPLOYMENT)["spec"]["template"]["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return [t["matchExpressions"] for t in terms]


def _matches(terms: list[list[dict]], labels: dict[str, str]) -> bool:
    """Kubernetes' rule: terms are ORed, the expressions of one term ANDed; Gt compares integers."""
    def ok(expr: dict) -> bool:
        value = labels.get(expr["key"])
        if expr["operator"] == "In":
            return value in expr["values"]
        assert expr["operator"] == "Gt", expr
        return value is not None and int(value) > int(expr["values"][0])
    return any(all(ok(e) for e in term) for term in terms)


def _gfd_labels(host_path: Path, arch: str, gpu_index: int) -> dict[str, str]:
    """The labels GFD writes on a node like the planned host (one of its GPUs)."""
    host = load_host(host_path)
    labels = {"kubernetes.io/os": "linux", "kubernetes.io/arch": {"x86_64": "amd64"}.get(arch, "arm64")}
    if host.nvidia is None:
        return labels
    gpu = next(g for g in host.nvidia.gpus if g.index == gpu_index)
    major, minor = gpu.compute_capability
    labels.update({GFD_DRIVER_MAJOR: host.nvidia.driver_version.split(".")[0], GFD_COMPUTE_MAJOR: str(major),
                   GFD_COMPUTE_MINOR: str(minor), GFD_MEMORY: str(gpu.memory_total_bytes // MIB)})
    return labels


def test_every_reference_host_renders(rendered):
    planned = {host for host, _ in rendered}
    assert len(planned) >= len(HOSTS) - 1  # linux-x86_64-rtx3070-8gb-driver550 has no plan (exit 3)
    engines = {p.serve.engine for p, *_ in rendered.values() if p.serve is not None}
    assert engines == {"vllm", "sglang", "transformers"}
    assert any(p.device == "cpu" for p, *_ in rendered.values())


def test_gpus_requested_are_exactly_the_plans(rendered):
    for (host, engine), (chosen, _, _, folder) in rendered.items():
        compose = _load(folder, COMPOSE_PATH)
        (service,) = compose["services"].values()
        limits = _container(folder)["resources"].get("limits", {})
        if chosen.device == "cuda":
            (device,) = service["deploy"]["resources"]["reservations"]["devices"]
            assert device == {"driver": "nvidia", "device_ids": [str(g) for g in chosen.placement.gpus],
                              "capabilities": ["gpu"]}, (host, engine)
            assert limits == {"nvidia.com/gpu": len(chosen.placement.gpus)}, (host, engine)
            if chosen.serve is not None and chosen.serve.engine != "transformers":
                assert limits["nvidia.com/gpu"] == chosen.serve.tensor_parallel_size
        else:
            assert "deploy" not in service, (host, engine)
            assert "nvidia.com/gpu" not in (folder / K8S_DEPLOYMENT).read_text(), (host, engine)
            assert "nvidia.com/gpu" not in str(_terms(folder))
            requests = _container(folder)["resources"]["requests"]
            assert requests == {"memory": f"{-(-chosen.placement.required_bytes // MIB)}Mi"}


def test_the_tensor_parallel_plan_asks_for_both_gpus(rendered):
    chosen, _, _, folder = rendered[("linux-x86_64-2x-rtx4090-driver550", "auto")]
    assert chosen.serve is not None and chosen.serve.tensor_parallel_size == 2
    (service,) = _load(folder, COMPOSE_PATH)["services"].values()
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0", "1"]
    assert _container(folder)["resources"]["limits"] == {"nvidia.com/gpu": 2}


def test_a_transformers_split_asks_for_both_gpus_without_tensor_parallelism():
    """accelerate splits the weights over two 16 GB cards: both GPUs reserved, one server process."""
    gpus = [{"index": i, "name": "NVIDIA GeForce RTX 4060 Ti", "compute_capability": "8.9",
             "memory_total_bytes": 17_200_000_000, "memory_free_bytes": 16_600_000_000} for i in range(2)]
    host = host_from_dict({"schema": "provision.host/v1", "os": "linux", "arch": "x86_64", "python": "3.12.3",
                           "ram_bytes": 128 * 2**30, "nvidia": {"driver_version": "570.133.07",
                                                                "cuda_driver_version": "12.8", "gpus": gpus}})
    split = plan(host, MATRIX, MODEL, Preferences(engine="transformers", python="3.12", precision="bf16"))
    assert split.placement.gpus == (0, 1)
    split = split if split.serve is not None else replace(split, serve=transformers_serve(split))
    files = deploy_files(split, DeployInputs(floor=node_floor(split, MATRIX, "x86_64"), arch="x86_64",
                                             toolkit_version="0.1.0"))
    (service,) = yaml.safe_load(files[COMPOSE_PATH])["services"].values()
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0", "1"]
    (container,) = yaml.safe_load(files[K8S_DEPLOYMENT])["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 2}
    terms = [t["matchExpressions"] for t in yaml.safe_load(files[K8S_DEPLOYMENT])["spec"]["template"]["spec"]
             ["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]]
    labels = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", GFD_DRIVER_MAJOR: "570",
              GFD_COMPUTE_MAJOR: "8", GFD_COMPUTE_MINOR: "9", GFD_MEMORY: str(17_200_000_000 // MIB)}
    assert _matches(terms, labels)  # each card holds half the model: its memory floor is per GPU


def test_sglangs_memory_floor_counts_its_fraction_as_weights_and_cache_only():
    """--mem-fraction-static covers the weights and the KV pool; the profiling peak, graphs and context come on top.

    Dividing the whole need by it (vLLM's rule) would ask for a larger GPU than the 24 GB card it was planned on.
    """
    host = load_host(next(h for h in HOSTS if h.stem == "linux-x86_64-rtx3090-driver550"))
    chosen = plan(host, MATRIX, MODEL, Preferences(engine="sglang"))
    assert chosen.serve is not None and chosen.serve.engine == "sglang"
    floor = node_floor(chosen, MATRIX, "x86_64")
    assert floor.share_covers_weights_and_kv
    files = deploy_files(chosen, DeployInputs(floor=floor, arch="x86_64", toolkit_version="0.1.0"))
    spec = yaml.safe_load(files[K8S_DEPLOYMENT])["spec"]["template"]["spec"]
    (terms,) = [t["matchExpressions"] for t in
                spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]]
    memory = int(next(e for e in terms if e["key"] == GFD_MEMORY)["values"][0]) + 1
    assert chosen.placement.required_bytes / MIB <= memory <= host.gpus[0].memory_total_bytes / MIB
    breakdown = chosen.placement.breakdown
    pool = chosen.placement.required_bytes - sum(v for k, v in breakdown.items() if k not in ("weights", "kv_cache"))
    assert memory * MIB * chosen.serve.gpu_memory_utilization >= pool  # the static share holds weights and cache


def test_the_server_command_shown_is_the_plans_argv(rendered):
    for (host, engine), (chosen, _, _, folder) in rendered.items():
        for name in (COMPOSE_PATH, K8S_DEPLOYMENT):
            lines = (folder / name).read_text().splitlines()
            if chosen.serve is None:
                assert "# serve.sh starts:" not in lines
                continue
            shown = lines[lines.index("# serve.sh starts:") + 1]
            assert shlex.split(shown.removeprefix("#")) == list(chosen.serve.argv), (host, engine, name)


def test_no_server_command_or_image_overrides_the_dockerfiles_entry(rendered):
    """Compose and k8s run the Dockerfile's serve target as built: serve.sh is the one server command."""
    for (host, engine), (_, _, _, folder) in rendered.items():
        (service,) = _load(folder, COMPOSE_PATH)["services"].values()
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile", "target": "serve"}  # the render folder
        assert "command" not in service and "entrypoint" not in service, (host, engine)
        container = _container(folder)
        assert "command" not in container and "args" not in container
        tag = service["image"]
        assert container["image"] == f"registry.example.com/{tag}", (host, engine)


def test_node_affinity_admits_the_planned_host_and_nothing_under_its_floors(rendered):
    for (host, engine), (chosen, floor, arch, folder) in rendered.items():
        terms = _terms(folder)
        host_path = next(h for h in HOSTS if h.stem == host)
        for gpu in chosen.placement.gpus or (0,):
            labels = _gfd_labels(host_path, arch, gpu) if chosen.device == "cuda" else _gfd_labels(host_path, arch, -1)
            assert _matches(terms, labels), (host, engine, labels)
        if chosen.device != "cuda":
            assert floor == NodeFloor()
            continue
        labels = _gfd_labels(host_path, arch, chosen.placement.gpus[0])
        assert floor.driver is not None and floor.compute is not None
        major, minor = floor.compute
        at_floor = {**labels, GFD_DRIVER_MAJOR: str(floor.driver.major),
                    GFD_COMPUTE_MAJOR: str(major), GFD_COMPUTE_MINOR: str(minor)}
        assert _matches(terms, at_floor), (host, engine)
        under = [{GFD_DRIVER_MAJOR: str(floor.driver.major - 1)},
                 {GFD_COMPUTE_MAJOR: str(major), GFD_COMPUTE_MINOR: str(minor - 1)} if minor else
                 {GFD_COMPUTE_MAJOR: str(major - 1), GFD_COMPUTE_MINOR: "9"},
                 {"kubernetes.io/arch": "s390x"}]
        for change in under:
            assert not _matches(terms, {**at_floor, **change}), (host, engine, change)
        memory = int(next(e for e in terms[0] if e["key"] == GFD_MEMORY)["values"][0]) + 1
        assert _matches(terms, {**at_floor, GFD_MEMORY: str(memory)})
        assert not _matches(terms, {**at_floor, GFD_MEMORY: str(memory - 1)})


# (host, engine, driver branch floor, compute floor, why): the floors read from the engine facts by hand
FLOORS = [
    ("linux-x86_64-h100-80gb-driver580", "auto", 580, (8, 0),
     "vLLM 0.33.0's image is CUDA 13.0 (R580); bf16 needs 8.0 (kernels from sm_75)"),
    ("linux-x86_64-l4-driver550", "auto", 525, (8, 0),
     "vLLM 0.19.1 (CUDA 12.9 image, R525 by minor-version compatibility); fp8 through Marlin from 8.0, bf16 compute"),
    ("linux-x86_64-t4-driver535", "auto", 525, (7, 0),
     "vLLM 0.19.1 has sm_70 kernels; fp16 compute; in-flight bitsandbytes 4-bit from 7.0"),
    ("linux-x86_64-v100-16gb-driver535", "auto", 525, (7, 0), "the same plan as the T4: the V100 (7.0) runs it"),
    ("linux-x86_64-h100-80gb-driver580", "sglang", 580, (8, 0), "SGLang 0.5.23 is CUDA 13; bf16"),
    ("linux-x86_64-t4-driver470", "transformers", 450, (6, 0),
     "torch cu118 (R450 family floor); at 25,480 tokens int8 overflows 15.5 GB, bitsandbytes nf4 from 6.0"),
]


@pytest.mark.parametrize(("host", "engine", "driver", "compute", "why"), FLOORS, ids=[f"{r[0]}-{r[1]}" for r in FLOORS])
def test_node_floors_of_reference_plans(rendered, host, engine, driver, compute, why):
    _, floor, _, folder = rendered[(host, engine)]
    assert floor.driver is not None and floor.driver.major == driver, why
    assert floor.compute == compute, why
    expressions = {(e["key"], e["operator"], e["values"][0]) for term in _terms(folder) for e in term}
    assert (GFD_DRIVER_MAJOR, "Gt", str(driver - 1)) in expressions


def test_memory_floor_is_the_per_gpu_need_over_the_engines_share(rendered):
    chosen, _, _, folder = rendered[("linux-x86_64-2x-rtx4090-driver550", "auto")]
    assert chosen.serve is not None and chosen.serve.gpu_memory_utilization is not None
    per_gpu = chosen.placement.required_bytes / 2
    want = -(-int(per_gpu / chosen.serve.gpu_memory_utilization) // MIB)
    (memory,) = {e["values"][0] for t in _terms(folder) for e in t if e["key"] == GFD_MEMORY}
    assert abs(int(memory) + 1 - want) <= 1


def test_probes_cache_shm_token_and_security(rendered):
    for (host, engine), (chosen, _, _, folder) in rendered.items():
        deployment = _load(folder, K8S_DEPLOYMENT)
        pod = deployment["spec"]["template"]["spec"]
        container = _container(folder)
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
        startup = container["startupProbe"]
        assert startup["httpGet"]["path"] == "/health" and startup["periodSeconds"] * startup["failureThreshold"] >= 1800
        assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        env = {e["name"]: e for e in container["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
        home = env["HF_HOME"]["value"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts == {"hf-cache": home, "dshm": "/dev/shm"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and volumes["dshm"]["emptyDir"]["sizeLimit"]
        claim = volumes["hf-cache"]["persistentVolumeClaim"]["claimName"]
        pvc = _load(folder, K8S_PVC)
        assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert int(pvc["spec"]["resources"]["requests"]["storage"].removesuffix("Gi")) * 2**30 > 1.4 * chosen.parameters * 2
        own = chosen.serve is None or chosen.serve.engine == "transformers"
        assert (pod["securityContext"].get("runAsNonRoot") is True) == own, (host, engine)
        assert home == ("/home/app/.cache/huggingface" if own else "/root/.cache/huggingface")
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        service = _load(folder, K8S_SERVICE)
        assert service["spec"]["type"] == "ClusterIP" and service["spec"]["ports"][0]["port"] == 8000
        assert service["spec"]["selector"].items() <= pod_labels(deployment).items()
        (compose,) = _load(folder, COMPOSE_PATH)["services"].values()
        assert compose["environment"]["HF_TOKEN"] == "${HF_TOKEN:-}"
        assert compose["environment"]["HF_HOME"] == home and compose["volumes"] == [f"hf-cache:{home}"]
        assert compose["ports"] == ["127.0.0.1:8000:8000"]
        assert compose["healthcheck"]["test"][:3] == ["CMD", "python3", "-c"]
        assert "http://127.0.0.1:8000/health" in compose["healthcheck"]["test"][3]
        assert compose["healthcheck"]["start_period"] == "30m"
        assert compose["shm_size"] == ("32g" if not own else "2g")


def pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def test_two_renders_are_byte_identical():
    host = HOSTS[0]
    a, b = _plan(host, "auto"), _plan(host, "auto")
    assert a is not None and b is not None
    arch = load_host(host).arch
    render = [deploy_files(p, DeployInputs(floor=node_floor(p, MATRIX, arch), arch=arch, toolkit_version="0.1.0"))
              for p in (a, b)]
    assert render[0] == render[1] and set(render[0]) == set(DEPLOY_FILES)


def test_a_gpu_plan_without_its_floors_is_refused():
    chosen = _plan(HOSTS[0], "auto")
    assert chosen is not None and chosen.device == "cuda"
    with pytest.raises(InvalidInput, match=r"^render: node_floor: "):
        deploy_files(chosen, DeployInputs(floor=NodeFloor(), arch="x86_64", toolkit_version="0.1.0"))


def test_image_override_and_its_validation():
    chosen = _plan(HOSTS[0], "auto")
    assert chosen is not None
    files = deploy_files(chosen, DeployInputs(floor=node_floor(chosen, MATRIX, "x86_64"), arch="x86_64",
                                              image="ghcr.io/me/autoglm:cu130", toolkit_version="0.1.0"))
    (service,) = yaml.safe_load(files[COMPOSE_PATH])["services"].values()
    (container,) = yaml.safe_load(files[K8S_DEPLOYMENT])["spec"]["template"]["spec"]["containers"]
    assert service["image"] == container["image"] == "ghcr.io/me/autoglm:cu130"
    assert b"registry.example.com" not in files[K8S_DEPLOYMENT]
    for good in ("localhost:5000/a/b:c", "a@sha256:" + "0" * 64, "quay.io/x/y-z_1.2:v1.0-rc"):
        assert check_image(good) == good
    for bad in ("Upper/case:1", "no-tag", "a b:c", "x:tag;rm -rf", "x:$(id)", "x:t\ny", "", "registry.io:5000/x"):
        with pytest.raises(InvalidInput, match=r"^--image: image: "):
            check_image(bad)


@pytest.mark.parametrize(("served", "name"), [
    ("autoglm-phone-9b", "autoglm-phone-9b"), ("GLM_4.9B", "glm-4-9b"), ("9b-chat", "model-9b-chat"),
    ("a" * 80, "a" * 50), ("x--y", "x-y"), ('evil"\n  hostNetwork: true', "evil-hostnetwork-true"),
])
def test_k8s_names_are_dns_labels(served, name):
    assert k8s_name(served) == name


def test_a_name_with_nothing_left_is_refused():
    with pytest.raises(InvalidInput, match=r"^plan: serve.served_model_name: "):
        k8s_name("___")


def test_a_hostile_served_name_stays_data(rendered):
    chosen, floor, arch, _ = rendered[("linux-x86_64-h100-80gb-driver580", "auto")]
    assert chosen.serve is not None
    hostile = replace(chosen, serve=replace(chosen.serve, served_model_name='x"\n  hostNetwork: true\n#'))
    files = deploy_files(hostile, DeployInputs(floor=floor, arch=arch, toolkit_version="0.1.0"))
    for name in DEPLOY_FILES:
        assert "hostNetwork" not in _keys(yaml.safe_load(files[name])), name
    assert yaml.safe_load(files[K8S_SERVICE])["metadata"]["name"] == "x-hostnetwork-true"
    assert yaml.safe_load(files[COMPOSE_PATH])["services"].keys() == {"x-hostnetwork-true"}


def _keys(doc: object) -> set[str]:
    """Every mapping key anywhere in a parsed YAML document."""
    if isinstance(doc, dict):
        return set(doc) | {k for v in doc.values() for k in _keys(v)}
    if isinstance(doc, list):
        return {k for v in doc for k in _keys(v)}
    return set()


# ---------------------------------------------------------------- the real validators


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.lint
def test_compose_files_pass_the_compose_spec_schema(rendered):
    files = [str(folder / COMPOSE_PATH) for *_, folder in rendered.values()]
    result = _run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *files])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.lint
def test_manifests_pass_kubernetes_validate_strict(rendered):
    files = [str(folder / name) for *_, folder in rendered.values() for name in (K8S_DEPLOYMENT, K8S_SERVICE, K8S_PVC)]
    result = _run([tool("kubernetes-validate"), "--strict", "--quiet", *files])
    assert result.returncode == 0, result.stdout + result.stderr


BROKEN = [
    ("an unknown field", "strategy:\n    type: Recreate", "strategy:\n    type: Recreate\n    rollingUpdat: {}"),
    ("a port that is not a number", "containerPort: 8000", 'containerPort: "eight thousand"'),
    ("a GPU limit misspelt as a list", "nvidia.com/gpu: 1", "nvidia.com/gpu: [1]"),
]


@pytest.mark.lint
@pytest.mark.parametrize(("what", "old", "new"), BROKEN, ids=[b[0] for b in BROKEN])
def test_kubernetes_validate_catches_a_broken_manifest(rendered, tmp_path, what, old, new):
    *_, folder = rendered[("linux-x86_64-h100-80gb-driver580", "auto")]
    text = (folder / K8S_DEPLOYMENT).read_text()
    assert old in text
    broken = tmp_path / "deployment.yaml"
    broken.write_text(text.replace(old, new))
    result = _run([tool("kubernetes-validate"), "--strict", str(broken)])
    assert result.returncode != 0 and "did not validate" in result.stdout + result.stderr, what


@pytest.mark.lint
def test_the_compose_schema_catches_a_broken_file(rendered, tmp_path):
    *_, folder = rendered[("linux-x86_64-h100-80gb-driver580", "auto")]
    text = (folder / COMPOSE_PATH).read_text()
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace('device_ids: ["0"]', 'device_ids: 0'))
    result = _run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)])
    assert result.returncode != 0 and "device_ids" in result.stdout
