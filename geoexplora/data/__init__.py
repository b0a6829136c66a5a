"""Raster data layer: GeoTIFF datasets on TorchGeo, temporal stacks, band statistics, labels and samplers."""

from geoexplora.data.labels import (
    DEFAULT_IGNORE_INDEX,
    RasterMaskDataset,
    SceneClassificationDataset,
    VectorLabels,
    VectorMaskDataset,
    VectorWindowDataset,
    read_vector_labels,
)
from geoexplora.data.raster import GeoRasterDataset, find_raster_files, inspect_raster
from geoexplora.data.samplers import grid_sampler, random_sampler, stack_samples
from geoexplora.data.stats import BandStat, BandStatistics, Normalizer, compute_band_statistics
from geoexplora.data.stack import RasterStack, StackFile
from geoexplora.data.temporal import TemporalRasterDataset, parse_file_date

__all__ = [
    "DEFAULT_IGNORE_INDEX",
    "BandStat",
    "BandStatistics",
    "GeoRasterDataset",
    "Normalizer",
    "RasterMaskDataset",
    "SceneClassificationDataset",
    "TemporalRasterDataset",
    "VectorLabels",
    "VectorMaskDataset",
    "VectorWindowDataset",
    "compute_band_statistics",
    "find_raster_files",
    "grid_sampler",
    "inspect_raster",
    "parse_file_date",
    "random_sampler",
    "read_vector_labels",
    "stack_samples",
    "RasterStack",
    "StackFile",
]
