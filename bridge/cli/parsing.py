"""The parser's shared parts: the one-line error, the help formatter, and the option
groups several commands take (--model/--device/--dtype, --cuda-graphs)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..live.options import DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_MODEL

if TYPE_CHECKING:
    from typing import TypeAlias

    #: What each command module's ``register`` is given: ``build_parser``'s sub-parsers.
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (and exit status 2) rather than usage plus error."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after each option's help, except where there is nothing to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, "", argparse.SUPPRESS) or action.default == [] or "%(default)" in text:
            return text
        return super()._get_help_string(action)


def add_command(sub: Commands, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=description,
                                                     formatter_class=DefaultsFormatter)
    verbose_arg(parser)
    return parser


def verbose_arg(p: argparse.ArgumentParser) -> None:
    """``-v`` after the command as well as before it (``steerbridge render -v``). Its own dest:
    a sub-command's default would overwrite the ``-v`` given before the command."""
    p.add_argument("-v", "--verbose", dest="verbose_after_command", action="store_true", help="debug logging")


def model_args(p: argparse.ArgumentParser, model_default: str | None = DEFAULT_MODEL, model_help: str = "") -> None:
    """--model, --device, --dtype, with their defaults from ``bridge.live.options``."""
    p.add_argument("--model", default=model_default,
                   help=model_help or "a built-in model (toy: small, trained on synthetic music; tiny, tiny-stereo: random "
                   "weights, for mechanics), musicgen-small|medium|large (the real shape "
                   "with RANDOM weights, for speed), a hub id such as facebook/musicgen-small, or a local folder")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="auto (CUDA when present) | cpu | cuda")
    p.add_argument("--dtype", default=DEFAULT_DTYPE,
                   help="auto (float32 on CPU, bfloat16 on CUDA) | float32 | bfloat16 | float16")


def cuda_graphs_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cuda-graphs", default="auto", choices=("auto", "on", "off"),
                   help="static decode step: replay it as a CUDA graph, checked against eager at start "
                        "(auto: on CUDA only; off: eager)")
