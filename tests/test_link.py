"""Ableton Link (``--sync link``): the source and a Link peer, both in this test.

Link finds peers by UDP multicast, which must never leave this machine: the checks run
only inside a network namespace of their own with nothing but loopback up. Outside one,
this file holds a single test that runs the file again under ``unshare -n`` (and fails
if anything but ``lo`` is up there); without the rights to make a namespace it skips,
and on CI that skip is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.realparts import unavailable

INSIDE = "STEERBRIDGE_LINK_NETNS"
REPO = Path(__file__).resolve().parent.parent


def interfaces() -> list[str]:
    """This process's network namespace's interfaces (``/proc/net`` follows the namespace; ``/sys`` may not)."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":")[0].strip() for line in lines)


if os.environ.get(INSIDE) != "1":

    @pytest.mark.realtime
    def test_link_in_a_network_namespace_of_its_own() -> None:
        if not shutil.which("unshare") or not shutil.which("ip"):
            unavailable("Link tests need unshare and ip (util-linux, iproute2) for a private network namespace")
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            unavailable(f"no rights to make a network namespace (unshare -n): {probe.stderr.strip()}")
        env = {**os.environ, INSIDE: "1", "PYTHONPATH": str(REPO)}
        inner = f"{sys.executable} -m pytest -q -p no:cacheprovider -x {Path(__file__).resolve()}"
        run = subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {inner}"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]

else:
    from bridge.clock.link import LinkSource
    from bridge.clock.source import SOURCES, Meter, SyncOptions
    from tests.realparts import Readings

    if interfaces() != ["lo"]:  # a namespace with a real network in it: refuse, loudly
        raise RuntimeError(f"Link tests must run with only loopback up, found {interfaces()}")

    def wait_for(check, timeout: float) -> float | None:
        """Seconds until ``check()`` held, or None."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if check():
                return time.monotonic() - start
            time.sleep(0.002)
        return None

    class Peer:
        """Another Link app on the network (LinkPython-extern, as a DAW's Link would be)."""

        def __init__(self, bpm: float) -> None:
            import link

            self.link = link.Link(bpm)
            self.link.startStopSyncEnabled = True
            self.link.enabled = True

        def tempo(self) -> float:
            return float(self.link.captureAppSessionState().tempo())

        def playing(self) -> bool:
            return bool(self.link.captureAppSessionState().isPlaying())

        def beat_at(self, monotonic: float, quantum: float) -> float:
            now_micros, now = self.link.clock().micros(), time.monotonic()
            at = now_micros + round((monotonic - now) * 1e6)
            return float(self.link.captureAppSessionState().beatAtTime(at, quantum))

        def change(self, *, tempo: float | None = None, playing: bool | None = None) -> None:
            state = self.link.captureAppSessionState()
            now = self.link.clock().micros()
            if tempo is not None:
                state.setTempo(tempo, now)
            if playing is not None:
                state.setIsPlaying(playing, now)
            self.link.commitAppSessionState(state)

        def close(self) -> None:
            self.link.enabled = False

    @pytest.fixture
    def session():
        peer = Peer(123.0)
        time.sleep(0.3)  # the peer's session is the older one
        source = SOURCES["link"](SyncOptions(bpm=100.0))
        assert isinstance(source, LinkSource)
        listener = Readings()
        source.start(listener)
        try:
            joined = wait_for(lambda: source.health()["peers"] == 1, 5.0)
            assert joined is not None, "the source never found the peer"
            # one session: one tempo (Link settles which of the two it keeps)
            assert wait_for(lambda: (r := listener.last()) is not None and abs(r.bpm - peer.tempo()) < 1e-3, 5.0) \
                is not None, (listener.last(), peer.tempo())
            yield peer, source, listener
        finally:
            source.stop()
            peer.close()

    def test_the_source_joins_the_peers_session_and_agrees_on_tempo_and_beat(session) -> None:
        peer, source, listener = session
        time.sleep(0.2)
        for _ in range(10):
            reading = listener.last()
            assert reading is not None and reading.bpm == pytest.approx(peer.tempo(), abs=1e-3)
            # at the reading's own moment, the peer's timeline says the same beat (a bar's quantum)
            assert reading.beat == pytest.approx(peer.beat_at(reading.at, source.quantum), abs=0.01)
            time.sleep(0.05)

    def test_the_source_follows_the_peers_tempo_within_a_beat(session) -> None:
        peer, _, listener = session
        for tempo in (140.0, 87.5):
            peer.change(tempo=tempo)
            took = wait_for(lambda t=tempo: (r := listener.last()) is not None and abs(r.bpm - t) < 1e-3, 5.0)
            assert took is not None and took < 60.0 / tempo, took

    def test_request_tempo_changes_the_sessions_tempo(session) -> None:
        peer, source, _ = session
        source.request_tempo(97.0)
        assert wait_for(lambda: abs(peer.tempo() - 97.0) < 1e-3, 2.0) is not None, peer.tempo()

    def test_start_stop_is_shared_both_ways(session) -> None:
        peer, source, listener = session
        peer.change(playing=True)
        assert wait_for(lambda: (r := listener.last()) is not None and r.playing, 2.0) is not None
        source.request_playing(False)
        assert wait_for(lambda: not peer.playing(), 2.0) is not None
        source.request_playing(True)
        assert wait_for(lambda: peer.playing(), 2.0) is not None

    def test_beats_are_of_the_meters_unit_and_a_bar_is_the_quantum() -> None:
        source = LinkSource(SyncOptions(bpm=150.0, meter=Meter(7, 8)))
        try:
            assert source.quantum == 3.5  # 7 eighths, in Link's quarter-note beats
            source.start(lambda _: None)
            reading = source.read()
            assert reading.bpm == pytest.approx(150.0) and reading.meter == Meter(7, 8)
            source.request_tempo(180.0)
            assert source.read().bpm == pytest.approx(180.0, abs=1e-3)
            assert float(source._link.captureAppSessionState().tempo()) == pytest.approx(90.0, abs=1e-3)
        finally:
            source.stop()
