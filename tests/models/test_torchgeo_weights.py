"""TorchGeo EO weights as backbones (``weights: torchgeo:<Enum>.<MEMBER>``), with the download replaced.

TorchGeo's ``WeightsEnum.get_state_dict`` (the one call that reaches the network) is monkeypatched to
return a random state dict built from timm's model of the member's architecture, in TorchGeo's key names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from torchvision.models._api import WeightsEnum

import fake_rasters
from geoexplora.bands import LANDSAT8, SENTINEL2
from geoexplora.cli import main as cli_main
from geoexplora.errors import GeoExploraError
from geoexplora.models import load_model
from geoexplora.models.backbone import BackboneConfig, carry_band_kernel, create_backbone
from geoexplora.models.checkpoint import CheckpointConfig, Preprocessing, TaskConfig, read_checkpoint, save_checkpoint
from geoexplora.models.export import export_checkpoint
from geoexplora.models.strategies import create_strategy
from geoexplora.models.torchgeo_weights import resolve

S2_DINO = "torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_DINO"
S2_MAE = "torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_MAE"
SOFTCON_S = "torchgeo:ViTSmall14_DINOv2_Weights.SENTINEL2_ALL_SOFTCON"
OLI_SR = "torchgeo:ViTSmall16_Weights.LANDSAT_OLI_SR_MOCO"
# torchgeo.models.resnet._mean_s2 / _std_s2: SoftCon's Sentinel-2 normalisation.
SOFTCON_MEAN_B04, SOFTCON_STD_B04 = 1373.1, 1144.9


def reference_model(spec: str, seed: int = 0) -> torch.nn.Module:
    """timm's model as TorchGeo builds it for ``spec`` (its ``in_chans``, its ``img_size``), random weights."""
    source = resolve(spec)
    torch.manual_seed(seed)
    size = {"img_size": 224} if "dinov2" in source.model else {}
    return timm.create_model(source.model, in_chans=source.in_chans, num_classes=0, **size).eval()


class FakeDownload:
    """Stands in for ``WeightsEnum.get_state_dict``: records its calls, returns ``state`` (copied)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state, self.calls = state, []

    def __call__(self, weights: WeightsEnum, *args, **kwargs) -> dict[str, torch.Tensor]:
        self.calls.append((weights.name, kwargs))
        return {k: v.clone() for k, v in self.state.items()}


@pytest.fixture
def download(monkeypatch):
    """``download(state)`` installs a fake download of ``state`` and returns it."""
    def install(state: dict[str, torch.Tensor]) -> FakeDownload:
        fake = FakeDownload(state)
        monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: fake(self, *a, **k))
        return fake
    return install


def test_member_meta_in_geoexplora_names():
    dino, softcon, oli = resolve(S2_DINO), resolve(SOFTCON_S), resolve(OLI_SR)
    assert (dino.model, dino.in_chans, dino.sensor, dino.ssl_method) == ("vit_small_patch16_224", 13, "sentinel2", "dino")
    assert dino.bands == SENTINEL2.band_names  # TorchGeo's B1..B8a..B12 in geoexplora's B01..B8A..B12
    assert set(dino.mean) == {0.0} and set(dino.std) == {10000.0}  # SSL4EO-S12: x / 10000
    assert softcon.model == "vit_small_patch14_dinov2"
    b04 = softcon.bands.index("B04")
    assert softcon.mean[b04] == pytest.approx(SOFTCON_MEAN_B04) and softcon.std[b04] == pytest.approx(SOFTCON_STD_B04)
    assert (oli.sensor, oli.bands) == ("landsat8", LANDSAT8.band_names)  # SR_B1..SR_B7
    assert resolve("torchgeo:ViTBase14_DINOv2_Weights.SENTINEL1_GRD_SOFTCON").bands == ("VV", "VH")


@pytest.mark.parametrize("spec", [S2_DINO, SOFTCON_S])
def test_strict_load_computes_torchgeo_model(spec, download):
    reference = reference_model(spec)
    fake = download(reference.state_dict())
    source = resolve(spec)
    backbone = create_backbone(BackboneConfig(weights=spec, bands=list(source.bands), sensor=source.sensor)).eval()
    assert fake.calls == [(spec.split(".")[-1], {"progress": True, "check_hash": True, "weights_only": True})]
    x = torch.randn(1, source.in_chans, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(backbone.forward_features(x), reference.forward_features(x), rtol=0, atol=1e-5)


def test_missing_final_norm_is_identity_other_differences_refused(download):
    reference = reference_model(S2_MAE)
    state = reference.state_dict()
    del state["norm.weight"], state["norm.bias"]  # TorchGeo's loader allows a checkpoint without it
    download({**state, "head.weight": torch.zeros(10, 384), "head.bias": torch.zeros(10)})
    backbone = create_backbone(BackboneConfig(weights=S2_MAE, bands=list(SENTINEL2.band_names), sensor="sentinel2"))
    assert torch.equal(backbone.norm.weight, torch.ones(384)) and torch.equal(backbone.norm.bias, torch.zeros(384))
    del state["blocks.3.mlp.fc1.weight"]
    download(state)
    with pytest.raises(GeoExploraError, match=r"missing \['blocks.3.mlp.fc1.weight'\]"):
        create_backbone(BackboneConfig(weights=S2_MAE, bands=["B04"]))
    download(reference_model("torchgeo:ViTSmall16_Weights.LANDSAT_OLI_SR_SIMCLR").state_dict())  # 7 channels
    with pytest.raises(GeoExploraError, match=r"shape mismatch \['patch_embed.proj.weight \(384, 7, 16, 16\) vs"):
        create_backbone(BackboneConfig(weights=S2_MAE, bands=["B04"]))


def energy_scale(new: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Per output channel sqrt(source kernel energy / new kernel energy), shape (D, 1, 1, 1)."""
    return (source.pow(2).sum(dim=(1, 2, 3)) / new.pow(2).sum(dim=(1, 2, 3))).sqrt().view(-1, 1, 1, 1)


def test_band_mapping_same_sensor_subset_and_new_sensor():
    sources = SENTINEL2.band_names
    weight = torch.randn(8, 13, 4, 4)
    assert torch.equal(carry_band_kernel(weight, sources, "sentinel2", sources, "sentinel2"), weight)
    subset = carry_band_kernel(weight, sources, "sentinel2", ("B04", "B08", "B11"), None)
    picked = weight[:, [3, 7, 11]]
    torch.testing.assert_close(subset, picked * energy_scale(picked, weight))
    # Landsat 8 from Sentinel-2: B4/B3/B2 take red/green/blue (S2 B04/B03/B02), NIR B5 the mean of the three.
    landsat = carry_band_kernel(weight, sources, "sentinel2", ("B2", "B3", "B4", "B5"), "landsat8")
    rgb_mean = weight[:, [1, 2, 3]].mean(dim=1)
    expected = torch.stack([weight[:, 1], weight[:, 2], weight[:, 3], rgb_mean], dim=1)
    torch.testing.assert_close(landsat, expected * energy_scale(expected, weight))


def test_backbone_on_new_sensor_carries_kernel_by_band(download):
    reference = reference_model(S2_DINO)
    download(reference.state_dict())
    bands = ["B2", "B3", "B4", "B5"]
    backbone = create_backbone(BackboneConfig(weights=S2_DINO, bands=bands, sensor="landsat8", img_size=64))
    expected = carry_band_kernel(reference.patch_embed.proj.weight.detach(), SENTINEL2.band_names, "sentinel2",
                                 tuple(bands), "landsat8")
    torch.testing.assert_close(backbone.patch_embed.proj.weight, expected)
    torch.testing.assert_close(backbone.blocks[5].attn.qkv.weight, reference.blocks[5].attn.qkv.weight)


def test_explora_trains_patch_embed_only_when_bands_differ_from_source(download):
    download(reference_model(S2_DINO).state_dict())
    explora = create_strategy("explora", lora_rank=4)
    own = explora.apply(create_backbone(BackboneConfig(weights=S2_DINO, bands=list(SENTINEL2.band_names), img_size=32)))
    other = explora.apply(create_backbone(BackboneConfig(weights=S2_DINO, bands=["B04", "B08"], img_size=32)))
    assert not own.patch_embed.proj.weight.requires_grad and other.patch_embed.proj.weight.requires_grad


def test_unknown_names_list_close_matches():
    with pytest.raises(GeoExploraError, match=r"close names: ViTSmall16_Weights\.SENTINEL2_ALL_DINO"):
        BackboneConfig(weights="torchgeo:ViTSmal16_Weights.SENTINEL2_ALL_DINO")
    with pytest.raises(GeoExploraError, match=r"ViTSmall16_Weights has no SENTINEL2_ALL_DIN0; close names: "
                                              r"SENTINEL2_ALL_DINO"):
        BackboneConfig(weights="torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_DIN0")
    with pytest.raises(GeoExploraError, match="does not fit weights"):
        BackboneConfig(model="vit_base_patch16_224", weights=S2_DINO)
    assert BackboneConfig(weights=S2_DINO).model == "vit_small_patch16_224"  # the default model gives way


def test_unknown_name_is_one_line_exit_2(tmp_path, capsys):
    raster = fake_rasters.write_raster(tmp_path / "s2.tif", count=4)
    status = cli_main(["pretrain", "--config", "recipes/tiny-pretrain-dinov2.yaml", "--out", str(tmp_path / "run"),
                       "--data.paths", f"[{raster}]", "--model.backbone.weights", "torchgeo:ViTSmall16_Weights.DINO"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "close names:" in err[0] and "Traceback" not in err[0]


def torchgeo_checkpoint(directory: Path, download) -> tuple[torch.nn.Module, FakeDownload]:
    """An adapter-only pretrain checkpoint over SSL4EO-S12 DINO, six Sentinel-2 bands, no data statistics."""
    fake = download(reference_model(S2_DINO).state_dict())
    backbone = BackboneConfig(weights=S2_DINO, bands=["B02", "B03", "B04", "B08", "B11", "B12"], sensor="sentinel2",
                              img_size=32)
    strategy = create_strategy("explora", lora_rank=4)
    model = strategy.apply(create_backbone(backbone)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    config = CheckpointConfig(backbone, strategy, TaskConfig("pretrain", objective="dinov2"),
                              Preprocessing(tuple(backbone.bands), None, "standardize", 32))
    save_checkpoint(directory, model, config)
    return model, fake


def test_checkpoint_carries_bands_and_statistics(tmp_path, download):
    torchgeo_checkpoint(tmp_path / "ckpt", download)
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["backbone"]["weights"] == S2_DINO and saved["lineage"]["stored"] == "trained"
    source = saved["preprocessing"]["source"]
    assert source["bands"] == list(SENTINEL2.band_names) and source["std"] == [10000.0] * 13
    pre = read_checkpoint(tmp_path / "ckpt").preprocessing
    x = torch.full((1, 6, 2, 2), 2500.0)
    torch.testing.assert_close(pre.normalizer()(x), torch.full((1, 6, 2, 2), 0.25))  # (x - 0) / 10000


def test_loading_torchgeo_checkpoint_downloads_only_when_allowed(tmp_path, download):
    model, fake = torchgeo_checkpoint(tmp_path / "ckpt", download)
    fake.calls.clear()
    with pytest.raises(GeoExploraError, match="--allow-download"):
        load_model(tmp_path / "ckpt")
    assert fake.calls == []
    loaded = load_model(tmp_path / "ckpt", allow_download=True).model
    assert len(fake.calls) == 1
    x = torch.randn(1, 6, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    export_checkpoint(tmp_path / "ckpt", tmp_path / "exported", allow_download=True)
    fake.calls.clear()
    exported = load_model(tmp_path / "exported")  # self-contained: no permission, no download
    assert fake.calls == [] and exported.preprocessing.source.weights == S2_DINO
    with torch.no_grad():
        torch.testing.assert_close(exported.model(x), model(x), rtol=0, atol=1e-5)


def test_cli_pretrain_from_torchgeo_weights(tmp_path, download, monkeypatch):
    fake = download(reference_model(S2_DINO).state_dict())
    raster = fake_rasters.write_raster(tmp_path / "s2.tif", count=4)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    status = cli_main([
        "pretrain", "--config", "recipes/tiny-pretrain-dinov2.yaml", "--out", str(tmp_path / "run"), "--quiet",
        "--data.paths", f"[{raster}]", "--data.band_names", "[B02, B03, B04, B08]", "--data.num_workers", "0",
        "--trainer.max_steps", "2", "--data.batch_size", "2",
        "--model.backbone.weights", S2_DINO, "--model.backbone.model", "vit_small_patch16_224",
        "--model.backbone.embed_dim", "null", "--model.backbone.depth", "null", "--model.backbone.num_heads", "null",
        "--model.backbone.patch_size", "null", "--model.backbone.sensor", "sentinel2",
    ])
    assert status == 0 and len(fake.calls) == 1
    config = read_checkpoint(tmp_path / "run" / "checkpoint")
    assert config.backbone.weights == S2_DINO and config.preprocessing.model_bands == ("B02", "B03", "B04", "B08")
    assert config.preprocessing.statistics is not None  # trained on the data's statistics, which it records
    assert config.preprocessing.source.bands == SENTINEL2.band_names
    fake.calls.clear()
    assert load_model(tmp_path / "run" / "checkpoint", allow_download=True).config.task.steps == 2
    assert len(fake.calls) == 1


def test_finetune_from_a_torchgeo_run_downloads_only_when_the_recipe_says_so(tmp_path, download):
    from geoexplora.tasks.finetune import FinetuneTask

    _, fake = torchgeo_checkpoint(tmp_path / "ckpt", download)
    fake.calls.clear()
    with pytest.raises(GeoExploraError, match="model.allow_download"):
        FinetuneTask("segmentation", init_checkpoint=str(tmp_path / "ckpt"))
    assert fake.calls == []
    task = FinetuneTask("segmentation", init_checkpoint=str(tmp_path / "ckpt"), allow_download=True)
    assert len(fake.calls) == 1 and task.backbone_config.weights == S2_DINO
