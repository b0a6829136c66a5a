"""Resume after a real kill: the output is byte-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from inference_helpers import pixel_model

from geoexplora.errors import GeoExploraError
from geoexplora.inference import predict_raster

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"num_classes": 3, "tile": 32, "overlap": 8, "batch_size": 5, "progress": False}

SCRIPT = """
import sys, time, torch
sys.path[:0] = [{here!r}, {tests!r}]
from inference_helpers import pixel_model
from geoexplora.inference import predict_raster

conv = pixel_model()

def slow(x):
    time.sleep(0.1)  # leaves the test time to kill mid-run
    return conv(x)

predict_raster({raster!r}, {out!r}, slow, probabilities={probs!r}, **{params!r})
"""


def plain_function(x: torch.Tensor) -> torch.Tensor:
    """The subprocess's model without the sleep: a function, as there (only an nn.Module's weights are hashed)."""
    return CONV(x)


CONV = pixel_model()


def wait_for_blocks(state: Path, blocks: int, proc: subprocess.Popen, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        try:
            done = json.loads(state.read_text())["blocks_done"]
        except (OSError, ValueError):
            done = 0
        if done >= blocks:
            return done
        time.sleep(0.02)
    raise AssertionError(f"no progress in {timeout} s")


def test_resume_after_kill_is_byte_identical(scene: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    predict_raster(scene, reference / "pred.tif", pixel_model(), probabilities=reference / "probs.tif", **PARAMS)

    out, probs = tmp_path / "pred.tif", tmp_path / "probs.tif"
    script = SCRIPT.format(here=str(Path(__file__).parent), tests=str(Path(__file__).parent.parent), raster=str(scene), out=str(out),
                           probs=str(probs), params=PARAMS)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path)
    try:
        done = wait_for_blocks(tmp_path / "pred.tif.partial.json", 3, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and not probs.exists()
    state = json.loads((tmp_path / "pred.tif.partial.json").read_text())
    assert 3 <= done <= state["blocks_done"] < 8

    with pytest.raises(GeoExploraError, match=r"pred\.tif\.partial\.json: the partial run used other"):
        predict_raster(scene, out, plain_function, probabilities=probs, resume=True, **{**PARAMS, "batch_size": 4})
    with pytest.raises(GeoExploraError, match="the partial run used other"):  # weights are part of the key
        predict_raster(scene, out, pixel_model(), probabilities=probs, resume=True, **PARAMS)

    summary = predict_raster(scene, out, plain_function, probabilities=probs, resume=True, **PARAMS)
    assert summary.resumed_blocks == state["blocks_done"]
    assert summary.windows < summary.total_windows
    assert out.read_bytes() == (reference / "pred.tif").read_bytes()
    assert probs.read_bytes() == (reference / "probs.tif").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.tif", "probs.tif", "reference"]


def test_resume_without_partial_state_runs_from_the_start(scene: Path, tmp_path: Path) -> None:
    summary = predict_raster(scene, tmp_path / "pred.tif", pixel_model(), resume=True, **PARAMS)
    assert summary.resumed_blocks == 0 and summary.windows == summary.total_windows
