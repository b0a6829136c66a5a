"""The ``geoexplora`` command: one sub-command per module in this package.

Every argparse sub-command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. The
Lightning-driven commands (``pretrain``, ``finetune``) take a YAML recipe plus dotted overrides and are
parsed by LightningCLI instead: their modules expose ``main(argv) -> int`` and are imported only when
called. Command modules import torch and the rest inside ``run``, so ``--version`` and ``--help`` stay fast. User errors
(:class:`~geoexplora.errors.GeoExploraError`) are printed as one line on stderr with exit status 2,
never as a traceback. Every command takes ``--threads N`` and runs with a passive OpenMP wait policy
(:mod:`geoexplora.cli.threads`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Sequence

from geoexplora import __version__
from geoexplora.cli import completion, demo, embed, evaluate, export, info, predict, stats
from geoexplora.cli.options import OneLineErrorParser
from geoexplora.cli.terminal import add_terminal_options, closing_line, progress_off
from geoexplora.cli.threads import add_threads_option, parse_threads, passive_wait_policy, pop_threads, set_threads
from geoexplora.errors import GeoExploraError
from geoexplora.gdal_env import cloud_gdal_env, names_remote

COMMANDS = (info, stats, evaluate, predict, embed, export, demo, completion)
# command -> (module with main(argv), one-line help); parsed by LightningCLI, see cli/lightning_runner.py.
LIGHTNING_COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("geoexplora.cli.pretrain", "ExPLoRA domain pre-training (DINOv2 or MAE) on unlabelled rasters"),
    "finetune": ("geoexplora.cli.finetune", "fine-tune for classification, multi-label or segmentation"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="geoexplora",
        description="Adapt pre-trained vision transformers to satellite and aerial imagery (ExPLoRA).",
    )
    parser.add_argument("--version", action="version", version=f"geoexplora {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       parser_class=OneLineErrorParser)
    for command in COMMANDS:
        command.add_parser(subparsers)
    for sub in subparsers.choices.values():
        add_terminal_options(sub)
        add_threads_option(sub)
    for name, (_, help_text) in LIGHTNING_COMMANDS.items():
        subparsers.add_parser(name, help=f"{help_text} (--config RECIPE.yaml, dotted overrides, --resume, "
                              "--quiet, --no-progress; --help for keys)")
    return parser


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is at each record (tests and notebooks swap it;
    a handler bound to the stream of the first call would write to a closed one later)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stderr(level: int) -> None:
    """geoexplora's own log lines on stderr; other libraries' loggers (Lightning has its own) untouched."""
    logger = logging.getLogger("geoexplora")
    logger.setLevel(level)
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI in-process (tests call ``main([...])``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    passive_wait_policy()  # before anything imports torch
    started = time.monotonic()
    try:
        with cloud_gdal_env(remote=names_remote(argv)):
            if argv and argv[0] in LIGHTNING_COMMANDS:
                _log_to_stderr(logging.WARNING if "--quiet" in argv else logging.INFO)
                rest, threads = pop_threads(argv[1:])
                count = parse_threads(threads)
                module = importlib.import_module(LIGHTNING_COMMANDS[argv[0]][0])
                set_threads(count)
                return module.main(rest)  # prints its own summary (cli/lightning_runner.py)
            try:
                args = build_parser().parse_args(argv)
            except SystemExit as exit_:  # --help (0) or a parse error (2), already printed
                return int(exit_.code or 0)
            _log_to_stderr(logging.INFO if args.verbose and not args.quiet else logging.WARNING)
            set_threads(parse_threads(args.threads))
            with progress_off(args.quiet or args.no_progress):
                status = args.run(args)
            if status == 0 and not args.quiet:
                # On stderr: stdout stays the command's results (``--json`` output parses as is).
                print(closing_line(args.command, time.monotonic() - started), file=sys.stderr)
            return status
    except GeoExploraError as error:
        print(f"geoexplora: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geoexplora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
