"""What ``--model`` may name, and the checks that need neither torch nor the network.

The command line runs ``check_model_spec`` before it imports torch and transformers
(about 5 s of CPU), so a typo, a missing folder or an offline machine without the
files in its cache is one line within a second, not after a long import or the hub
client's retries.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
import threading
import urllib.parse
from pathlib import Path

from steering_core.errors import UserError

#: The models built in code, by ``--model`` name; ``models.load_model`` builds each.
#: Adding one is one line here (and its builder there).
BUILTIN_MODELS: tuple[str, ...] = ("toy", "tiny", "tiny-stereo")
#: The released configurations with random weights, for speed measurements (``models.REAL_SHAPES``).
RANDOM_WEIGHT_MODELS: tuple[str, ...] = ("musicgen-small", "musicgen-medium", "musicgen-large")


class ModelLoadError(UserError):
    """A model could not be loaded; the message is one line a performer can act on."""


def known_model_names() -> list[str]:
    """Every ``--model`` name that needs no folder and no download."""
    return [*BUILTIN_MODELS, *RANDOM_WEIGHT_MODELS]


def looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).exists() or spec.count("/") > 1


def did_you_mean(spec: str) -> str:
    """`` Did you mean 'tiny'?`` for a near miss of a known name, else ``""``."""
    close = difflib.get_close_matches(spec, known_model_names(), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def download_fixes(hub_id: str) -> str:
    return ("Fixes: use a built-in model (--model toy: no download); point --model at a local folder "
            f"(`hf download {hub_id} --local-dir ./musicgen` writes one; `steerbridge save-tiny ./tiny-model` "
            f"writes the tiny one); or download it once while online (`hf download {hub_id}`), after which it "
            "loads from the cache offline.")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout_s: float = 1.5) -> bool:
    """Can a TCP connection to the hub open within ``timeout_s``? Asked before the hub
    client is let loose, because offline it retries for about 24 s before it fails.
    The probe runs on a daemon thread, so a stuck DNS resolver cannot hold us either."""
    if hub_offline():
        return False
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    reachable = threading.Event()

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout_s):
            reachable.set()

    threading.Thread(target=probe, daemon=True, name="hub-probe").start()
    reachable.wait(timeout_s)
    return reachable.is_set()


def hub_cached(hub_id: str) -> bool:
    """Is the hub id's config in the local hub cache (no network)?"""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings it
        return False
    try:
        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def check_model_spec(spec: str) -> None:
    """Raise ``ModelLoadError`` for a ``--model`` that cannot load, as far as that can be
    told without torch: a missing folder, an unknown bare name, or a hub id that is not in
    the cache while the hub is out of reach. Silent when the spec may well load."""
    if spec in BUILTIN_MODELS or spec in RANDOM_WEIGHT_MODELS:
        return
    folder = Path(spec).expanduser()
    if folder.is_dir():
        _check_weights_are_safetensors(folder, spec)
        return
    if looks_like_path(spec):
        raise ModelLoadError(f"no model folder at {spec!r}. Use --model tiny, a folder written by save_pretrained "
                             "(or `steerbridge save-tiny DIR`), or a hub id like facebook/musicgen-small.")
    if "/" not in spec:
        # Every MusicGen checkpoint on the hub is owner/name: a bare word is a typo or a missing folder.
        raise ModelLoadError(f"no model {spec!r}: not a built-in name ({', '.join(known_model_names())}), "
                             f"not a folder, not a hub id (owner/name).{did_you_mean(spec)}")
    if not hub_cached(spec) and not hub_reachable():
        raise ModelLoadError(f"{spec!r} is not in the local cache and the hub cannot be reached (offline?). "
                             + download_fixes(spec))


PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def _check_weights_are_safetensors(folder: Path, spec: str) -> None:
    """A folder whose weights are pickled is refused before anything is unpickled: a
    pickle runs code as it loads. Safetensors (one file or an index of shards) only."""
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return
    pickled = [name for name in PICKLED_WEIGHTS if (folder / name).exists()]
    if pickled:
        raise ModelLoadError(f"model folder {spec!r} holds pickled weights ({pickled[0]}), which steerbridge does "
                             "not load (a pickle can run code): save the model with safetensors "
                             "(save_pretrained's default) and try again")

