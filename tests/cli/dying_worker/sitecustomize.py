"""Loaded by every Python process started with this folder on PYTHONPATH (the spawned predict and embed
workers too): a worker given a raster named ``die*.tif`` is killed (SIGKILL) as it starts predicting or
embedding it."""

import os
import signal

from geoexplora.cli import embed
from geoexplora.inference import model_predict

_predict = model_predict.predict_with_model
_embed_parts = embed.embed_parts


def _die_on(raster) -> None:
    if os.path.basename(str(raster)).startswith("die"):
        os.kill(os.getpid(), signal.SIGKILL)


def _dying(model, raster, *args, **kwargs):
    _die_on(raster)
    return _predict(model, raster, *args, **kwargs)


def _dying_parts(shared, units, device):
    for unit in units:
        _die_on(unit.path)
        _embed_parts(shared, [unit], device)


model_predict.predict_with_model = _dying
embed.embed_parts = _dying_parts
