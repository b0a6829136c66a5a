"""geoexplora: adapt pre-trained vision transformers to satellite and aerial imagery (ExPLoRA)."""

__version__ = "0.1.0"
