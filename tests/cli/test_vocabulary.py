"""One CLI vocabulary (issue 11, item 6): the same flag means the same thing in every command."""

from __future__ import annotations

import pytest

import fake_rasters
from geoexplora.cli import build_parser, main

RASTER_COMMANDS = ("predict", "embed", "stats")  # read the user's files: --file-bands names their bands
MODEL_BAND_COMMANDS = ("embed", "info", "stats")  # --model-bands: the bands a model reads (or stats reports)
DEVICE_COMMANDS = ("predict", "embed")


def options(command: str) -> set[str]:
    sub = build_parser()._subparsers._group_actions[0].choices[command]  # noqa: SLF001 (argparse has no API)
    return {flag for action in sub._actions if action.help != "==SUPPRESS==" for flag in action.option_strings}


def test_band_and_device_flags_are_the_same_everywhere():
    for command in RASTER_COMMANDS:
        assert "--file-bands" in options(command), command
    for command in MODEL_BAND_COMMANDS:
        assert "--model-bands" in options(command), command
    for command in ("embed", "info"):
        assert "--sensor" in options(command), command
    for command in DEVICE_COMMANDS:
        assert "--device" in options(command), command
    visible = set().union(*(options(c) for c in ("predict", "embed", "stats", "info")))
    assert not visible & {"--bands", "--band-names"}


@pytest.mark.parametrize(("argv", "new"), [
    (["predict", "--raster", "r.tif", "--checkpoint", "c", "--out", "o.tif", "--bands", "a,b"], "--file-bands"),
    (["embed", "--raster", "r.tif", "--backbone", "vit_tiny_patch16_224", "--out", "e.parquet", "--bands", "a"],
     "--model-bands"),
    (["stats", "--raster", "r.tif", "--band-names", "a,b"], "--file-bands"),
    (["info", "--backbone", "vit_tiny_patch16_224", "--bands", "red"], "--model-bands"),
])
def test_old_band_flags_name_their_replacement(argv: list[str], new: str, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was renamed" in err[0] and new in err[0], err


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_device_is_checked_the_same_way_with_one_line(command: str, capsys):
    base = {"predict": ["predict", "--checkpoint", "c", "--out", "o.tif"],
            "embed": ["embed", "--backbone", "vit_tiny_patch16_224", "--out", "e.parquet"]}[command]
    assert main([*base, "--raster", "r.tif", "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'tpu'" in err[0] and "cuda:N" in err[0] and "--help" in err[0], err
    args = build_parser().parse_args([*base, "--raster", "r.tif", "--device", "cuda:1"])
    assert args.device == "cuda:1"


def test_embed_maps_rgb_kernels_with_the_sensor_table(tmp_path):
    from geoexplora.cli.embed import encoder_from_args

    args = build_parser().parse_args(["embed", "--raster", "r.tif", "--backbone", "vit_tiny_patch16_224", "--out",
                                      "e.parquet", "--model-bands", "B02,B03,B04,B08", "--sensor", "sentinel2"])
    encoder = encoder_from_args(args)
    assert encoder.config.sensor == "sentinel2" and encoder.config.bands == ["B02", "B03", "B04", "B08"]
    assert encoder.backbone.patch_embed.proj.weight.shape[1] == 4


def test_stats_reports_the_model_bands_of_files_named_by_file_bands(tmp_path, capsys):
    raster = fake_rasters.write_raster(tmp_path / "r.tif", count=3)
    assert main(["stats", "--raster", str(raster), "--file-bands", "x,y,z", "--model-bands", "z,x", "--json",
                 "--window-size", "16", "--windows", "4"]) == 0
    import json

    assert list(json.loads(capsys.readouterr().out)["bands"]) == ["z", "x"]


def test_completion_script_lists_the_commands_and_their_options(capsys):
    assert main(["completion", "bash", "--quiet"]) == 0
    script = capsys.readouterr().out
    assert all(word in script for word in ("predict", "embed", "--file-bands", "--model-bands", "--device"))
