"""Options shared by the commands, so one flag means one thing everywhere.

* ``--file-bands B1,B2,...``: names of the raster files' bands, in file order, for files whose band
  descriptions are missing or differ from the names the model knows (``predict``, ``embed``, ``stats``);
* ``--model-bands red,green,...``: the bands a model reads, for a model built from a name rather than
  a checkpoint (``embed --backbone``, ``info --backbone``), and the bands ``stats`` reports;
* ``--sensor``: the sensor table resolving those band names to wavelengths, wherever a model's RGB
  kernels are mapped onto other bands;
* ``--device auto|cpu|cuda|cuda:N`` and ``--devices N`` (worker processes, ``predict`` and ``embed``);
* ``--stack`` / ``--dates``: the rasters are the dates of one place, for a temporal checkpoint;
* ``--weights-dir`` / ``--allow-download`` for commands that load a checkpoint.

The old ``--bands`` / ``--band-names`` flags are refused with one line naming the new flag, and every
parse error is one line (:class:`OneLineErrorParser`), not the usage text.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoexplora.errors import GeoExploraError

if TYPE_CHECKING:
    from geoexplora.data.stack import RasterStack

logger = logging.getLogger(__name__)

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit 2, pointing at ``--help`` for the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")
        sys.exit(2)


def _comma_list(text: str, what: str) -> list[str]:
    items = [b.strip() for b in text.split(",") if b.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"give comma-separated {what}")
    return items


def band_list(text: str) -> list[str]:
    """``"B02, B03,B04"`` -> ``["B02", "B03", "B04"]`` (an argparse ``type``)."""
    return _comma_list(text, "band names, e.g. B02,B03,B04")


def date_list(text: str) -> list[str]:
    """``"2020-01-05,2020-03-10"`` -> its items (an argparse ``type``; parsed as dates by the stack)."""
    return _comma_list(text, "dates, e.g. 2020-01-05,2020-03-10")


def device_name(text: str) -> str:
    """A device the CLI accepts (an argparse ``type``); whether it exists is checked when it is used."""
    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda or cuda:N")
    return text


class _RenamedFlag(argparse.Action):
    """A flag that was renamed: using it is one line naming its replacement."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        raise GeoExploraError(f"{option_string} was renamed: use {self.new}")


def add_file_bands_option(parser: argparse.ArgumentParser) -> None:
    """``--file-bands`` (``args.file_bands``: list of names or None)."""
    parser.add_argument("--file-bands", type=band_list, metavar="B1,B2,...",
                        help="names of the files' bands in file order, when the files carry no band descriptions "
                             "or other names than the model's (default: the descriptions, else B1..Bn)")
    parser.add_argument("--band-names", action=_RenamedFlag, new="--file-bands")


def add_model_bands_option(parser: argparse.ArgumentParser | argparse._ActionsContainer, help_text: str) -> None:
    """``--model-bands`` (``args.model_bands``: list of names or None)."""
    parser.add_argument("--model-bands", type=band_list, metavar="red,green,...", help=help_text)


def add_sensor_option(parser: argparse.ArgumentParser) -> None:
    """``--sensor`` (``args.sensor``)."""
    parser.add_argument("--sensor", help="sensor table resolving the band names to wavelengths, for mapping the "
                                         "model's RGB kernels (sentinel2, landsat7, landsat8, rgb)")


def add_renamed_bands_flag(parser: argparse.ArgumentParser, new: str) -> None:
    """Refuse the old ``--bands`` (it meant the file's bands in one command, the model's in another)."""
    parser.add_argument("--bands", action=_RenamedFlag, new=new)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|cuda:N`` (``args.device``)."""
    parser.add_argument("--device", type=device_name, default="auto", metavar="auto|cpu|cuda|cuda:N",
                        help="where the model runs (default auto: CUDA when available)")


def add_devices_option(parser: argparse.ArgumentParser) -> None:
    """``--devices N`` (``args.devices``): worker processes over several rasters."""
    parser.add_argument("--devices", type=int, default=1, metavar="N",
                        help="spread several rasters over N worker processes: one per GPU, or N CPU processes "
                             "(default 1)")


def add_stack_options(parser: argparse.ArgumentParser, result: str) -> None:
    """``--stack`` (``args.stack``) and ``--dates`` (``args.dates``: list of ISO strings or None); ``result``
    says what a stack gives, in the help."""
    parser.add_argument("--stack", action="store_true",
                        help="the rasters (files or a folder) are the dates of one place, for a temporal checkpoint: "
                             f"{result}; dates from the file names or --dates")
    parser.add_argument("--dates", type=date_list, metavar="YYYY-MM-DD,...",
                        help="with --stack: the files' dates, in the order the files are given")


def stack_from_args(args: argparse.Namespace) -> RasterStack | None:
    """With ``--stack``, the ``--raster`` files (or folder) as one checked stack of ``--dates`` (warning for a
    single date); without it None, and ``--dates`` is refused."""
    from geoexplora.data.stack import RasterStack

    if not args.stack:
        if args.dates:
            raise GeoExploraError("--dates goes with --stack")
        return None
    stack = RasterStack.from_paths(args.raster, dates=args.dates)
    if len(stack) == 1:
        logger.warning("%s: a stack of one date; the temporal model sees a single date", stack.paths[0])
    return stack


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """``--weights-dir`` (search path for source weights and parent checkpoints) and ``--allow-download``."""
    parser.add_argument("--weights-dir", type=Path, action="append", metavar="DIR",
                        help="where to look for the checkpoint's source weights and parent checkpoint after its "
                             "own folder and the working directory (repeatable; also $GEOEXPLORA_WEIGHTS)")
    parser.add_argument("--allow-download", action="store_true",
                        help="let a checkpoint over timm's or TorchGeo's pretrained weights download them")
