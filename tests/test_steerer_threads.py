"""The steerer's thread contract (see ``Steerer``'s docstring): knob writes from any
thread, whole; structure and the forward pass on the thread that installed the hooks."""

import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch

from steering_core.model.loading import MusicGenHandle
from steering_core.steer.steerer import Steerer
from steering_core.stream.decode_loop import MusicStream
from steering_core.stream.static_step import StaticStream
from tests.test_steering import count_hooks, decoder_inputs, logits, make_vector


def in_thread(fn: Callable[[], object], name: str = "control") -> BaseException | None:
    """Run ``fn`` on a new thread; what it raised, or None."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # handed back to the test
            raised.append(e)

    t = threading.Thread(target=run, name=name)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive()
    return raised[0] if raised else None


class Mirror:
    """A knob listener whose write lets other threads run first, as a device copy or a
    log line would: it holds the last value it was told of each knob."""

    def __init__(self) -> None:
        self.alpha: dict[int, float] = {}
        self.enabled: dict[int, bool] = {}

    def on_knob(self, slot: int, alpha: float | None, enabled: bool | None) -> None:
        time.sleep(0)
        if alpha is not None:
            self.alpha[slot] = alpha
        if enabled is not None:
            self.enabled[slot] = enabled


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Let the interpreter switch threads every microsecond, so interleavings a real
    server meets once an hour happen many times in a short test."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_structural_calls_from_another_thread_raise_while_installed(tiny: MusicGenHandle) -> None:
    inputs = decoder_inputs(tiny)
    steerer = Steerer(tiny)
    steerer.add(make_vector(tiny, concept="a"), alpha=1.0, cfg_mode="both")
    steerer.add(make_vector(tiny, concept="r", layers=(3,), seed=1), alpha=2.0, operator="renorm", cfg_mode="both")
    owner = threading.current_thread().name
    with steerer.installed():
        hooks = count_hooks(tiny)
        steered = logits(tiny, inputs)

        e = in_thread(lambda: steerer.add(make_vector(tiny, concept="b", seed=2)))
        assert isinstance(e, RuntimeError)
        assert "Steerer.add" in str(e) and "'control'" in str(e) and repr(owner) in str(e)

        e = in_thread(lambda: steerer.installed().__enter__())
        assert isinstance(e, RuntimeError) and "Steerer.installed()" in str(e)

        e = in_thread(lambda: logits(tiny, inputs))  # a forward pass through the owner's hooks
        assert isinstance(e, RuntimeError) and "forward pass" in str(e)

        # Knobs are fine from anywhere.
        assert in_thread(lambda: steerer.set_alpha("a", 3.0)) is None
        assert in_thread(lambda: steerer.set_enabled("r", False)) is None
        # Nothing the foreign calls tried was done.
        assert list(steerer.concepts) == ["a", "r"] and count_hooks(tiny) == hooks
        steerer.set_alpha("a", 1.0)
        steerer.set_enabled("r", True)
        assert torch.equal(logits(tiny, inputs), steered)
    # With the hooks gone there is no owner: another thread may add, and the concept is
    # hooked at the next install.
    assert in_thread(lambda: steerer.add(make_vector(tiny, concept="b", seed=2), alpha=1.0, cfg_mode="both")) is None
    with steerer.installed():
        assert not torch.equal(logits(tiny, inputs), steered)


def test_built_on_one_thread_steered_on_another(tiny: MusicGenHandle) -> None:
    """The server's shape: the main thread loads the vectors, the engine thread enters
    ``installed()`` and steps; from then on the main thread may only turn knobs."""
    steerer = Steerer(tiny)
    steerer.add(make_vector(tiny, concept="a"), alpha=0.0)
    stream = MusicStream(tiny, "drums", seed=1, steerer=steerer)
    installed, done = threading.Event(), threading.Event()

    def engine() -> None:
        with stream.steering():
            stream.generate_frames(2)
            installed.set()
            assert done.wait(60)
            stream.generate_frames(2)

    t = threading.Thread(target=engine, name="engine")
    t.start()
    try:
        assert installed.wait(60)
        with pytest.raises(RuntimeError, match=r"Steerer\.add called from thread 'MainThread'.*thread 'engine'"):
            steerer.add(make_vector(tiny, concept="b", seed=2))
        with pytest.raises(RuntimeError, match=r"Steerer\.layer_offsets\(\).*thread 'engine'"):
            steerer.layer_offsets(2)
        steerer.set_alpha("a", 2.0)
    finally:
        done.set()
        t.join(timeout=60)
    assert not t.is_alive() and not steerer.is_installed
    assert steerer.alphas() == {"a": 2.0}


def test_add_inside_installed_hooks_a_steerer_that_started_empty(tiny: MusicGenHandle) -> None:
    inputs = decoder_inputs(tiny)
    plain = logits(tiny, inputs)
    steerer = Steerer(tiny)
    with steerer.installed():
        steerer.add(make_vector(tiny), alpha=3.0, cfg_mode="both")
        assert not torch.equal(logits(tiny, inputs), plain)
    assert torch.equal(logits(tiny, inputs), plain)


def test_concurrent_knob_writes_while_the_owner_steps_leave_no_torn_state(tiny: MusicGenHandle,
                                                                           fast_switching: None) -> None:
    """Several control threads turn the same knobs at once while the owner steps a stream
    that keeps its own copy of the knob table (``StaticStream``, a knob listener; a
    ``Mirror`` keeps another). After
    every round of writes, each copy of a knob must hold one and the same written value,
    and nothing may raise."""
    steerer = Steerer(tiny)
    steerer.add(make_vector(tiny, concept="a"), alpha=0.0)
    concept = steerer.concepts["a"]
    assert concept.slot == 0
    stream = StaticStream(tiny, ["drums", "bass", "keys"], seed=1, steerer=steerer)
    mirror = Mirror()
    steerer.add_knob_listener(mirror.on_knob)
    writers, rounds = 4, 150
    errors: list[BaseException] = []
    stop = threading.Event()
    barrier = threading.Barrier(writers + 1, timeout=60)

    def write(w: int) -> None:
        try:
            for r in range(rounds):
                barrier.wait()  # all writers start the round together
                for k in range(3):
                    steerer.set_alpha("a", float(w * 10_000 + r * 10 + k))
                    steerer.set_enabled("a", (w + r + k) % 2 == 0)
                barrier.wait()  # and the test checks the tables before the next
        except BaseException as e:  # checked below
            errors.append(e)
            barrier.abort()

    def own() -> None:
        try:
            with stream.steering():
                while not stop.is_set():
                    stream.step()
        except BaseException as e:  # checked below
            errors.append(e)

    owner = threading.Thread(target=own, name="engine")
    threads = [threading.Thread(target=write, args=(w,), name=f"control-{w}") for w in range(writers)]
    owner.start()
    for t in threads:
        t.start()
    torn: list[tuple[object, ...]] = []
    try:
        for r in range(rounds):
            barrier.wait()
            barrier.wait()
            alpha, enabled = concept.value, steerer._enabled_table[concept.slot].item()
            state = (r, alpha, stream.knobs[:, 0].tolist(), mirror.alpha[0],
                     concept.enabled, enabled, stream.knob_enabled[:, 0].tolist(), mirror.enabled[0])
            if not (alpha in {float(w * 10_000 + r * 10 + k) for w in range(writers) for k in range(3)}
                    and state[2] == [alpha] * stream.batch and mirror.alpha[0] == alpha
                    and enabled == (1.0 if concept.enabled else 0.0) and state[6] == [enabled] * stream.batch
                    and mirror.enabled[0] == concept.enabled):
                torn.append(state)
    except BaseException:
        barrier.abort()  # free the writers; only on failure, or a writer still waking would see it
        raise
    finally:
        stop.set()
        for t in [*threads, owner]:
            t.join(timeout=120)
    assert not owner.is_alive() and not any(t.is_alive() for t in threads)
    assert errors == []
    assert stream.next_frame > 0  # the owner stepped meanwhile
    assert torn == [], f"{len(torn)} of {rounds} rounds left the knob copies disagreeing, first: {torn[0]}"
