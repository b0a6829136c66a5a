"""Pre-training on stacks with the temporal backbone: (B, T, C, H, W) through DINOv2 and MAE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geoexplora.cli.pretrain import main
from geoexplora.models import load_model, stack_dates
from geoexplora.models.ssl.masking import consistent_masking, random_masking
from geoexplora.transforms import MAEAugmentation, MultiCropAugmentation

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
STACK = ["--data.temporal", "true", "--model.backbone.embed", "temporal", "--trainer.max_steps", "2",
         "--data.batch_size", "2", "--data.windows_per_epoch", "8"]


@pytest.mark.parametrize(("objective", "extra"), [
    ("dinov2", []),
    ("mae", ["--model.mae.time_masking", "consistent"]),
])
def test_pretrain_on_a_stack_records_the_temporal_embedding(temporal_folder: Path, tmp_path: Path, objective, extra):
    out = tmp_path / objective
    recipe = RECIPES / f"tiny-pretrain-{objective}.yaml"
    assert main(["--config", str(recipe), "--out", str(out), "--data.paths", f"[{temporal_folder}]", *STACK, *extra]) == 0
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["backbone"]["embed"] == "temporal" and config["backbone"]["num_frames"] == 3
    assert config["backbone"]["date_encoding"] == {"features": 128, "reference_year": 2000}
    tensors = load_file(out / "checkpoint" / "model.safetensors")
    assert tensors["patch_embed.date_encoding.weight"].abs().sum() > 0  # trained away from its zero start
    model = load_model(out / "checkpoint").model
    days = torch.tensor([[18_000, 18_100, 18_200]])
    with torch.no_grad(), stack_dates(model, days):
        features = model.forward_features(torch.randn(1, 3, 4, 32, 32))
    assert features.shape == (1, 1 + 3 * 16, 64)
    if objective == "mae":
        assert config["task"]["objective_options"]["time_masking"] == "consistent"
        assert sorted(p.name for p in (out / "previews").iterdir())  # the first date's reconstruction


def test_multicrop_gives_every_date_the_same_crop():
    torch.manual_seed(0)
    base = torch.randn(2, 1, 3, 32, 32)
    stack = torch.cat([base, base + 1.0, base + 2.0], dim=1)  # date t = date 0 + t everywhere
    augment = MultiCropAugmentation(24, 16, 2, jitter_p=0.0, blur=False)
    global_crops, local_crops = augment(stack)
    for crop in [*global_crops, *local_crops]:
        assert crop.shape[:3] == (2, 3, 3)
        torch.testing.assert_close(crop[:, 1] - crop[:, 0], torch.ones_like(crop[:, 0]), atol=1e-4, rtol=0)
        torch.testing.assert_close(crop[:, 2] - crop[:, 0], torch.full_like(crop[:, 0], 2.0), atol=1e-4, rtol=0)
    valid = torch.ones(2, 3, 32, 32, dtype=torch.bool)
    valid[:, 1, :, :16] = False  # half of date 1 is nodata
    image, out_valid = MAEAugmentation(16, scale=(0.99, 1.0))(stack, valid)
    assert image.shape == (2, 3, 3, 16, 16) and out_valid.shape == (2, 3, 16, 16)
    assert out_valid[:, 0].all() and not out_valid[:, 1].all()


def test_consistent_masking_hides_the_same_patches_at_every_date():
    x = torch.randn(4, 3 * 16, 8)
    kept, mask, restore = consistent_masking(x, 0.75, frames=3)
    per_date = mask.reshape(4, 3, 16)
    assert torch.equal(per_date[:, 0], per_date[:, 1]) and torch.equal(per_date[:, 0], per_date[:, 2])
    assert kept.shape == (4, 3 * 4, 8) and per_date.sum(dim=2).eq(12).all()
    full = torch.cat([kept, torch.zeros(4, 3 * 12, 8)], dim=1).gather(1, restore.unsqueeze(-1).expand(-1, -1, 8))
    torch.testing.assert_close(full[mask == 0], x[mask == 0])
    _, independent, _ = random_masking(x, 0.75)
    per_date = independent.reshape(4, 3, 16)
    assert not (torch.equal(per_date[:, 0], per_date[:, 1]) and torch.equal(per_date[:, 0], per_date[:, 2]))
