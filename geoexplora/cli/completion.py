"""``geoexplora completion bash|zsh|tcsh``: print a shell completion script, generated from the parser by shtab.

Install it once, e.g. for bash::

    geoexplora completion bash > ~/.local/share/bash-completion/completions/geoexplora

and for zsh, into a folder on ``$fpath`` as ``_geoexplora``. Completes the commands and every option of
the argparse commands (file paths where an option takes one); ``pretrain``/``finetune`` take a recipe
and dotted keys (``geoexplora pretrain --help`` lists them).
"""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh", "tcsh")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("completion", help="print a shell completion script (bash, zsh, tcsh)")
    parser.add_argument("shell", choices=SHELLS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import shtab

    from geoexplora.cli import build_parser

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0
