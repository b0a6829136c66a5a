"""A run interrupted at every point of its last step (COG copies, renames, clean-up) resumes to the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio.shutil
from inference_helpers import pixel_model

from geoexplora.inference import predict_raster
from geoexplora.inference import writer as writer_module

PARAMS = {"num_classes": 3, "tile": 32, "overlap": 8, "batch_size": 5, "progress": False}
CONV = pixel_model()


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("reference")
    predict_raster(scene, folder / "o.tif", CONV, probabilities=folder / "p.tif", **PARAMS)
    return files(folder)


class Killed(BaseException):
    """Stands for a kill: not an ``Exception``, so the run keeps its partial files as a real kill does."""


# (what is interrupted, which call of it) in the order finish() makes them
POINTS = [("copy", 1), ("copy", 2), ("replace", 1), ("replace", 2), ("unlink", 1), ("unlink", 2), ("unlink", 3)]


@pytest.mark.parametrize(("call", "nth"), POINTS, ids=[f"{c}-{n}" for c, n in POINTS])
def test_interrupted_finish_resumes_to_the_same_bytes(scene, tmp_path, reference, monkeypatch, call, nth):
    count = {"n": 0}
    real = {"copy": rasterio.shutil.copy, "replace": writer_module.os.replace, "unlink": Path.unlink}[call]

    def interrupted(*args, **kwargs):
        count["n"] += 1
        if call == "copy" and count["n"] == nth:  # dies with the COG half written
            Path(args[1]).write_bytes(b"half a COG")
            raise Killed
        if call != "copy" and count["n"] == nth:
            raise Killed
        return real(*args, **kwargs)

    target = {"copy": (rasterio.shutil, "copy"), "replace": (writer_module.os, "replace"),
              "unlink": (Path, "unlink")}[call]
    finish = writer_module.BlockWriter.finish

    def finish_interrupted(self: writer_module.BlockWriter) -> None:  # the calls of finish() only
        with monkeypatch.context() as patch:
            patch.setattr(*target, interrupted)
            finish(self)

    with monkeypatch.context() as patch:
        patch.setattr(writer_module.BlockWriter, "finish", finish_interrupted)
        with pytest.raises(Killed):
            predict_raster(scene, tmp_path / "o.tif", CONV, probabilities=tmp_path / "p.tif", **PARAMS)
    assert count["n"] >= nth
    predict_raster(scene, tmp_path / "o.tif", CONV, probabilities=tmp_path / "p.tif", resume=True, **PARAMS)
    assert files(tmp_path) == reference
