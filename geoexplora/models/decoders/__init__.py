"""Multi-level segmentation decoders for plain ViTs (one concern per module): the shared conv unit,
a simple feature pyramid from single-scale features, and UPerNet."""

from geoexplora.models.decoders.layers import conv_norm_act, group_norm
from geoexplora.models.decoders.pyramid import SimpleFeaturePyramid
from geoexplora.models.decoders.upernet import PyramidPooling, UPerNetHead

__all__ = ["PyramidPooling", "SimpleFeaturePyramid", "UPerNetHead", "conv_norm_act", "group_norm"]
