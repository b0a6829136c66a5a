"""Where the real sample data and weights live: ``<repo>/../shared`` (present in CI, absent on users' machines)."""

from pathlib import Path

SHARED = (Path(__file__).resolve().parents[1] / ".." / "shared").resolve()
SHARED_DATA = SHARED / "data"
DINOV2_WEIGHTS = SHARED / "weights" / "vit_small_patch14_dinov2.safetensors"
