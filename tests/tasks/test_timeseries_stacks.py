"""Several stacks of different places and numbers of dates in one run: a fixed T per sample, the dates kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

import fake_rasters
from geoexplora.cli import main
from geoexplora.data.stack import RasterStack
from geoexplora.errors import GeoExploraError
from geoexplora.models import load_model
from geoexplora.tasks.finetune_data import LabelledRasterDataModule
from geoexplora.tasks.pretrain_data import UnlabelledRasterDataModule

REPO = Path(__file__).resolve().parents[2]
BANDS = ["red", "green", "blue", "nir"]
TINY = dict(embed_dim=64, depth=2, num_heads=4, patch_size=8, img_size=32)
QUIET = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary",
         "false"]
#: Two places: 3 dates in UTM 33N, 5 dates in UTM 10N (another CRS), each with a 3-class mask.
PLACES = {
    "a": dict(dates=("20200105", "20200310", "20200620"), crs=fake_rasters.DEFAULT_CRS,
              origin=fake_rasters.DEFAULT_ORIGIN, size=(64, 64)),
    "b": dict(dates=("20210110", "20210301", "20210415", "20210601", "20210720"), crs="EPSG:32610",
              origin=(400_000.0, 4_100_000.0), size=(96, 64)),
}


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders ``a`` (T=3) and ``b`` (T=5) of 4-band float32 dates, masks ``a.tif`` and ``b.tif``, a tiny ViT."""
    root = tmp_path_factory.mktemp("stacks")
    for name, place in PLACES.items():
        width, height = place["size"]
        grid = dict(width=width, height=height, crs=place["crs"], origin=place["origin"])
        for i, day in enumerate(place["dates"]):
            fake_rasters.write_raster(root / name / f"S2_{day}.tif", count=4, seed=10 * len(name) + i,
                                      descriptions=BANDS, **grid)
        fake_rasters.write_label_raster(root / f"{name}.tif", num_classes=3, **grid)
    torch.manual_seed(0)
    save_file(timm.create_model("vit_base_patch16_224", num_classes=0, **TINY).state_dict(), root / "vit.safetensors")
    return {"root": root, "a": root / "a", "b": root / "b"}


def stack_days(folder: Path) -> tuple[int, ...]:
    return RasterStack.from_paths(folder).days


def labelled(stacks: dict[str, Path]) -> list[dict[str, str]]:
    return [{"image": str(stacks[k]), "mask": str(stacks["root"] / f"{k}.tif")} for k in ("a", "b")]


def epoch_queries(module, epoch: int = 0) -> list:
    sampler = module.train_dataloader().sampler
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("task", ["pretrain", "finetune"])
def test_batches_hold_num_dates_of_each_stack(stacks: dict[str, Path], task: str) -> None:
    common = dict(window_size=16, windows_per_epoch=24, batch_size=4, seed=1)
    module = (UnlabelledRasterDataModule(stacks=[str(stacks["a"]), str(stacks["b"])], statistics_windows=4, **common)
              if task == "pretrain" else LabelledRasterDataModule(stacks=labelled(stacks), block_size=16, **common))
    module.setup()
    assert module.num_dates == 3  # the fewest dates of any stack
    days = [set(stack_days(stacks["a"])), set(stack_days(stacks["b"]))]
    seen = set()
    for batch in module.train_dataloader():
        assert batch["image"].shape == (4, 3, 4, 16, 16)
        assert batch["valid" if task == "pretrain" else "mask"].shape[-2:] == (16, 16)
        for dates in batch["dates"].tolist():
            assert dates == sorted(dates) and len(set(dates)) == 3
            stack = next(k for k, d in enumerate(days) if set(dates) <= d)  # a real subset of one stack's dates
            seen.add((stack, tuple(dates)))
    assert {k for k, _ in seen} == {0, 1} and len({d for k, d in seen if k == 1}) > 1  # b: several subsets


def test_windows_and_date_subsets_follow_the_seed_and_epoch(stacks: dict[str, Path]) -> None:
    def module(seed: int) -> UnlabelledRasterDataModule:
        made = UnlabelledRasterDataModule(stacks=[str(stacks["a"]), {"paths": str(stacks["b"])}], window_size=16,
                                          windows_per_epoch=16, batch_size=4, statistics_windows=4, seed=seed,
                                          num_dates=2)
        made.setup()
        return made

    first, again = module(0), module(0)
    assert epoch_queries(first) == epoch_queries(again) and epoch_queries(first, 1) == epoch_queries(again, 1)
    assert epoch_queries(first) != epoch_queries(first, 1) and epoch_queries(first) != epoch_queries(module(1))
    assert {len(q.dates) for q in epoch_queries(first)} == {2}
    loader, resumed = first.train_dataloader(), again.train_dataloader()
    batches = [b["dates"] for b in loader]
    resumed.resume_at({"epoch": 0, "batches": 2})  # as ExactResume does after a kill at batch 2
    rest = [b["dates"] for b in resumed]
    assert len(rest) == 2 and all(torch.equal(x, y) for x, y in zip(rest, batches[2:], strict=True))
    finetune = [LabelledRasterDataModule(stacks=labelled(stacks), window_size=16, block_size=16, seed=0,
                                         windows_per_epoch=16) for _ in range(2)]
    for made in finetune:
        made.setup()
    assert epoch_queries(finetune[0], 2) == epoch_queries(finetune[1], 2)
    val = [list(made.val_dataloader().sampler) for made in finetune]
    assert val[0] == val[1] == list(finetune[0].val_dataloader().sampler)  # the same every epoch


def test_a_stack_shorter_than_num_dates_and_mixed_keys_are_one_line(stacks: dict[str, Path]) -> None:
    with pytest.raises(GeoExploraError, match=r"data.stacks\[0\] \(.*a\): 3 dates, fewer than data.num_dates 4; "
                                              r"set data.num_dates to 3 or less"):
        UnlabelledRasterDataModule(stacks=[str(stacks["a"]), str(stacks["b"])], num_dates=4)
    with pytest.raises(GeoExploraError, match="exactly one of data.paths"):
        UnlabelledRasterDataModule(paths=[str(stacks["a"])], stacks=[str(stacks["b"])])
    with pytest.raises(GeoExploraError, match=r"data.stacks\[1\]: unknown key 'masks'"):
        LabelledRasterDataModule(stacks=[labelled(stacks)[0], {"image": str(stacks["b"]), "masks": "x.tif"}])
    with pytest.raises(GeoExploraError, match="data.num_dates is for stacks"):
        UnlabelledRasterDataModule(paths=[str(stacks["a"])], num_dates=2)


def test_pretrain_and_finetune_on_two_stacks(stacks: dict[str, Path], tmp_path: Path) -> None:
    pretrain = ["pretrain", "--config", str(REPO / "recipes" / "tiny-pretrain-mae.yaml"), "--out", str(tmp_path / "pre"),
                "--data.paths", "null", "--data.stacks", f"[{stacks['a']}, {stacks['b']}]", "--data.window_size",
                "32", "--model.backbone.embed", "temporal", "--trainer.max_steps", "2", "--data.batch_size", "2",
                "--data.windows_per_epoch", "4", "--data.statistics_windows", "4", *QUIET]
    assert main(pretrain) == 0
    assert json.loads((tmp_path / "pre" / "checkpoint" / "config.json").read_text())["backbone"]["num_frames"] == 3
    root = stacks["root"]
    recipe = root / "two-stacks.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"task": "segmentation", "strategy": "lora", "strategy_options": {"lora_rank": 4},
                  "segmentation_head": "linear", "backbone": {
                      "model": "vit_base_patch16_224", "weights": str(root / "vit.safetensors"), "bands": BANDS,
                      "embed": "temporal", "num_frames": 5, **TINY}},
        "data": {"stacks": labelled(stacks), "num_dates": 3, "window_size": 32, "block_size": 32,
                 "windows_per_epoch": 8, "batch_size": 4},
        "trainer": {"max_epochs": 1, "devices": 1},
    }))
    assert main(["finetune", "--config", str(recipe), "--out", str(tmp_path / "ft"), *QUIET]) == 0
    model = load_model(tmp_path / "ft" / "checkpoint")
    assert model.config.backbone.num_frames == 5 and [c.name for c in model.classes] == ["0", "1", "2"]
