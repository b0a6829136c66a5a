"""geoexplora: adapt pre-trained vision transformers to satellite and aerial imagery (ExPLoRA).

The Python API, imported lazily (``import geoexplora`` loads no torch)::

    import geoexplora as gx
    m = gx.load_model("runs/finetune/checkpoint")      # a GeoModel: model, preprocessing, task, classes
    m.predict_raster("scene.tif", "classes.tif", probabilities=True)
    gx.embed_raster("scene.tif", "emb.parquet", m)      # or a checkpoint folder
    gx.export_checkpoint("runs/finetune/checkpoint", "model-export")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; imported on first access.
_LAZY = {
    "load_model": "geoexplora.models.geomodel",
    "GeoModel": "geoexplora.models.geomodel",
    "export_checkpoint": "geoexplora.models.export",
    "export_onnx": "geoexplora.models.export",
    "embed_raster": "geoexplora.inference.embed",
    "GeoExploraError": "geoexplora.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'geoexplora' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
