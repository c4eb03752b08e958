"""``--audio-out jack[:CLIENT]``: the music as two JACK output ports, ``steerbridge:out_L``
and ``out_R`` (a mono model plays on both), on JACK's own sample clock; a set of stems
adds a pair per stem, ``steerbridge:<name>_L`` and ``<name>_R`` (the ring's channel pairs
after the mix's, ``stem_mix.StemMix``).

Threads: JACK's process thread runs ``_process``, which only copies one period from the
ring into the ports' buffers (``Ring.read_into`` into a block made beforehand: no lock,
no audio-sized allocation, and it never raises: a failure is counted, the period is
silence, and the watch thread logs it). The ``jack-output`` watch thread does the rest:
the latency as the graph changes, and the server going away.

If the server goes away mid-set, the set goes on: the ring is read at real time by the
silent clock (``--audio-out none``'s), so the engine, the recording, the performance log
and the OSC front carry on, and the ports come back, connected as before, when the server
returns. A performer who restarts JACK (or PipeWire) mid-set expects steerbridge to be
there when the DAW is, not to have quit; a stop would also end the recording.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import jack
import numpy as np

from bridge.clock.jackclient import Backoff, downstream_latency, open_client, server_label
from steering_core.errors import UserError

from .outputs import ClockOutput, OutputError
from .ring import Ring

log = logging.getLogger("steerbridge.audio")

PORTS = ("out_L", "out_R")
#: The largest JACK period the block made beforehand covers; a larger one is silence.
MAX_PERIOD = 8192
WATCH_S = 0.1


class JackConnectError(UserError):
    """A ``--jack-connect`` port that is not there (not an OutputError: no silent fallback
    for a typo; the line lists the ports there are)."""


class JackOutput:
    """JACK output ports fed from the ring, two and a pair per stem; see the module's docstring."""

    def __init__(self, client_name: str = "", connect: Sequence[str] = (), stems: Sequence[str] = ()) -> None:
        self.port_names = [*PORTS, *(f"{name}_{side}" for name in stems for side in ("L", "R"))]
        self.channels = len(self.port_names)
        self.client_name = client_name or "steerbridge"
        self.connect_to = list(connect)
        self.callback_errors = 0
        self.reconnects = 0
        self._ring: Ring | None = None
        self._block = np.zeros((MAX_PERIOD, self.channels), np.float32)
        self._buffers: list[tuple[Any, int, np.ndarray] | None] = [None] * self.channels
        self._gone = False  # set by JACK's shutdown callback: async-safe, a plain store
        self._fallback: ClockOutput | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="jack-output", daemon=True)
        self.client: jack.Client | None = None
        self.ports: list[jack.OwnPort] = []
        try:
            client = self._open(strict=True)
        except JackConnectError:
            raise
        except UserError as exc:
            raise OutputError(f"--audio-out jack: {exc}") from None
        self.client = client
        self.sample_rate = int(client.samplerate)
        pairs = len(stems)
        self.name = f"JACK ({client.name}:{PORTS[0]}/{PORTS[1]}" + (f" and {pairs} stem pairs)" if pairs else ")")
        self.latency_s = 0.0
        self._refresh_latency(client)
        log.info("JACK: ports %s:%s and %s at %d Hz, period %d, latency %.1f ms (the ports' and a period)",
                 client.name, PORTS[0], PORTS[1], self.sample_rate, client.blocksize, 1000 * self.latency_s)

    def rename_stem(self, row: int, name: str) -> None:
        """Row ``row``'s port pair is called ``<name>_L/_R`` from now on (a stem added or
        removed while playing, bridge/live/stem_live.py). Runs on the caller's thread, never
        JACK's: jack_port_rename takes the server's locks. The process callback reads only
        the ring, so the row's pair carries whatever the mix writes there (silence for a
        spare row); the names are kept so a reconnect registers the pair as it is named now."""
        first = len(PORTS) + 2 * row
        names = [f"{name}_{side}" for side in ("L", "R")]
        self.port_names[first:first + 2] = names
        if self.client is None or len(self.ports) != self.channels:
            return  # on the silent clock: the next reconnect registers the new names
        for port, new in zip(self.ports[first:first + 2], names, strict=True):
            try:
                port.shortname = new
            except jack.JackError as exc:
                log.warning("JACK: port %s not renamed to %s: %s", port.name, new, exc)

    # --- opening ---------------------------------------------------------------------
    def _open(self, *, strict: bool) -> jack.Client:
        """A client with our ports, active and connected. ``strict``: a ``--jack-connect``
        port that is not there is an error (at the start); else it is logged (after a
        server restart, a DAW's ports may come back later than ours)."""
        client = open_client(self.client_name)
        try:
            # The process callback reads self.ports: they are this client's before it runs.
            self.ports = [client.outports.register(name) for name in self.port_names]
            self._buffers = [None] * self.channels
            client.set_process_callback(self._process)
            client.set_shutdown_callback(self._on_shutdown)
            self._gone = False
            client.activate()
            self._connect(client, strict=strict)
        except BaseException:
            client.close()
            raise
        return client

    def _connect(self, client: jack.Client, *, strict: bool) -> None:
        there = {p.name for p in client.get_ports(is_audio=True, is_input=True)}
        missing = [name for name in self.connect_to if name not in there]
        if missing:
            line = (f"--jack-connect: no JACK input port {', '.join(map(repr, missing))}; there are: "
                    f"{', '.join(sorted(there)) or 'none'}")
            if strict:
                raise JackConnectError(line)
            log.warning("%s", line)
        targets = [name for name in self.connect_to if name in there]
        # One target: both sides of the mix to it (a mono input); two or more: the mix's left,
        # right, left, ... The stems' pairs are never dealt round the list: they are for the
        # DAW to pick up, track by track.
        mix = self.ports[:len(PORTS)]
        for i, target in enumerate(targets):
            sources = mix if len(targets) == 1 else [mix[i % len(mix)]]
            for port in sources:
                if target not in {p.name for p in client.get_all_connections(port)}:
                    client.connect(port, target)
        if targets:
            log.info("JACK: %s connected to %s", client.name, ", ".join(targets))

    def _refresh_latency(self, client: jack.Client) -> None:
        """A period (we fill it a period ahead) plus the ports' playback latency."""
        frames = client.blocksize + downstream_latency(client, [p.name for p in self.ports])
        self.latency_s = frames / self.sample_rate

    def _on_shutdown(self, _status: Any, _reason: str) -> None:
        self._gone = True

    # --- JACK's process thread -------------------------------------------------------
    def _port_array(self, i: int, port: jack.OwnPort, frames: int) -> np.ndarray:
        """The port's buffer this period as an array, made again only when JACK moves it."""
        buf = jack._lib.jack_port_get_buffer(port._ptr, frames)
        cached = self._buffers[i]
        if cached is not None and cached[0] == buf and cached[1] == frames:
            return cached[2]
        array = np.frombuffer(jack._ffi.buffer(buf, frames * 4), np.float32)
        self._buffers[i] = (buf, frames, array)
        return array

    def _process(self, frames: int) -> None:
        try:
            arrays = [self._port_array(i, port, frames) for i, port in enumerate(self.ports)]
            ring = self._ring
            if ring is None or frames > MAX_PERIOD:
                for array in arrays:
                    array.fill(0.0)
                return
            block = self._block[:frames]
            ring.read_into(block)
            for i, array in enumerate(arrays):
                array[:] = block[:, i]
        except Exception:
            self.callback_errors += 1

    # --- start, stop, and the watch thread -------------------------------------------
    def start(self, ring: Ring) -> None:
        if ring.channels != self.channels:
            raise OutputError(f"the JACK output plays {self.channels} channels, not {ring.channels}")
        self._ring = ring
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=3)
        self._close_client()
        if self._fallback is not None:
            self._fallback.stop()
            self._fallback = None

    def _close_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.deactivate()
                client.close()
            except jack.JackError:
                pass  # the server is gone; there is nothing left to close

    def _watch(self) -> None:
        reported_errors = 0
        backoff = Backoff()
        rate_warned = False
        while not self._stop.wait(WATCH_S if self.client is not None else backoff.next_delay()):
            if self.callback_errors != reported_errors:  # counted, never seen on the process thread
                log.error("JACK process callback failed %d times; those periods were silence",
                          self.callback_errors - reported_errors)
                reported_errors = self.callback_errors
            client = self.client
            if client is not None and not self._gone:
                try:
                    self._refresh_latency(client)
                except jack.JackError:
                    self._gone = True
                continue
            if client is not None:
                log.warning("the %s went away: the music goes on on a silent clock (recording and log too); "
                            "reconnecting", server_label())
                self._close_client()
                self._play_on_silent_clock()
                backoff.reset()
                continue
            rate_warned = self._reconnect(rate_warned, backoff)

    def _play_on_silent_clock(self) -> None:
        assert self._ring is not None
        self._fallback = ClockOutput(sample_rate=self.sample_rate, channels=self.channels)
        self._fallback.start(self._ring)

    def _reconnect(self, rate_warned: bool, backoff: Backoff) -> bool:
        """One attempt to get the ports back; returns whether the rate mismatch was told."""
        try:
            probe = open_client(self.client_name)
        except UserError:
            return rate_warned
        rate = int(probe.samplerate)
        probe.close()
        if rate != self.sample_rate:
            if not rate_warned:
                log.warning("the %s is back at %d Hz, but this set plays at %d Hz: staying on the silent clock "
                            "(restart JACK at %d Hz, or steerbridge)", server_label(), rate, self.sample_rate,
                            self.sample_rate)
            return True
        fallback, self._fallback = self._fallback, None
        if fallback is not None:
            fallback.stop()  # the ring has one reader: the silent clock ends before JACK's starts
        try:
            self.client = self._open(strict=False)
        except (UserError, jack.JackError) as exc:
            log.warning("the %s is back, but the ports could not be set up again (%s); retrying", server_label(), exc)
            self._play_on_silent_clock()
            return rate_warned
        self._refresh_latency(self.client)
        self.reconnects += 1
        backoff.reset()
        log.info("the %s is back: playing to %s again", server_label(), self.name)
        return False
