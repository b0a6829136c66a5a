"""Every kind of bad input, through the real CLI in subprocesses: exit 2, one or two lines, nothing left behind.

Each kind runs ``geoexplora ...`` in its own empty working folder (outputs go there unless the kind names
another folder) and must end with exit status 2, at most 2 lines on stderr, no ``Traceback``, the expected
words in the message, and no file left in its folder (nor in the read-only or input folders). The tiny
inputs (a scene, a 2-block ViT, a fine-tuned checkpoint, recipes) are made once for the module, and the
kinds run two at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import rasterio
import torch
import yaml
from safetensors.torch import save_file

import fake_rasters
from fake_checkpoints import write_segmentation_checkpoint, write_temporal_checkpoint
from geoexplora.inference.embed import part_path

REPO = Path(__file__).resolve().parents[2]
BANDS = ["red", "green", "blue", "nir"]
FINETUNE_KEYS = {"trainer": {"max_steps": 1, "accelerator": "cpu", "devices": 1}}


@dataclass(frozen=True)
class Kind:
    """One bad input: the command line (``{name}`` fields filled from the inputs) and words its message has."""

    number: int
    name: str
    argv: tuple[str, ...]
    needles: tuple[str, ...]
    setup: Callable[[Path, dict[str, Path]], None] | None = None
    needs_cpu_only: bool = False
    env: dict[str, str] = field(default_factory=dict)


def _seed(name: str, content: bytes = b"") -> Callable[[Path, dict[str, Path]], None]:
    """A setup that leaves a file ``name`` in the kind's folder before the run (an existing output)."""
    def setup(folder: Path, _: dict[str, Path]) -> None:
        (folder / name).write_bytes(content)
    return setup


def _existing_run(folder: Path, _: dict[str, Path]) -> None:
    (folder / "run" / "checkpoint").mkdir(parents=True)
    (folder / "run" / "checkpoint" / "config.json").write_text("{}")


P = ("predict", "--checkpoint", "{ckpt}", "--no-preview")
PS = (*P, "--raster", "{scene}")
E = ("embed", "--raster", "{scene}", "--backbone", "vit_base_patch16_224", "--model-bands", "red,green,blue,nir")
S = ("stats", "--raster", "{scene}")
KINDS = [
    Kind(1, "raster corrupt mid-file", (*P, "--raster", "{corrupt}", "--out", "o.tif", "--tile", "32"),
         ("corrupt.tif", "not a readable raster")),
    Kind(2, "tile too large for memory", (*PS, "--out", "o.tif", "--tile", "100000"), ("--tile 100000", "GiB")),
    Kind(3, "tile not a multiple of the patch", (*PS, "--out", "o.tif", "--tile", "31"), ("--tile 31", "patch")),
    Kind(4, "tile 0", (*PS, "--out", "o.tif", "--tile", "0"), ("--tile 0",)),
    Kind(5, "negative tile", (*PS, "--out", "o.tif", "--tile", "-8"), ("--tile -8",)),
    Kind(6, "overlap over half the tile", (*PS, "--out", "o.tif", "--tile", "32", "--overlap", "20"), ("overlap 20",)),
    Kind(7, "batch size 0", (*PS, "--out", "o.tif", "--batch-size", "0"), ("--batch-size 0",)),
    Kind(8, "unknown device", (*PS, "--out", "o.tif", "--device", "tpu"), ("--device", "'tpu'", "cuda:N")),
    Kind(9, "cuda without a GPU", (*PS, "--out", "o.tif", "--device", "cuda"), ("--device cuda", "CUDA"),
         needs_cpu_only=True),
    Kind(10, "vector into a missing folder", (*PS, "--out", "o.tif", "--vector", "nowhere/v.gpkg"),
         ("nowhere", "does not exist")),
    Kind(11, "vector format .shp", (*PS, "--out", "o.tif", "--vector", "v.shp"), ("v.shp", ".gpkg")),
    Kind(12, "vector file exists", (*PS, "--out", "o.tif", "--vector", "v.gpkg"), ("v.gpkg", "already exists"),
         setup=_seed("v.gpkg", b"x")),
    Kind(13, "output folder missing", (*PS, "--out", "nowhere/o.tif"), ("nowhere", "does not exist")),
    Kind(14, "output folder read-only", (*PS, "--out", "{readonly}/o.tif"), ("readonly", "not writable")),
    Kind(15, "several rasters into a read-only folder", (*P, "--raster", "{scene}", "{scene2}", "--out", "{readonly}"),
         ("readonly", "not writable")),
    Kind(16, "output exists", (*PS, "--out", "o.tif"), ("o.tif", "already exists", "--overwrite"),
         setup=_seed("o.tif", b"x")),
    Kind(17, "probabilities output exists", (*PS, "--out", "o.tif", "--probabilities"),
         ("o.probabilities.tif", "already exists"), setup=_seed("o.probabilities.tif", b"x")),
    Kind(18, "raster missing", (*P, "--raster", "missing.tif", "--out", "o.tif"), ("missing.tif", "no such")),
    Kind(19, "text file as raster", (*P, "--raster", "{text}", "--out", "o.tif"), ("text.tif", "not a readable raster")),
    Kind(20, "zero-byte raster", (*P, "--raster", "{empty}", "--out", "o.tif"), ("empty.tif",)),
    Kind(21, "raster without CRS", (*P, "--raster", "{nocrs}", "--out", "o.tif"), ("nocrs.tif", "CRS")),
    Kind(22, "band names of the wrong count", (*PS, "--out", "o.tif", "--file-bands", "a,b"), ("2 band names",)),
    Kind(23, "checkpoint folder missing", ("predict", "--raster", "{scene}", "--checkpoint", "nockpt", "--out", "o.tif"),
         ("nockpt", "not found")),
    Kind(24, "threads 0", (*PS, "--out", "o.tif", "--threads", "0"), ("--threads 0",)),
    Kind(25, "stats window size 0", (*S, "--window-size", "0"), ("--window-size 0",)),
    Kind(26, "stats windows -1", (*S, "--windows", "-1"), ("--windows -1",)),
    Kind(27, "stats out into a missing folder", (*S, "--out", "nowhere/s.json"), ("nowhere", "does not exist")),
    Kind(28, "stats out read-only", (*S, "--out", "{readonly}/s.json"), ("readonly", "not writable")),
    Kind(29, "info on a truncated model.safetensors", ("info", "--checkpoint", "{truncated_ckpt}"),
         ("model.safetensors", "not a safetensors file")),
    Kind(30, "info on a missing model.safetensors", ("info", "--checkpoint", "{noweights_ckpt}"),
         ("model.safetensors", "not found")),
    Kind(31, "info on a pickled model.safetensors", ("info", "--checkpoint", "{pickled_ckpt}"),
         ("model.safetensors", "not a safetensors file")),
    Kind(32, "evaluate with an unknown recipe key", ("evaluate", "--checkpoint", "{ckpt}", "--config", "{unknown_key}"),
         ("unknown_key.yaml", "not_a_key")),
    Kind(33, "evaluate with a YAML syntax error", ("evaluate", "--checkpoint", "{ckpt}", "--config", "{bad_yaml}"),
         ("bad.yaml", "YAML")),
    Kind(34, "evaluate into a read-only --out", ("evaluate", "--checkpoint", "{ckpt}", "--config", "{recipe}",
                                                 "--out", "{readonly}/eval"), ("readonly", "not writable")),
    Kind(35, "evaluate labels in another CRS without overlap",
         ("evaluate", "--checkpoint", "{ckpt}", "--config", "{far_recipe}"), ("far_mask.tif", "overlap")),
    Kind(36, "embed into a read-only folder", (*E, "--out", "{readonly}/e.parquet"), ("readonly", "not writable")),
    Kind(37, "embed tile not a multiple of the patch", (*E, "--out", "e.parquet", "--tile", "31"), ("31", "patch")),
    Kind(38, "embed weights timm offline", (*E, "--out", "e.parquet", "--weights", "timm"),
         ("timm", "network"), env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}),
    Kind(39, "embed output exists", (*E, "--out", "e.parquet"), ("e.parquet", "already exists"),
         setup=_seed("e.parquet", b"x")),
    Kind(40, "finetune YAML syntax error", ("finetune", "--config", "{bad_yaml}", "--out", "run"), ("bad.yaml", "YAML")),
    Kind(41, "finetune unknown key", ("finetune", "--config", "{unknown_key}", "--out", "run"), ("not_a_key",)),
    Kind(42, "finetune accelerator cuda without a GPU", ("finetune", "--config", "{recipe}", "--out", "run",
                                                        "--trainer.accelerator", "cuda"), ("cuda", "GPU"),
         needs_cpu_only=True),
    Kind(43, "finetune into an existing run folder", ("finetune", "--config", "{recipe}", "--out", "run"),
         ("run", "already", "--resume", "--overwrite"), setup=_existing_run),
    Kind(44, "finetune --resume with nothing to resume", ("finetune", "--config", "{recipe}", "--out", "run",
                                                          "--resume"), ("nothing to resume",)),
    Kind(45, "finetune into a read-only --out", ("finetune", "--config", "{recipe}", "--out", "{readonly}/run"),
         ("readonly", "not writable")),
    Kind(46, "finetune labels in another CRS without overlap", ("finetune", "--config", "{far_recipe}", "--out", "run"),
         ("far_mask.tif", "overlap")),
    Kind(47, "finetune weights timm offline", ("finetune", "--config", "{timm_recipe}", "--out", "run"),
         ("timm", "network"), env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}),
    Kind(48, "pretrain unknown key", ("pretrain", "--config", "{recipe}", "--out", "run"), ("does not accept",)),
    Kind(49, "pretrain with --threads -2", ("pretrain", "--config", "{recipe}", "--threads", "-2"), ("--threads -2",)),
    Kind(50, "export into an existing folder", ("export", "--checkpoint", "{ckpt}", "--out", "x"),
         ("x", "already exists"), setup=lambda folder, _: (folder / "x").mkdir()),
    Kind(51, "a renamed flag (--bands)", (*PS, "--out", "o.tif", "--bands", "a,b,c,d"), ("--bands", "--file-bands")),
    Kind(52, "finetune into a run folder another process writes", ("finetune", "--config", "{recipe}", "--out", "run"),
         ("run", "is writing it"), setup=_seed("run.lock", f"{os.getpid()}\n".encode())),  # this test's PID: alive
    Kind(53, "stats --out that another process writes", (*S, "--out", "s.json"), ("s.json", "is writing it"),
         setup=_seed("s.json.lock", f"{os.getpid()}\n".encode())),
    Kind(54, "embed --device with a typo", (*E, "--out", "e.parquet", "--device", "cuda1"), ("--device", "'cuda1'")),
]


def _stack(names: tuple[str, ...], num_frames: int = 3, temporal: bool = True, **raster: object):
    """A setup writing a stack (one tiny raster per name; ``raster`` changes the last) and ``stack.yaml``, a
    temporal fine-tuning recipe over it with a date encoding for ``num_frames`` dates."""
    def setup(folder: Path, inputs: dict[str, Path]) -> None:
        for i, name in enumerate(names):
            extra = raster if i == len(names) - 1 else {}
            fake_rasters.write_raster(folder / "stack" / name, width=90, height=70, seed=i,
                                      **{"count": 4, "descriptions": BANDS, **extra})
        recipe = _recipe(folder / "stack.yaml", {**inputs, "scene": folder / "stack"})
        config = yaml.safe_load(recipe.read_text())
        config["model"]["backbone"].update(embed="temporal", num_frames=num_frames)
        config["data"]["temporal"] = temporal
        recipe.write_text(yaml.safe_dump(config))
    return setup


STACK = ("finetune", "--config", "stack.yaml", "--out", "run")
DATED = ("S2_20200105.tif", "S2_20200310.tif")
KINDS += [
    Kind(55, "stack date that cannot be parsed", STACK, ("S2_latest.tif", "no date in the file name"),
         setup=_stack((*DATED, "S2_latest.tif"))),
    Kind(56, "stack with two files of one date", STACK, ("b_20200310.tif", "is also the date of"),
         setup=_stack((*DATED, "b_20200310.tif"))),
    Kind(57, "stack dates with other bands", STACK, ("S2_20200620.tif", "3 bands"),
         setup=_stack((*DATED, "S2_20200620.tif"), count=3, descriptions=BANDS[:3])),
    Kind(58, "stack dates on another grid", STACK, ("S2_20200620.tif", "misaligned"),
         setup=_stack((*DATED, "S2_20200620.tif"), origin=(fake_rasters.DEFAULT_ORIGIN[0] + 5.0,
                                                           fake_rasters.DEFAULT_ORIGIN[1]))),
    Kind(59, "stack longer than the date encoding", STACK, ("3 dates", "more than the 2"),
         setup=_stack((*DATED, "S2_20200620.tif"), num_frames=2)),
    Kind(60, "temporal model given a single raster", STACK, ("temporal", "as a stack"),
         setup=_stack(DATED, temporal=False)),
    Kind(61, "predict --stack with a single-date checkpoint", (*PS, "--out", "o.tif", "--stack"),
         ("--stack needs a temporal checkpoint",)),
    Kind(62, "predict --dates without --stack", (*PS, "--out", "o.tif", "--dates", "2020-01-05"),
         ("--dates goes with --stack",)),
]


def _two_stacks(command: str, num_frames: int = 5, **data: object):
    """A setup writing stacks ``a`` (3 dates) and ``b`` (5 dates, another CRS), each with a mask, and
    ``stacks.yaml``: a temporal ``command`` (pretrain or finetune) recipe over both with the ``data`` keys."""
    def setup(folder: Path, inputs: dict[str, Path]) -> None:
        places = {"a": ("EPSG:32633", [f"S2_2020010{d}.tif" for d in range(1, 4)]),
                  "b": ("EPSG:32610", [f"S2_2021010{d}.tif" for d in range(1, 6)])}
        for name, (crs, files) in places.items():
            for i, file in enumerate(files):
                fake_rasters.write_raster(folder / name / file, width=90, height=70, count=4, descriptions=BANDS,
                                          crs=crs, seed=i)
            fake_rasters.write_label_raster(folder / f"{name}.tif", width=90, height=70, crs=crs)
        if command == "pretrain":
            config = yaml.safe_load((REPO / "recipes" / "tiny-pretrain-mae.yaml").read_text())
            config["data"].pop("paths")
            config["data"]["stacks"] = [str(folder / "a"), str(folder / "b")]
        else:
            config = yaml.safe_load(_recipe(folder / "stacks.yaml", inputs).read_text())
            config["data"].pop("image"), config["data"].pop("mask")
            config["data"]["stacks"] = [{"image": str(folder / k), "mask": str(folder / f"{k}.tif")} for k in "ab"]
        config["model"]["backbone"].update(embed="temporal", num_frames=num_frames)
        config["data"].update(data)
        (folder / "stacks.yaml").write_text(yaml.safe_dump(config))
    return setup


KINDS += [
    Kind(63, "a stack with fewer dates than data.num_dates", ("pretrain", "--config", "stacks.yaml", "--out", "run"),
         ("data.stacks[0]", "3 dates, fewer than data.num_dates 4"), setup=_two_stacks("pretrain", num_dates=4)),
    Kind(64, "data.num_dates over the model's num_frames", ("finetune", "--config", "stacks.yaml", "--out", "run"),
         ("3 dates, more than the 2", "num_frames", "data.num_dates"),
         setup=_two_stacks("finetune", num_frames=2, num_dates=3)),
]


def _changed_part(folder: Path, inputs: dict[str, Path]) -> None:
    """An interrupted ``embed --out e.parquet`` run's part of the scene, recorded for another size and mtime."""
    part = part_path(folder / "e.parquet", inputs["scene"])
    part.parent.mkdir()
    save_file({"window": torch.zeros(0, dtype=torch.int64)}, part,
              metadata={"files": json.dumps([[str(inputs["scene"].resolve()), 1, 1]]), "options": "{}"})


EC = ("embed", "--raster", "{scene}", "--checkpoint", "{ckpt}")
KINDS += [
    Kind(65, "embed --stack with a single-date checkpoint", (*EC, "--out", "e.parquet", "--stack"),
         ("--stack needs a temporal checkpoint",)),
    Kind(66, "embed a temporal checkpoint without --stack", ("embed", "--raster", "{scene}", "--checkpoint",
                                                             "{temporal_ckpt}", "--out", "e.parquet"),
         ("temporal_ckpt", "pass --stack")),
    Kind(67, "embed --resume with a changed input", (*EC, "--out", "e.parquet", "--resume"),
         ("scene.tif", "changed since the interrupted run", "--overwrite"), setup=_changed_part),
    Kind(68, "embed --dates without --stack", (*EC, "--out", "e.parquet", "--dates", "2020-01-05"),
         ("--dates goes with --stack",)),
    Kind(69, "embed over an interrupted run without --resume", (*EC, "--out", "e.parquet"),
         (".e.parquet.parts", "--resume", "--overwrite"),
         setup=lambda folder, _: (folder / ".e.parquet.parts").mkdir()),
    Kind(70, "embed --devices more than the machine has", (*EC, "--out", "e.parquet", "--devices", "4096"),
         ("--devices 4096", "at most")),
]


def _write_corrupt(path: Path) -> Path:
    """A tiled, compressed 4-band raster whose middle tiles are overwritten with garbage (header intact)."""
    data = fake_rasters.raster_values(width=256, height=256, count=4, dtype="float32", seed=3)
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=4, dtype="float32",
                       crs=fake_rasters.DEFAULT_CRS, tiled=True, blockxsize=64, blockysize=64, compress="deflate",
                       transform=rasterio.transform.from_origin(*fake_rasters.DEFAULT_ORIGIN, 10, 10)) as dst:
        dst.write(data)
        dst.descriptions = tuple(BANDS)
    with rasterio.open(path) as src:  # the offsets of the tiles of the middle window row
        offsets = [int(src.get_tag_item(f"BLOCK_OFFSET_{c}_1", "TIFF", bidx=b)) for b in (1, 2, 3, 4) for c in range(4)]
    blob = bytearray(path.read_bytes())
    for offset in offsets:
        blob[offset:offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(blob))
    return path


def _recipe(path: Path, inputs: dict[str, Path], mask: Path | None = None, **model: object) -> Path:
    config = yaml.safe_load((REPO / "recipes" / "tiny-finetune-segmentation.yaml").read_text())
    config["model"]["backbone"].update(weights=str(inputs["weights"]), depth=2)
    config["model"].update(model)
    config["data"].update(image=str(inputs["scene"]), mask=str(mask or inputs["mask"]))
    config["trainer"].update(FINETUNE_KEYS["trainer"])
    path.write_text(yaml.safe_dump(config))
    return path


def _make_readonly(folder: Path) -> bool:
    """Make ``folder`` read-only for this user (root too, with the immutable flag); False when impossible."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            return False
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            return False
    probe = folder / ".probe"
    try:
        probe.touch()
    except OSError:
        return True
    probe.unlink()
    return False


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_input")
    scene = fake_rasters.write_raster(root / "scene.tif", width=90, height=70, count=4, nodata=-9999.0,
                                      nodata_border=3, descriptions=BANDS)
    mask = fake_rasters.write_label_raster(root / "mask.tif", width=90, height=70, num_classes=3)
    far = fake_rasters.write_label_raster(root / "far_mask.tif", width=90, height=70, crs="EPSG:32610")
    weights, ckpt = write_segmentation_checkpoint(root, scene, BANDS)
    made = {"root": root, "scene": scene, "mask": mask, "weights": weights, "ckpt": ckpt,
            "temporal_ckpt": write_temporal_checkpoint(root, scene, BANDS)}
    made["scene2"] = shutil.copy(scene, root / "scene2.tif")
    made["corrupt"] = _write_corrupt(root / "corrupt.tif")
    made["text"] = root / "text.tif"
    made["text"].write_text("this is not a raster\n")
    made["empty"] = root / "empty.tif"
    made["empty"].touch()
    made["nocrs"] = fake_rasters.write_raster(root / "nocrs.tif", count=4, georeferenced=False)
    for name, damage in (("truncated", lambda p: p.write_bytes(p.read_bytes()[:100])), ("noweights", Path.unlink),
                         ("pickled", lambda p: torch.save({"w": torch.zeros(2)}, p))):
        copy = Path(shutil.copytree(ckpt, root / f"{name}_ckpt"))
        damage(copy / "model.safetensors")
        made[f"{name}_ckpt"] = copy
    made["recipe"] = _recipe(root / "recipe.yaml", made)
    made["far_recipe"] = _recipe(root / "far_recipe.yaml", made, mask=far)
    made["timm_recipe"] = _recipe(root / "timm_recipe.yaml", made)
    timm_config = yaml.safe_load(made["timm_recipe"].read_text())
    timm_config["model"]["backbone"]["weights"] = "timm"
    made["timm_recipe"].write_text(yaml.safe_dump(timm_config))
    made["unknown_key"] = root / "unknown_key.yaml"
    made["unknown_key"].write_text(made["recipe"].read_text().replace("data:\n", "data:\n  not_a_key: 1\n", 1))
    made["bad_yaml"] = root / "bad.yaml"
    made["bad_yaml"].write_text("model:\n  task: [segmentation\ndata: {\n")
    made["readonly"] = root / "readonly"
    made["readonly"].mkdir()
    writable = not _make_readonly(made["readonly"])
    yield {**made, "readonly_works": Path("") if writable else made["readonly"]}
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(made["readonly"])], capture_output=True)
    made["readonly"].chmod(0o755)


@dataclass(frozen=True)
class Outcome:
    exit: int
    stderr: str
    left: list[str]
    seconds: float


def _listing(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def outcomes(inputs: dict[str, Path]) -> dict[int, Outcome]:
    """Every kind run once in its own process (tests/cli/cli_forks.py: forked after one import of the stack),
    two at a time; what each left in its folder, and the table of kind, exit status and stderr lines."""
    runs, folders = [], []
    for kind in KINDS:
        folder = inputs["root"] / "kinds" / f"{kind.number:02d}"
        folder.mkdir(parents=True)
        if kind.setup is not None:
            kind.setup(folder, inputs)
        folders.append((folder, _listing(folder)))
        runs.append({"argv": [a.format(**inputs) for a in kind.argv], "cwd": str(folder),
                     "env": {"OMP_NUM_THREADS": "1", **kind.env}})
    shared = [inputs["root"] / "readonly", inputs["ckpt"], inputs["temporal_ckpt"]]
    before = {str(f): _listing(f) for f in shared}
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("cli_forks.py")), "--jobs", "2"],
                            input=json.dumps(runs), capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    done = {}
    for kind, raw, (folder, seeded) in zip(KINDS, json.loads(result.stdout), folders, strict=True):
        done[kind.number] = Outcome(raw["exit"], raw["stderr"], sorted(_listing(folder) - seeded), raw["seconds"])
        (inputs["root"] / f"stderr-{kind.number:02d}.txt").write_text(raw["stderr"])
    inputs["left_in_shared"] = sorted(p for f in shared for p in _listing(f) - before[str(f)])
    table = [f"{'kind':<58}{'exit':>5}{'lines':>6}{'s':>6}"]
    for kind in KINDS:
        o = done[kind.number]
        table.append(f"{kind.number:>2} {kind.name:<55}{o.exit:>5}{len(o.stderr.splitlines()):>6}{o.seconds:>6.1f}")
    (inputs["root"] / "table.txt").write_text("\n".join(table) + "\n")
    print("\n" + "\n".join(table))
    return done


def test_nothing_left_in_the_input_or_read_only_folders(inputs: dict[str, Path], outcomes) -> None:
    assert inputs["left_in_shared"] == []


def test_at_least_forty_kinds_numbered_once() -> None:
    numbers = [k.number for k in KINDS]
    assert len(KINDS) >= 40 and numbers == list(range(1, len(KINDS) + 1))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: f"{k.number:02d}-{k.name.replace(' ', '-')}")
def test_bad_input_is_one_line_and_leaves_nothing(kind: Kind, inputs: dict[str, Path],
                                                   outcomes: dict[int, Outcome]) -> None:
    if kind.needs_cpu_only and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if "{readonly}" in " ".join(kind.argv) and not inputs["readonly_works"].name:
        pytest.skip("cannot make a folder read-only for this user here")
    outcome = outcomes[kind.number]
    err = outcome.stderr
    assert outcome.exit == 2, err
    assert "Traceback" not in err and 1 <= len(err.splitlines()) <= 2, err
    assert all(n in err for n in kind.needles), err
    assert not outcome.left, outcome.left
