"""What ``serve`` can be told, with its defaults: the one place they are written.

Plain dataclasses and no imports beyond the standard library, so the command line
reads its defaults from here while ``--help`` stays free of torch and numpy
(tests/test_cli_defaults.py checks that argparse and these agree).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: The model, device and dtype every command uses unless told otherwise.
DEFAULT_MODEL = "toy"
DEFAULT_DEVICE = "auto"
DEFAULT_DTYPE = "auto"
#: The prompt ``serve`` starts with and ``render`` renders without --prompt.
DEFAULT_PROMPT = "an energetic electronic track with a steady beat"


@dataclass
class EngineSettings:
    ring_ms: float = 50.0  # audio kept ready after the effects: the safety margin
    lookahead_frames: int = 0  # extra tokens generated ahead of the audio; rolled back on a change
    fade_ms: float = 30.0  # fades on transport stop/play and panic
    # Before each re-prime (a long prefill every half window), the ring is topped up by
    # this multiple of the longest re-prime seen, so the sound rides through it. 0: off.
    reprime_margin: float = 1.5
    # When a scene recall, a morph or a prompt change lands (off|beat|bar|<n>bar), unless
    # its message says; knob changes land at once unless theirs asks. "off": at once.
    quantize: str = "off"
    # follow: the clock source's play and stop start (on the next downbeat) and stop the
    # music; ignore: only /transport/play|stop do.
    transport: Literal["follow", "ignore"] = "follow"
    # The tempo lock from the start (/sync/lock 1): tempo is a target at the clock's tempo and beat.
    tempo_lock: bool = False
    # With the lock: each beat the model plays is laid on the clock's grid; with a tempo target, on
    # a grid at its setpoint (/sync/lock/warp 1).
    beat_warp: bool = False


@dataclass
class ServeOptions:
    model: str = DEFAULT_MODEL
    device: str = DEFAULT_DEVICE
    dtype: str = DEFAULT_DTYPE
    prompt: str = DEFAULT_PROMPT
    seed: int = 0
    vectors: list[str] = field(default_factory=list)
    osc_host: str = "127.0.0.1"
    osc_port: int = 9000
    midi_in: str = "none"
    midi_map: str = "generic"
    midi_api: str = "auto"
    audio_out: str = "default"  # an output's name (bridge.live.outputs.OUTPUTS), else a sound card
    jack_connect: tuple[str, ...] = ()  # JACK input ports --audio-out jack connects to
    # The musical clock: its source (bridge.clock.source.SOURCES), tempo and meter to start with.
    sync: str = "internal"
    bpm: float = 120.0
    meter: str = "4/4"
    chain: str = "default"
    # A set of stems (bridge/live/setfile.py): --stem NAME=PROMPT values, or a set file.
    stems: list[str] = field(default_factory=list)
    set_file: str | None = None
    #: Spare rows in the batch that /stem/add can give a new stem while the set plays (bridge/live/stem_live.py).
    stem_spares: int = 0
    #: Channels a sound card is opened with for a set of stems (bridge/live/device_channels.py); None: auto.
    stem_channels: int | None = None
    record: str | None = None
    log: str | None = None
    scenes_dir: str | None = None
    duration: float | None = None
    smoothing_ms: float = 30.0
    # The sampling settings serve starts with; steering_core.stream.sampling.SamplingSettings'
    # defaults (which import torch), checked equal by tests/test_cli_defaults.py.
    guidance: float = 3.0
    temperature: float = 1.0
    top_k: int = 250
    engine: EngineSettings = field(default_factory=EngineSettings)
    status_line: bool = True
    threads: int | None = None  # torch CPU threads; None: 1 for small models on CPU, else torch's default
    # auto|on|off: the static step (steering_core.stream.static_step), CUDA graphs as asked;
    # None: the plain decode loop (MusicStream), for an in-process caller that needs the loop.
    cuda_graphs: Literal["auto", "on", "off"] | None = "auto"
    # Frames per codec decode; None: the model's own. More frames per call cost less per
    # frame (a small codec's decode is mostly fixed cost) and each adds a frame of latency.
    codec_chunk: int | None = None


#: A model this narrow is all per-op overhead on a CPU: extra torch threads cost more than
#: they give, and compete with the audio and control threads on a small machine.
SMALL_MODEL_D_MODEL = 256


def torch_threads_for(device_type: str, d_model: int, asked: int | None) -> int | None:
    """The torch CPU thread count serve and render use: ``asked`` (``--threads``), else 1
    for a small model on the CPU, else None (torch's own default)."""
    if asked is not None:
        return asked
    return 1 if device_type == "cpu" and d_model <= SMALL_MODEL_D_MODEL else None

