"""A planned split over GPUs, checked against the real full-size architecture (meta device, no GPU).

The planner's ``device_map`` must name every parameter and buffer transformers creates, place each
once, and put on each GPU the bytes the estimator counted for it.
"""

from __future__ import annotations

import pytest

from provision.data.catalog import load_catalog, resolve_model
from provision.plan.memory import split_across_gpus

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")

pytestmark = pytest.mark.slow
GB = 10**9


def _meta_model(spec):
    config = transformers.AutoConfig.for_model(
        spec.config["model_type"], **{k: v for k, v in spec.config.items() if k != "model_type"}
    )
    with accelerate.init_empty_weights(include_buffers=False):
        cls = getattr(transformers, spec.auto_class)
        return cls.from_config(config, dtype=torch.bfloat16)


def _owner(name: str, device_map: dict[str, int]) -> list[str]:
    return [k for k in device_map if name == k or name.startswith(k + ".")]


@pytest.mark.parametrize("model_id", ["autoglm-phone-9b", "glm-4-9b-0414"])
def test_split_device_map_covers_the_model_once_with_the_planned_bytes(model_id: str) -> None:
    spec = resolve_model(model_id, load_catalog())
    split = split_across_gpus(spec, precision="bf16", context_tokens=4096, free_bytes={0: 13 * GB, 1: 13 * GB})
    assert split.fits and split.gpus == (0, 1)
    model = _meta_model(spec)
    per_gpu = {0: 0, 1: 0}
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    for name in names:
        owners = _owner(name, split.device_map)
        assert len(owners) == 1, f"{name}: placed by {owners}"
    for name, param in model.named_parameters():
        per_gpu[split.device_map[_owner(name, split.device_map)[0]]] += param.numel() * 2
    for share in split.shares:
        assert per_gpu[share.index] == share.estimate.weights, share.index
    assert sum(per_gpu.values()) == 2 * sum(p.numel() for p in model.parameters())


def test_split_device_map_loads_through_from_pretrained(tmp_path) -> None:
    """The same map shape, on the tiny model: from_pretrained accepts it and generates (GPUs -> CPU)."""
    from provision.plan.memory import estimate_memory
    from provision.smoke.tiny import build_tiny

    spec = resolve_model("autoglm-phone-9b", load_catalog())
    tiny = build_tiny(spec.config, model_id=spec.id, root=tmp_path)
    whole = estimate_memory(tiny.config, precision="bf16", context_tokens=64).total
    split = split_across_gpus(tiny.config, precision="bf16", context_tokens=64,
                              free_bytes={0: whole - 1, 1: whole})  # GPU 0 one byte short
    assert split.fits and split.gpus == (0, 1), "the tiny model must split for this test to mean anything"
    cpu_map = dict.fromkeys(split.device_map, "cpu")
    model = transformers.AutoModelForImageTextToText.from_pretrained(tiny.path, dtype=torch.bfloat16,
                                                                     device_map=cpu_map)
    out = model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)
