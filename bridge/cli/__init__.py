"""``steerbridge``: the command line, one module per command group.

Each module registers its sub-parsers and holds its command bodies: ``starter`` (demo,
devices, save-tiny), ``extract`` (extract, analyze), ``render`` (render, replay with
--automation), ``serve``, ``bench`` and ``toy``; ``validators`` holds the shared
argument types and pre-load checks, ``parsing`` the shared parser parts. Serve's
defaults are read from ``bridge.live.options``. Errors a user can fix end as one line
on stderr and exit status 2, never a stack trace; torch is imported only once a
command runs, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from steering_core.errors import UserError

from .. import __version__
from ..live.rate_limited_log import LOG_DATE_FORMAT, log_format
from . import bench, extract, render, serve, starter, toy
from .parsing import DefaultsFormatter, OneLineParser

#: In the order ``--help`` lists them.
COMMAND_GROUPS = (starter, extract, render, serve, bench, toy)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors reported as one line: bad input (``UserError``, whatever module raised it)
    and the environment refusing (``OSError``: a missing file, a full disk, a busy port).
    Anything else is a bug, and keeps its traceback."""
    return (UserError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="steerbridge", formatter_class=DefaultsFormatter,
        description="Steer MusicGen live with activation steering: musical concepts are directions in the model's "
                    "activations, and each gets a knob (OSC, MIDI) that turns while the music plays.",
        epilog="Start with `steerbridge demo`. Every command has --help. Docs: README.md and docs/ in the repository.")
    parser.add_argument("--version", action="version", version=f"steerbridge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.verbose = args.verbose or getattr(args, "verbose_after_command", False)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=log_format(),
                        datefmt=LOG_DATE_FORMAT)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Exception as exc:
        if not isinstance(exc, user_errors()):
            raise
        print(f"steerbridge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"steerbridge {args.command}: interrupted", file=sys.stderr)
        return 130
