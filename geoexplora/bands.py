"""Sensor band tables: band names, centre wavelengths, ground resolution, and which bands are R, G, B.

Band names are the currency of geoexplora: statistics are keyed by them, checkpoints record them, and
an RGB-pretrained patch embedding is carried over to a multi-spectral one by matching them. This module
is plain data plus two look-ups; it knows nothing of rasters or models.
"""

from __future__ import annotations

from dataclasses import dataclass

from geoexplora.errors import GeoExploraError

RGB_ROLES = ("red", "green", "blue")


@dataclass(frozen=True)
class Band:
    """One spectral band of a sensor.

    Attributes:
        name: the band's name as its product spells it (``"B04"``).
        wavelength_nm: centre wavelength in nanometres.
        resolution_m: native ground sampling distance in metres.
        role: ``"red"``, ``"green"``, ``"blue"`` for the visible bands an RGB model saw, else ``None``.
    """

    name: str
    wavelength_nm: float
    resolution_m: float
    role: str | None = None


@dataclass(frozen=True)
class Sensor:
    """A sensor's band table, in the order its products store the bands."""

    name: str
    bands: tuple[Band, ...]

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def rgb_bands(self) -> tuple[str, str, str]:
        by_role = {b.role: b.name for b in self.bands if b.role}
        return (by_role["red"], by_role["green"], by_role["blue"])


SENTINEL2 = Sensor(
    "sentinel2",
    (
        Band("B01", 443, 60),
        Band("B02", 490, 10, "blue"),
        Band("B03", 560, 10, "green"),
        Band("B04", 665, 10, "red"),
        Band("B05", 705, 20),
        Band("B06", 740, 20),
        Band("B07", 783, 20),
        Band("B08", 842, 10),
        Band("B8A", 865, 20),
        Band("B09", 945, 60),
        Band("B10", 1375, 60),
        Band("B11", 1610, 20),
        Band("B12", 2190, 20),
    ),
)

# Landsat 4-7 TM/ETM+ (bands 1-5 and 7; thermal band 6 and panchromatic 8 left out).
LANDSAT7 = Sensor(
    "landsat7",
    (
        Band("B1", 485, 30, "blue"),
        Band("B2", 560, 30, "green"),
        Band("B3", 660, 30, "red"),
        Band("B4", 835, 30),
        Band("B5", 1650, 30),
        Band("B7", 2220, 30),
    ),
)

# Landsat 8/9 OLI (reflective bands 1-7).
LANDSAT8 = Sensor(
    "landsat8",
    (
        Band("B1", 443, 30),
        Band("B2", 482, 30, "blue"),
        Band("B3", 562, 30, "green"),
        Band("B4", 655, 30, "red"),
        Band("B5", 865, 30),
        Band("B6", 1610, 30),
        Band("B7", 2200, 30),
    ),
)

RGB = Sensor("rgb", (Band("red", 665, 0, "red"), Band("green", 560, 0, "green"), Band("blue", 490, 0, "blue")))

SENSORS: dict[str, Sensor] = {s.name: s for s in (SENTINEL2, LANDSAT7, LANDSAT8, RGB)}

# Names whose role is unambiguous without a sensor: generic colour names and Sentinel-2's zero-padded ones.
_UNAMBIGUOUS_ROLES = {
    "red": "red", "r": "red", "green": "green", "g": "green", "blue": "blue", "b": "blue",
    **{b.name.lower(): b.role for b in SENTINEL2.bands if b.role},
}


def get_sensor(name: str) -> Sensor:
    """The band table of a sensor by name (``sentinel2``, ``landsat7``, ``landsat8``, ``rgb``)."""
    try:
        return SENSORS[name.lower()]
    except KeyError:
        raise GeoExploraError(f"unknown sensor {name!r}; known sensors: {', '.join(SENSORS)}") from None


def rgb_role(band: str, sensor: str | None = None) -> str | None:
    """Which of red/green/blue a band name is, or ``None`` for a band an RGB model never saw.

    Without a sensor only unambiguous names match (``red``, ``B04``); Landsat's ``B3`` is red on
    Landsat 7 but green on Landsat 8, so it needs ``sensor="landsat7"`` or ``"landsat8"``. A name may
    also be written ``sensor:band`` (``landsat7:B3``).
    """
    if ":" in band:
        sensor, band = band.split(":", 1)
    if sensor is not None:
        for b in get_sensor(sensor).bands:
            if b.name.lower() == band.lower():
                return b.role
        return None
    return _UNAMBIGUOUS_ROLES.get(band.lower())


def default_band_names(count: int) -> tuple[str, ...]:
    """``B1..Bn``: the names of bands a file does not describe."""
    return tuple(f"B{i}" for i in range(1, count + 1))


def from_torchgeo_name(name: str, sensor: str | None) -> str:
    """A band name as TorchGeo's weights spell it (``meta["bands"]``) in geoexplora's names for ``sensor``.

    TorchGeo writes Sentinel-2 bands ``B1``..``B12`` and ``B8a`` (geoexplora: ``B01``..``B12``, ``B8A``) and
    Landsat surface-reflectance bands ``SR_B4`` (geoexplora: ``B4``). Names geoexplora's tables do not hold
    (Landsat thermal ``B6_VCID_1``, panchromatic ``B8``, Sentinel-1 ``VV``) are kept as TorchGeo spells them.
    """
    if sensor is None:
        return name
    plain = name.removeprefix("SR_")
    if sensor == SENTINEL2.name and plain[:1].upper() == "B" and plain[1:2].isdigit():
        digits, suffix = plain[1:].rstrip("aA"), plain[1:].lstrip("0123456789").upper()
        plain = f"B{int(digits)}{suffix}" if suffix else f"B{int(digits):02d}"
    known = {b.lower(): b for b in get_sensor(sensor).band_names}
    return known.get(plain.lower(), name)
