"""The notebooks run top to bottom (nbclient, the tests' own interpreter as kernel) on tiny data.

Each runs in a temporary working directory, so nothing lands in the repository; the notebooks find the
repository's recipes through ``GEOEXPLORA_REPO``. A failing cell fails the test with the cell's error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from explore.map_checks import BLANK_VARIANCE, VIEWPORT, map_variance  # noqa: E402
from shared_paths import SHARED_DATA  # noqa: E402

from geoexplora.explore_screenshot import find_chromium, screenshot  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def execute(name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run ``notebooks/<name>`` in ``workdir``; return the executed notebook (also saved there for a look)."""
    monkeypatch.setenv("GEOEXPLORA_REPO", str(REPO))  # the kernel inherits this environment
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # "python3" is ipykernel's own spec: jupyter_client starts it with sys.executable, the tests' venv.
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, workdir / name)
    return nb


def outputs_text(nb: nbformat.NotebookNode) -> str:
    return "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                     for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)


def assert_scene_source(nb: nbformat.NotebookNode) -> bool:
    """The notebook said which scene it used: the real Landsat sample when ``../shared`` has it, else the demo's
    cache or the synthetic fallback. True when it used the real scene."""
    text = outputs_text(nb)
    real = "scene: the real Landsat 7 North Carolina scene" in text
    assert real if (SHARED_DATA / "landsat7_nc").is_dir() else real or "scene: a synthetic scene" in text
    return real


def output_kinds(nb: nbformat.NotebookNode) -> list[str]:
    return [kind for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs for kind in o.get("data", {})]


def test_notebooks_are_stored_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear its outputs"


def test_kernel_is_this_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert Path(nb.cells[0].outputs[0]["text"].strip()).resolve() == Path(sys.executable).resolve()


def test_01_quickstart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    nb = execute("01_quickstart.ipynb", tmp_path, monkeypatch)
    assert_scene_source(nb)
    work = tmp_path / "quickstart-output"
    for path in ("pretrain/checkpoint/model.safetensors", "finetune/checkpoint/config.json",
                 "landcover-predicted.tif", "landcover-predicted.preview.png", "evaluate/metrics.json"):
        assert (work / path).is_file(), path
    assert "mIoU" in json.loads((work / "evaluate/metrics.json").read_text())
    assert output_kinds(nb).count("image/png") >= 3  # scene, evaluation plots, maps
    assert not (REPO / "notebooks" / "quickstart-output").exists()


def test_02_explore_embeddings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import geopandas as gpd

    nb = execute("02_explore_embeddings.ipynb", tmp_path, monkeypatch)
    work = tmp_path / "embeddings-output"
    embeddings = gpd.read_parquet(work / "embeddings.parquet")
    if assert_scene_source(nb):  # 489 x 443 px in 16-px windows, less the all-nodata ones
        assert 700 < len(embeddings) <= 31 * 28 and "landsat_multiband" in embeddings["source"].iloc[0]
    else:  # the synthetic 96 x 96 scene
        assert len(embeddings) == 36
    for path in ("embeddings.tif", "embeddings.preview.png", "map.html"):
        assert (work / path).is_file(), path
    html = (work / "map.html").read_text()
    assert "data:image/png;base64" in html and "Leaflet 1.9.4" in html  # scene overlay, Leaflet inlined
    assert "https://cdn" not in html and "openstreetmap" not in html.lower()  # no CDN, no tiles
    if find_chromium():  # the notebook's map as saved and as Jupyter shows it (folium's iframe), no network
        shown = next(o["data"]["text/html"] for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
                     if "<iframe" in o.get("data", {}).get("text/html", ""))
        (tmp_path / "shown.html").write_text(f"<!DOCTYPE html><html><body>{shown}</body></html>")
        for page in (work / "map.html", tmp_path / "shown.html"):
            shot = screenshot(page, page.with_suffix(".png"), size=VIEWPORT)
            assert map_variance(shot) > BLANK_VARIANCE, f"notebook 02's {page.name} is blank offline"
    assert output_kinds(nb).count("image/png") >= 3 and "text/html" in output_kinds(nb)  # plots, folium map


def test_03_compare_strategies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    nb = execute("03_compare_strategies.ipynb", tmp_path, monkeypatch)
    assert_scene_source(nb)
    work = tmp_path / "strategies-output"
    results = json.loads((work / "results.json").read_text())
    assert [r["strategy"] for r in results] == ["linear", "lora", "explora -> lora"]
    assert all(r["trainable_params"] > 0 and 0.0 <= r["mIoU"] <= 1.0 for r in results)
    assert (work / "accuracy_vs_parameters.png").is_file()
    assert "linear" in outputs_text(nb) and "image/png" in output_kinds(nb)
