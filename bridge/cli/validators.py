"""The command line's shared checks: argument types that reject a bad value while
parsing, and checks on files, ports and names that run before any model loads.

Each failure is one line the user can act on (a ``CliError``, or argparse's own error
for a type); nothing here imports torch.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from steering_core.errors import UserError

#: ``steering_core.steer.sites.SITES`` and ``steering_core.extract.extraction.METHODS``, spelled out so that
#: ``--help`` needs no torch; tests/test_cli_errors.py checks that they agree.
SITE_NAMES: tuple[str, ...] = ("resid_post", "attn_out", "cross_attn_out", "mlp_out", "head")
METHOD_NAMES: tuple[str, ...] = ("diffmean", "pca", "probe_logistic", "probe_mse")


class CliError(UserError):
    """A command-line mistake the user can fix; printed as one line."""


# --- argument types: each rejects a bad value while parsing, before anything loads ---
def _number(kind: Callable[[str], float], text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(_number(int, text))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(int, text))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def unit_interval(text: str) -> float:
    value = _number(float, text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in 0..1, got {text}")
    return value


def prompt_text(text: str) -> str:
    """A prompt as OSC's ``/prompt`` takes it: a longer one would not fit the text encoder."""
    from ..live.targets import MAX_PROMPT_CHARS

    if not text.strip() or len(text) > MAX_PROMPT_CHARS:
        raise argparse.ArgumentTypeError(f"a prompt is non-empty text of at most {MAX_PROMPT_CHARS} characters, "
                                         f"got {len(text)}")
    return text


def port_number(text: str) -> int:
    value = int(_number(int, text))
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 1..65535, got {text}")
    return value


def method_name(text: str) -> str:
    if text not in METHOD_NAMES:
        raise argparse.ArgumentTypeError(f"unknown --method {text!r}; choose one of {', '.join(METHOD_NAMES)}")
    return text


def parse_steer(text: str) -> tuple[str, float]:
    """``concept=alpha`` -> (concept, alpha); alpha must be a finite number."""
    name, sep, value = text.partition("=")
    try:
        alpha = float(value)
    except ValueError:
        alpha = math.nan
    if not sep or not name or not math.isfinite(alpha):
        raise argparse.ArgumentTypeError(f"--steer wants concept=number, got {text!r}")
    return name, alpha


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``3,4,5`` or ``2-6`` or ``all`` (None: the preset's default span; (): every layer)."""
    if text is None or text == "default":
        return None
    if text == "all":
        return ()
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            span = range(int(lo), int(hi) + 1) if dash else [int(lo)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"wants e.g. 1,2 or 0-3 or all, got {text!r}") from None
        if dash and not span:
            raise argparse.ArgumentTypeError(f"the range {part!r} is empty (write low-high)")
        if any(layer < 0 for layer in span):
            raise argparse.ArgumentTypeError(f"layers count from 0, got {text!r}")
        out.extend(span)
    return tuple(out)


def layers_arg(text: str) -> str:
    """Checks the syntax while parsing; the command still reads ``args.layers`` as text."""
    parse_layers(text)
    return text


# --- checks that need files, ports or names, still before the model loads ---------
def check_model(spec: str) -> None:
    from steering_core.model.names import check_model_spec

    check_model_spec(spec)


def check_clap(spec: str) -> None:
    """``--clap`` as ``--model`` is checked: a missing folder, or a hub id neither cached nor
    reachable, is one line before any work (offline, the hub client retries for half a minute)."""
    from steering_core.model.names import hub_cached, hub_reachable, looks_like_path

    if spec in ("tiny", "none") or Path(spec).expanduser().is_dir():
        return
    if looks_like_path(spec) or "/" not in spec:
        raise CliError(f"--clap {spec}: no such folder, and not a hub id (owner/name) or tiny | none")
    if not hub_cached(spec) and not hub_reachable():
        raise CliError(f"--clap {spec} is not in the local cache and the hub cannot be reached (offline?). Fixes: "
                       f"--clap none (no CLAP scores); download it once while online (`hf download {spec}`), after "
                       f"which it loads from the cache offline; or point --clap at a local folder")


def check_vector_paths(paths: Sequence[str]) -> None:
    for path in paths:
        if not Path(path).exists():
            raise CliError(f"--vectors {path}: no such file or folder (write one with `steerbridge extract ... --out {path}`)")


def check_output_file(path: str, option: str) -> None:
    """The file can be written: it is not a folder, and its nearest existing ancestor is a
    folder we may write into (missing folders below it are created when writing)."""
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise CliError(f"{option} {path} is a folder; give a file name")
    if target.exists() and not target.is_file():  # a FIFO would block the first write until a reader came
        raise CliError(f"{option} {path} is not a regular file (a FIFO or a device?); give a file name")
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CliError(f"{option} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CliError(f"{option} {path}: no permission to write in {ancestor}")


def check_udp_port_free(host: str, port: int) -> None:
    """Bind and release: a busy port is one line now, not after the model has loaded."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((host, port))
    except OSError as exc:
        raise CliError(f"cannot listen for OSC on {host}:{port} ({exc.strerror or exc}); is another steerbridge "
                       f"running? Pick another --osc-port") from None
