"""Label sources: raster masks, vector files (rasterised or one window per feature) and scene tiles.

* :class:`RasterMaskDataset`: a class raster read with nearest-neighbour resampling; ``image_ds & mask_ds``
  (TorchGeo IntersectionDataset) yields ``image`` and ``mask`` for segmentation.
* :class:`VectorMaskDataset`: points/polygons with a class column rasterised into a ``mask``.
* :class:`VectorWindowDataset`: one window of a raster dataset centred on each point / polygon centroid,
  with the feature's class index, for classification.
* :class:`SceneClassificationDataset`: whole tiles labelled by folder (``root/<class>/*.tif``) or a CSV.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import torch
from pyproj import CRS
from rasterio.errors import RasterioError
from rasterio.enums import Resampling
from torch import Tensor
from torch.utils.data import Dataset
from torchgeo.datasets import GeoDataset, VectorDataset
from torchgeo.datasets.utils import GeoSlice, Sample

from geoexplora.data.direct_reads import DirectWindowReads
from geoexplora.data.raster import PathLike, find_raster_files, inspect_rasters, invalid_pixels
from geoexplora.errors import GeoExploraError

logger = logging.getLogger(__name__)

DEFAULT_IGNORE_INDEX = 255


class RasterMaskDataset(DirectWindowReads):
    """Single-band class rasters (segmentation labels) as a TorchGeo dataset with ``is_image = False``.

    Read with nearest-neighbour resampling and reprojected by TorchGeo when its CRS differs from the
    dataset it is intersected with. Samples have ``mask``: int64 (H, W) holding the raster's class
    values, with nodata, NaN and pixels outside every file set to ``ignore_index``; plus TorchGeo's
    ``bounds`` and ``transform``.

    Pass the image dataset's ``crs`` and ``res`` so that ``image_ds & mask_ds`` needs no conversion.
    """

    is_image = False

    def __init__(
        self,
        paths: PathLike | Iterable[PathLike],
        crs: CRS | None = None,
        res: float | tuple[float, float] | None = None,
        nodata: float | None = None,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        cache: bool = True,
    ) -> None:
        files = find_raster_files(paths)
        infos = inspect_rasters(files)
        if infos[0].count != 1:
            raise GeoExploraError(f"{infos[0].path}: a label raster must have 1 band, this one has {infos[0].count}")
        self.nodata_value = nodata if nodata is not None else infos[0].nodata
        # Fill value for pixels no file covers: read back as nodata, hence as ignore_index.
        self.nodata = self.nodata_value if self.nodata_value is not None else float("nan")
        self.ignore_index = ignore_index
        super().__init__(paths=[str(f) for f in files], crs=crs, res=res, cache=cache)

    @property
    def dtype(self) -> torch.dtype:
        """Read as float32 so nodata/NaN survive until mapped to ``ignore_index`` (exact for classes < 2**24)."""
        return torch.float32

    @property
    def resampling(self) -> Resampling:
        """Class values are never interpolated."""
        return Resampling.nearest

    def __getitem__(self, index: GeoSlice) -> Sample:
        """The window at ``index``: ``mask`` int64 (H, W) with invalid pixels set to ``ignore_index``."""
        sample = super().__getitem__(index)
        values = sample["mask"]
        invalid = invalid_pixels(values.unsqueeze(-3), self.nodata_value)
        sample["mask"] = torch.nan_to_num(values).long().masked_fill(invalid, self.ignore_index)
        return sample


@dataclass(frozen=True)
class VectorLabels:
    """Features of a vector file in a target CRS with their class indices.

    Attributes:
        frame: the features, reprojected, with an int64 ``class_index`` column.
        classes: class names; a feature's ``class_index`` is its position here.
    """

    frame: gpd.GeoDataFrame
    classes: tuple[str, ...]

    @property
    def class_to_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}


def read_vector_labels(
    path: PathLike,
    class_column: str,
    crs: CRS,
    classes: Sequence[str] | None = None,
    layer: str | int | None = None,
) -> VectorLabels:
    """Read a shapefile / GeoPackage / GeoParquet, reproject it to ``crs`` and index its classes.

    Class names are the column's values as strings; without ``classes`` they are its distinct values
    sorted (numerically for a numeric column). Features with an empty class are dropped.

    Raises:
        GeoExploraError: naming the file when it is missing or unreadable, has no CRS, lacks the
            column, or holds a class not in ``classes``.
    """
    path = Path(path)
    if not path.exists():
        raise GeoExploraError(f"{path}: no such vector file")
    try:
        frame = gpd.read_parquet(path) if path.suffix.lower() == ".parquet" else gpd.read_file(path, layer=layer)
    except Exception as err:  # pyogrio / pyarrow raise several unrelated types for unreadable files
        raise GeoExploraError(f"{path}: not a readable vector file ({str(err).splitlines()[0]})") from None
    if class_column not in frame.columns:
        columns = ", ".join(c for c in frame.columns if c != frame.geometry.name)
        raise GeoExploraError(f"{path}: no column {class_column!r}; its columns are {columns}")
    if frame.crs is None:
        raise GeoExploraError(f"{path}: vector file has no CRS (missing .prj?)")
    frame = frame[frame[class_column].notna() & frame.geometry.notna()].to_crs(crs)
    values = frame[class_column]
    names = values.astype(str)
    if classes is None:
        classes = [str(v) for v in sorted(values.unique())]
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise GeoExploraError(f"{path}: classes {', '.join(unknown)} not in the given classes {', '.join(classes)}")
    lookup = {name: i for i, name in enumerate(classes)}
    frame = frame.assign(class_index=names.map(lookup).astype("int64"))
    return VectorLabels(frame, tuple(classes))


class VectorMaskDataset(VectorDataset):
    """Points/polygons with a class column rasterised into a segmentation mask (TorchGeo VectorDataset).

    Samples have ``mask``: int64 (H, W) holding each covered pixel's class index (position in
    ``classes``) and ``ignore_index`` where no feature lies; plus TorchGeo's ``bounds``, ``transform``.
    Features are reprojected to ``crs``; give the image dataset's ``crs`` and ``res``.
    """

    def __init__(
        self,
        path: PathLike,
        class_column: str,
        crs: CRS,
        res: float | tuple[float, float],
        classes: Sequence[str] | None = None,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        layer: str | int | None = None,
    ) -> None:
        labels = read_vector_labels(path, class_column, crs, classes, layer)
        self.classes = labels.classes
        self.class_to_index = labels.class_to_index
        self.ignore_index = ignore_index
        super().__init__(paths=str(path), crs=crs, res=res, label_name=class_column, layer=layer)

    def get_label(self, feature: pd.Series) -> int:
        """Burn value of a feature: class index + 1 (0 is TorchGeo's fill for 'no feature')."""
        return self.class_to_index[str(feature[self.label_name])] + 1

    def __getitem__(self, index: GeoSlice) -> Sample:
        """The window at ``index``: ``mask`` int64 (H, W) of class indices, ``ignore_index`` off features."""
        sample = super().__getitem__(index)
        burned = sample["mask"]
        sample["mask"] = torch.where(burned == 0, self.ignore_index, burned - 1)
        return sample


class VectorWindowDataset(Dataset[Sample]):
    """One window of ``raster`` centred on each point (or polygon centroid) of a vector file, with its class.

    Features are reprojected to the raster's CRS; those whose centre lies outside every raster footprint
    are dropped (``num_dropped``). Windows are on the raster's pixel grid: the feature's pixel is at row
    and column ``window_size // 2``; parts of a window beyond the raster read as nodata (``valid`` False).

    Item ``i`` is ``raster``'s sample for that window (``image`` float32 (C, H, W), ``valid`` ...) plus
    ``label``: int64 scalar, the class index in ``classes``.
    """

    def __init__(
        self,
        raster: GeoDataset,
        path: PathLike,
        class_column: str,
        window_size: int,
        classes: Sequence[str] | None = None,
        layer: str | int | None = None,
    ) -> None:
        labels = read_vector_labels(path, class_column, raster.crs, classes, layer)
        self.raster = raster
        self.window_size = window_size
        self.classes = labels.classes
        self.class_to_index = labels.class_to_index
        centres = labels.frame.geometry.centroid
        inside = centres.within(raster.index.geometry.union_all())
        self.num_dropped = int((~inside).sum())
        if self.num_dropped:
            logger.info("%s: %d of %d features lie outside the raster", path, self.num_dropped, len(centres))
        self.centres = np.column_stack([centres[inside].x, centres[inside].y])
        self.labels = torch.tensor(labels.frame["class_index"][inside].to_numpy(dtype=np.int64, copy=True))
        if len(self.labels) == 0:
            raise GeoExploraError(f"{path}: none of its {len(centres)} features lies inside the raster")

    def __len__(self) -> int:
        return len(self.labels)

    def window(self, i: int) -> GeoSlice:
        """The GeoSlice of feature ``i``'s window, snapped to the raster's pixel grid."""
        x_bounds, y_bounds, _ = self.raster.bounds
        xres, yres = self.raster.res
        x, y = self.centres[i]
        col = math.floor((x - x_bounds.start) / xres) - self.window_size // 2
        row = math.floor((y_bounds.stop - y) / yres) - self.window_size // 2
        xmin = x_bounds.start + col * xres
        ymax = y_bounds.stop - row * yres
        return (
            slice(xmin, xmin + self.window_size * xres, xres),
            slice(ymax - self.window_size * yres, ymax, yres),
        )

    def __getitem__(self, i: int) -> Sample:
        sample = dict(self.raster[self.window(i)])
        sample["label"] = self.labels[i]
        return sample


class SceneClassificationDataset(Dataset[Sample]):
    """Whole tiles with scene labels, each read with rasterio (no CRS needed).

    Item ``i``: ``image`` float32 (C, H, W) in the tile's units with NaN replaced by 0, ``valid`` bool
    (H, W) (False where any band is nodata/NaN), and ``label``: int64 scalar class index, or for
    multi-label data a float32 (K,) multi-hot vector over ``classes``.

    Build with :meth:`from_folder` or :meth:`from_csv`.
    """

    def __init__(
        self, files: Sequence[Path], labels: Sequence[Sequence[str]], classes: Sequence[str], multi_label: bool
    ) -> None:
        self.files = list(files)
        self.classes = tuple(classes)
        self.class_to_index = {name: i for i, name in enumerate(self.classes)}
        self.multi_label = multi_label
        self.label_names = [tuple(names) for names in labels]

    @classmethod
    def from_folder(cls, root: PathLike) -> SceneClassificationDataset:
        """Tiles ``root/<class_name>/*.tif``; classes are the sub-folder names, sorted."""
        root = Path(root)
        if not root.is_dir():
            raise GeoExploraError(f"{root}: no such folder")
        class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
        if not class_dirs:
            raise GeoExploraError(f"{root}: no class sub-folders (expected {root}/<class_name>/*.tif)")
        files: list[Path] = []
        labels: list[tuple[str]] = []
        for class_dir in class_dirs:
            tiles = find_raster_files(class_dir)
            files += tiles
            labels += [(class_dir.name,)] * len(tiles)
        return cls(files, labels, [d.name for d in class_dirs], multi_label=False)

    @classmethod
    def from_csv(
        cls,
        csv_path: PathLike,
        path_column: str = "path",
        label_column: str = "label",
        separator: str = ";",
        classes: Sequence[str] | None = None,
    ) -> SceneClassificationDataset:
        """Tiles listed in a CSV (paths relative to the CSV's folder). Labels holding ``separator``
        (``"forest;river"``) make the dataset multi-label. Classes default to all names, sorted."""
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise GeoExploraError(f"{csv_path}: no such CSV file")
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
        missing = [c for c in (path_column, label_column) if c not in table.columns]
        if missing:
            raise GeoExploraError(f"{csv_path}: no column {', '.join(missing)}; its columns are {', '.join(table.columns)}")
        files = [csv_path.parent / p for p in table[path_column]]
        for line, file in enumerate(files, start=2):
            if not file.is_file():
                raise GeoExploraError(f"{csv_path}: line {line}: tile {file} does not exist")
        labels = [tuple(n.strip() for n in cell.split(separator) if n.strip()) for cell in table[label_column]]
        multi_label = any(len(names) != 1 for names in labels)
        names = sorted({n for row in labels for n in row}) if classes is None else list(classes)
        unknown = sorted({n for row in labels for n in row} - set(names))
        if unknown:
            raise GeoExploraError(f"{csv_path}: labels {', '.join(unknown)} not in the given classes")
        return cls(files, labels, names, multi_label)

    def __len__(self) -> int:
        return len(self.files)

    def label(self, i: int) -> Tensor:
        """Tile ``i``'s target: int64 scalar, or float32 (K,) multi-hot when multi-label."""
        indices = [self.class_to_index[n] for n in self.label_names[i]]
        if not self.multi_label:
            return torch.tensor(indices[0], dtype=torch.int64)
        target = torch.zeros(len(self.classes), dtype=torch.float32)
        target[indices] = 1.0
        return target

    def __getitem__(self, i: int) -> Sample:
        path = self.files[i]
        try:
            with rasterio.open(path) as src:
                image = torch.from_numpy(src.read().astype(np.float32))
                nodata = src.nodata
        except RasterioError as err:
            raise GeoExploraError(f"{path}: not a readable raster ({str(err).splitlines()[0]})") from None
        valid = ~invalid_pixels(image, nodata)
        return {"image": torch.nan_to_num(image, nan=0.0), "valid": valid, "label": self.label(i)}

