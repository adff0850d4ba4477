"""The plan document: ``Plan.from_dict`` is the exact inverse of ``to_dict``, and refuses every bad field.

Render (``--plan``), smoke and doctor (a lock's ``plan``) read plans through ``from_dict`` only, so
the messages here are the contract's exit-2 lines those commands print.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from provision.data.catalog import load_catalog, resolve_model
from provision.data.matrix import load_matrix
from provision.errors import InvalidInput, NoViablePlan
from provision.host.profile import GpuInfo, HostProfile, NvidiaInfo, load_host
from provision.plan.document import Plan, Preferences, variant_cuda
from provision.plan.search import plan

HOSTS = sorted((Path(__file__).parent / "fixtures" / "hosts").glob("*.json"))
MATRIX = load_matrix()
CATALOG = load_catalog()
AUTOGLM = resolve_model("autoglm-phone-9b", CATALOG)


def _two_gpus() -> HostProfile:
    """Two 16 GB cards: bf16 is split over both, so the plan carries max_memory and a device_map."""
    gpus = tuple(GpuInfo(index=i, name="NVIDIA GeForce RTX 4080", compute_capability=(8, 9),
                         memory_total_bytes=16_000_000_000, memory_free_bytes=15_500_000_000) for i in range(2))
    return HostProfile(os="linux", arch="x86_64", python=Version("3.12.3"), ram_bytes=64 * 10**9,
                       nvidia=NvidiaInfo(driver_version="570.133.07", cuda_driver_version=Version("12.8"), gpus=gpus))


def _plans() -> list[tuple[str, Plan]]:
    """The planner's plan for every reference host and catalog model that has one, with the default engine
    (vLLM or SGLang where one runs) and with ``transformers serve``, plus a split."""
    out = []
    for path in HOSTS:
        for model in CATALOG.models:
            for engine in ("auto", "transformers"):
                try:
                    out.append((f"{path.stem}/{model.id}/{engine}", plan(
                        load_host(path), MATRIX, resolve_model(model.id, CATALOG), Preferences(engine=engine))))
                except NoViablePlan:
                    continue
    split = plan(_two_gpus(), MATRIX, AUTOGLM, Preferences(engine="transformers", context_tokens=4096))
    out.append(("two-gpu-split/autoglm-phone-9b/transformers", split))
    return out


PLANS = _plans()
#: A transformers plan to mutate: bf16 on one A10G at 4,096 tokens (--context 4096).
A10G_DOC = plan(load_host(HOSTS[0].parent / "linux-x86_64-a10g-driver535.json"), MATRIX, AUTOGLM,
                Preferences(engine="transformers", context_tokens=4096)).to_dict()


@pytest.mark.parametrize(("name", "planned"), PLANS, ids=[name for name, _ in PLANS])
def test_from_dict_inverts_to_dict(name: str, planned: Plan) -> None:
    doc = json.loads(json.dumps(planned.to_dict()))  # what a file holds
    back = Plan.from_dict(doc, source=f"{name}.json")
    assert back == planned
    assert back.placement.why == planned.placement.why  # kept in the device reason, read back from it
    assert back.to_dict() == doc


def test_the_reference_set_includes_cpu_mps_quantized_and_split_plans() -> None:
    kinds = {(p.device, p.precision, len(p.placement.gpus)) for _, p in PLANS}
    assert {("cpu", "bf16", 0), ("mps", "bf16", 0), ("cuda", "nf4", 1), ("cuda", "int8", 1), ("cuda", "bf16", 2)} <= kinds
    split = dict(PLANS)["two-gpu-split/autoglm-phone-9b/transformers"]
    assert split.placement.max_memory and split.placement.device_map


def test_a_plan_without_cuda_takes_the_variants() -> None:
    """The contract's example has no ``cuda``: such a plan still reads, with the variant's CUDA."""
    doc = copy.deepcopy(A10G_DOC)
    del doc["cuda"]
    assert Plan.from_dict(doc).cuda == Version("12.6")
    cpu = next(p for _, p in PLANS if p.variant == "cpu").to_dict()
    del cpu["cuda"]
    assert Plan.from_dict(cpu).cuda is None


@pytest.mark.parametrize(("variant", "cuda"), [("cu118", "11.8"), ("cu126", "12.6"), ("cu130", "13.0"), ("cpu", None)])
def test_variant_cuda(variant: str, cuda: str | None) -> None:
    assert variant_cuda(variant) == (None if cuda is None else Version(cuda))


def test_packages_come_back_canonical_and_sorted() -> None:
    doc = copy.deepcopy(A10G_DOC)
    doc["packages"] = {"Torch": "2.14.1+cu126", "huggingface_hub": "2.4.0", "accelerate": "1.15.0"}
    assert list(Plan.from_dict(doc).packages.items()) == [
        ("accelerate", "1.15.0"), ("huggingface-hub", "2.4.0"), ("torch", "2.14.1+cu126")]


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets (or, for ``...``, deletes) the dotted ``path`` of a plan document."""
    *parents, last = path.split(".")

    def mutate(doc: dict[str, Any]) -> None:
        for key in parents:
            doc = doc[key]
        if value is ...:
            del doc[last]
        else:
            doc[last] = value

    return mutate


# (mutation, field, problem): the exact exit-2 line render --plan prints after "error: <file>: "
MALFORMED = [
    (_set("schema", "provision.plan/v9"), "schema", "expected 'provision.plan/v1'"),
    (_set("error", "no-viable-plan"), "error", "a no-viable-plan document cannot be rendered"),
    (_set("model", ...), "model", "required key is missing"),
    (_set("model.id", 7), "model.id", "expected a string, got integer"),
    (_set("model.id", "a b"), "model.id", "'a b' is not a model id ([a-z0-9._-], starting with a letter or digit)"),
    (_set("model.repo", "../x"), "model.repo", "'../x' is not a Hugging Face repo id (owner/name)"),
    (_set("model.parameters", -1), "model.parameters", "-1 is out of range [0, 4611686018427387904]"),
    (_set("python", "3"), "python", "'3' is not a Python minor like 3.11"),
    (_set("torch.variant", "rocm6.4"), "torch.variant", "'rocm6.4' is not cpu or cuXYZ"),
    (_set("torch.version", "2.14.1;x"), "torch.version", "'2.14.1;x' is not a version"),
    (_set("torch.index_url", "http://x.org/simple"), "torch.index_url",
     "'http://x.org/simple' is not an https:// index URL (no credentials, query or whitespace)"),
    (_set("device", "tpu"), "device", "'tpu' is not one of cuda, cpu, mps"),
    (_set("precision", "int3"), "precision", "'int3' is not one of bf16, fp16, fp8, int8, nf4, fp32"),
    (_set("packages", []), "packages", "expected an object, got array"),
    (_set("packages", {}), "packages", "must pin at least one package"),
    (_set("packages.torch", "2.14.1 --pre"), "packages.torch", "'2.14.1 --pre' is not a version"),
    (_set("cuda", "12.8"), "cuda", "12.8 does not match torch.variant 'cu126'"),
    (_set("cuda", None), "cuda", "null does not match torch.variant 'cu126'"),
    (_set("cuda", "twelve"), "cuda", "'twelve' is not a version"),
    (_set("gpus", ...), "gpus", "required key is missing"),
    (_set("gpus", [True]), "gpus[0]", "expected a GPU index 0-63"),
    (_set("gpus", [0, 64]), "gpus[1]", "expected a GPU index 0-63"),
    (_set("memory", None), "memory", "expected an object, got null"),
    (_set("memory.required_bytes", "22 GB"), "memory.required_bytes", "expected an integer, got string"),
    (_set("memory.breakdown", {"weights": 1.5}), "memory.breakdown.weights", "expected an integer, got number"),
    (_set("memory.max_memory", {"gpu0": 1}), "memory.max_memory", "keys must be GPU indices or 'cpu'"),
    (_set("memory.max_memory", {"0": 0}), "memory.max_memory.0", "0 is out of range [1, 4611686018427387904]"),
    (_set("memory.device_map", {"model.layers.0; x": 0}), "memory.device_map.model.layers.0; x",
     "is not a module name"),
    (_set("memory.device_map", {"model.embed_tokens": 64}), "memory.device_map.model.embed_tokens",
     "64 is out of range [0, 63]"),
    (_set("warnings", ["ok", 3]), "warnings[1]", "expected a string, got integer"),
    (_set("reasons", [{"decision": "torch", "choice": "2.14.1"}]), "reasons[0].why", "required key is missing"),
    (_set("serve", []), "serve", "expected an object, got array"),
    (_set("serve.engine", "tgi"), "serve.engine", "'tgi' is not one of vllm, sglang, transformers"),
    (_set("serve.argv", ["transformers", "serve", "autoglm-phone-9b", "--port", "80"]), "serve.argv",
     "must hold '--port 8000' once (serve.sh replaces that value)"),
    (_set("serve.argv", ["transformers", "serve", "x;y", "--port", "8000"]), "serve.argv[2]",
     "'x;y' is not a plain argument"),
    (_set("serve.model_source", "zai-org/$(x)"), "serve.model_source", "'zai-org/$(x)' is not a plain argument"),
    (_set("serve.port", 0), "serve.port", "0 is out of range [1, 65535]"),
]


@pytest.mark.parametrize(("mutate", "field", "problem"), MALFORMED, ids=[m[1] + ":" + m[2][:24] for m in MALFORMED])
def test_malformed_fields_name_the_file_and_field(mutate: Callable[[dict[str, Any]], None], field: str,
                                                  problem: str) -> None:
    doc = copy.deepcopy(A10G_DOC)
    mutate(doc)
    with pytest.raises(InvalidInput) as exc:
        Plan.from_dict(doc, source="plan.json")
    assert str(exc.value) == f"plan.json: {field}: {problem}"
    with pytest.raises(InvalidInput) as in_lock:  # a lock's plan: the same problem, under "plan."
        Plan.from_dict(doc, source="provision.lock.json", where="plan")
    assert str(in_lock.value) == f"provision.lock.json: plan.{field}: {problem}"


@pytest.mark.parametrize("data", [None, [], "plan", 3])
def test_a_plan_that_is_not_an_object(data: object) -> None:
    with pytest.raises(InvalidInput, match=r"^plan\.json: \(document\): expected an object"):
        Plan.from_dict(data, source="plan.json")
    with pytest.raises(InvalidInput, match=r"^provision\.lock\.json: plan: expected an object"):
        Plan.from_dict(data, source="provision.lock.json", where="plan")


def test_the_no_viable_plan_document_stays_an_error() -> None:
    with pytest.raises(NoViablePlan) as info:
        plan(load_host(Path(__file__).parent / "fixtures" / "hosts" / "linux-x86_64-rtx3070-8gb-driver550.json"),
             MATRIX, AUTOGLM)
    with pytest.raises(InvalidInput, match=r"^plan: error: a no-viable-plan document cannot be rendered$"):
        Plan.from_dict(info.value.to_dict())


def test_a_sibling_built_by_replace_round_trips_too() -> None:
    """Render's CI rows are the plan with another variant's build: still a document from_dict reads."""
    a10g = Plan.from_dict(A10G_DOC)
    cpu = replace(a10g, variant="cpu", cuda=None, placement=replace(a10g.placement, device="cpu", gpus=()))
    assert Plan.from_dict(cpu.to_dict()) == cpu


def test_every_plan_serves_and_a_document_without_serve_reads_as_transformers_serve() -> None:
    """Plans written before ``serve`` existed (the contract's example, older locks) are transformers plans."""
    for name, planned in PLANS:
        if planned.serve.engine == "transformers":
            assert planned.serve.engine_version == planned.packages["transformers"]
        else:  # the default engine serves with vLLM or SGLang where one runs
            assert name.endswith("/auto") and planned.serve.engine_version == planned.packages[planned.serve.engine]
    assert {p.serve.engine for _, p in PLANS} == {"vllm", "sglang", "transformers"}
    doc = copy.deepcopy(A10G_DOC)
    del doc["serve"]
    old = Plan.from_dict(doc)
    assert old.serve.argv == ("transformers", "serve", "autoglm-phone-9b", "--port", "8000", "--dtype", "bfloat16",
                              "--device", "auto")
    assert (old.serve.model_source, old.serve.max_model_len) == ("zai-org/AutoGLM-Phone-9B", 4096)
    doc["precision"] = "fp8"  # only an engine quantizes to fp8: such a plan must say how it is served
    with pytest.raises(InvalidInput, match=r"^plan: serve: required key is missing"):
        Plan.from_dict(doc)


def test_an_engine_serve_must_name_its_model_where_serve_sh_replaces_it() -> None:
    doc = copy.deepcopy(A10G_DOC)
    doc["serve"] = {**doc["serve"], "engine": "vllm", "argv": ["vllm", "serve", "other/Repo", "--port", "8000"]}
    with pytest.raises(InvalidInput) as exc:
        Plan.from_dict(doc)
    assert str(exc.value) == ("plan: serve.argv: must name model_source 'zai-org/AutoGLM-Phone-9B' once "
                              "(serve.sh replaces it)")
    doc["serve"]["argv"][2] = "zai-org/AutoGLM-Phone-9B"
    assert Plan.from_dict(doc).serve.model_index == 2


def test_unknown_plan_keys_warn_with_the_nearest_known_one_and_are_ignored() -> None:
    from provision.common.fields import UnknownKeyWarning

    doc = copy.deepcopy(A10G_DOC)
    chosen = Plan.from_dict(A10G_DOC)
    doc["precison"] = "nf4"
    doc["memory"]["required"] = 1
    doc["reasons"][0]["reason"] = "x"
    doc["torch"]["index"] = "https://example.org"
    with pytest.warns(UnknownKeyWarning) as caught:
        read = Plan.from_dict(doc, source="lock.json", where="plan")
    assert read == chosen
    assert sorted(str(w.message) for w in caught) == [
        "lock.json: plan.memory.required: unknown key, ignored; did you mean required_bytes?",
        "lock.json: plan.precison: unknown key, ignored; did you mean precision?",
        "lock.json: plan.reasons[0].reason: unknown key, ignored",
        "lock.json: plan.torch.index: unknown key, ignored; did you mean index_url?",
    ]
