"""The sourced data every stage reads: the matrices (``Matrix``: CUDA, torch, bitsandbytes,
companions, base images, the GPU table) and the model catalog, each validated once at load.

Submodules: ``matrix`` (loader and row types), ``catalog`` (models, ``--model``),
``architecture`` (what a model is, from its config), ``images``, ``gpus``, ``refresh``
(``provision matrix refresh``). Other packages import the names below from here.
"""

from __future__ import annotations

from provision.data.catalog import Catalog, ModelSpec, load_catalog, resolve_model
from provision.data.gpus import GpuTable
from provision.data.images import Images
from provision.data.matrix import (
    BnbRelease,
    CudaToolkit,
    Matrix,
    TorchRelease,
    TorchVariant,
    load_matrix,
)

__all__ = [
    "BnbRelease",
    "Catalog",
    "CudaToolkit",
    "GpuTable",
    "Images",
    "Matrix",
    "ModelSpec",
    "TorchRelease",
    "TorchVariant",
    "load_catalog",
    "load_matrix",
    "resolve_model",
]
