"""Tiled inference over whole rasters: windows in, model out, georeferenced outputs written.

No Lightning and no training code here: a model is any callable from float32 (B, C, tile, tile) to
logits. :func:`predict_with_model` runs a loaded checkpoint (:class:`~geoexplora.models.GeoModel`) with
its bands, normalisation and classes; :func:`predict_raster` streams a raster through it into a Cloud-Optimised GeoTIFF;
:func:`vectorize_classes` turns the class map into polygons; :func:`write_preview` draws a PNG.
"""

from geoexplora.inference.model_predict import predict_with_model
from geoexplora.inference.predict import PredictSummary, predict_raster
from geoexplora.inference.preview import write_preview
from geoexplora.inference.vectorize import vectorize_classes, write_vectors

__all__ = ["PredictSummary", "predict_raster", "predict_with_model", "vectorize_classes", "write_preview",
           "write_vectors"]
