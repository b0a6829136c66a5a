"""A wheel of geoexplora carries its recipes: `geoexplora demo` works from a non-editable install."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(out), str(REPO)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"pip wheel failed: {build.stderr[-2000:]}")
    return next(out.glob("geoexplora-*.whl"))


def test_wheel_holds_every_recipe(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(p.name for p in (REPO / "geoexplora" / "recipes").glob("*.yaml"))
    assert recipes and all(f"geoexplora/recipes/{name}" in names for name in recipes)


def test_installed_wheel_runs_demo_help_and_reads_a_recipe(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True)
    script = ("import geoexplora, sys; from geoexplora.cli.demo import RECIPES; "
              f"assert geoexplora.__file__.startswith({str(target)!r}), geoexplora.__file__; "
              "print((RECIPES / 'demo-pretrain.yaml').read_text()[:200]); "
              "from geoexplora.cli import main; sys.exit(main(['demo', '--help']))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ExPLoRA pre-training" in run.stdout and "--weights" in run.stdout
