"""The real DINOv2 ViT-S/14 on a real 3-band raster window: ExPLoRA starts at exactly timm's function."""

from __future__ import annotations

import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import checkpoint_filter_fn

from geoexplora.data import GeoRasterDataset, compute_band_statistics, Normalizer
from geoexplora.models import BackboneConfig, create_backbone, create_strategy, merge_lora, unmerge_lora

WINDOW = 112


def _real_window(shared_data) -> torch.Tensor:
    """A normalised (1, 3, 112, 112) window from the centre of the real Landsat RGB scene."""
    dataset = GeoRasterDataset(shared_data / "landsat_rgb" / "RGB.byte.tif", band_names=["red", "green", "blue"])
    stats = compute_band_statistics(dataset, num_windows=8, window_size=WINDOW, seed=0)
    bounds = dataset.bounds
    xres, yres = dataset.res
    x0 = (bounds[0].start + bounds[0].stop) / 2
    y0 = (bounds[1].start + bounds[1].stop) / 2
    half_x, half_y = WINDOW * xres / 2, WINDOW * yres / 2
    sample = dataset[x0 - half_x : x0 + half_x, y0 - half_y : y0 + half_y]
    assert sample["valid"].float().mean() > 0.9, "the centre window should be mostly valid data"
    return Normalizer(stats, dataset.band_names)(sample["image"], sample["valid"])[None]


def test_explora_equals_timm_before_and_after_merge(shared_data, dinov2_weights):
    x = _real_window(shared_data)
    reference = timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=WINDOW, dynamic_img_size=True)
    reference.load_state_dict(checkpoint_filter_fn(load_file(dinov2_weights), reference))
    cfg = BackboneConfig(weights=str(dinov2_weights), bands=["red", "green", "blue"], img_size=WINDOW)
    adapted = create_strategy("explora").apply(create_backbone(cfg))
    with torch.no_grad():
        expected = reference.eval()(x)
        at_init = adapted.eval()(x)
        assert (at_init - expected).abs().max().item() < 1e-5

        # Give the adapters a non-zero update so merging changes weights, then check the three states agree.
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
        adapted_out = adapted(x)
        assert (adapted_out - expected).abs().max().item() > 1e-3, "the adapter update must change the output"
        merge_lora(adapted)
        merged_out = adapted(x)
        unmerge_lora(adapted)
        unmerged_out = adapted(x)
    assert (merged_out - adapted_out).abs().max().item() < 1e-4
    assert (unmerged_out - adapted_out).abs().max().item() < 1e-4
