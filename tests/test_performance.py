"""Live changes with rollback give the same tokens as a straight replay of the same log."""

import itertools

import pytest
import torch

from steering_core.steer.steerer import Steerer
from steering_core.steer.vectors import load_vectors
from steering_core.stream.decode_loop import MusicStream
from steering_core.stream.timeline import Change, Performance


def make(tiny, vectors_dir, **stream_kw) -> Performance:
    steerer = Steerer(tiny)
    for v in load_vectors(vectors_dir):
        steerer.add(v)
    return Performance(MusicStream(tiny, "drums", seed=5, steerer=steerer, **stream_kw), steerer)


def run(perf: Performance, until: int, live: list[tuple[int, int, list[Change]]]) -> list[int]:
    """Step; when the stream reaches ``seen``, apply changes back at ``at`` (live, with
    rollback). Returns the effective steps, i.e. the log."""
    log = []
    pending = sorted(live, key=lambda x: x[0])
    with perf.steerer.installed():
        while perf.stream.frames_complete < until:
            while pending and perf.next_step >= pending[0][0]:
                _, at, changes = pending.pop(0)
                log.append((perf.apply(changes, at_step=at), changes))
            perf.step()
    return log


@pytest.mark.parametrize("window", [None, 40])
def test_live_with_rollback_equals_replay(tiny, vectors_dir, window) -> None:
    kw = {"window_frames": window, "reprime_frames": 20} if window else {}
    live = make(tiny, vectors_dir, **kw)
    changes = [
        (30, 22, [Change("alpha", 5.0, "timbre")]),
        (45, 41, [Change("prompt", "slow ambient pads"), Change("guidance", 2.0)]),
        (70, 60, [Change("alpha", -4.0, "tempo"), Change("seed", 11)]),
        (90, 88, [Change("enabled", False, "timbre"), Change("temperature", 0.8)]),
        (110, 109, [Change("panic")]),
    ]
    log = run(live, 130, changes)
    assert [step for step, _ in log][:2] == [22, 41]  # rolled back to where they were asked for
    replayed = make(tiny, vectors_dir, **kw)
    with replayed.steerer.installed():
        replayed.run_to_frames(130, log)
    assert torch.equal(live.stream.codes[:, :, :130], replayed.stream.codes[:, :, :130])
    if window:
        assert live.stream.reprimes >= 2


def test_changes_do_change_the_music(tiny, vectors_dir) -> None:
    plain, steered = make(tiny, vectors_dir), make(tiny, vectors_dir)
    run(plain, 60, [])
    run(steered, 60, [(40, 30, [Change("alpha", 6.0, "timbre")])])
    a, b = plain.stream.codes, steered.stream.codes
    assert torch.equal(a[:, 0, :30], b[:, 0, :30]) and not torch.equal(a[:, :, 30:60], b[:, :, 30:60])


def test_smoothing_glides_to_the_target(tiny, vectors_dir) -> None:
    perf = make(tiny, vectors_dir)
    perf.apply([Change("alpha", 4.0, "timbre")])
    seen = []
    with perf.steerer.installed():
        for _ in range(8):
            perf.step()
            seen.append(perf.steerer.alphas()["timbre"])
    assert 0 < seen[0] < 4.0 and all(a < b for a, b in itertools.pairwise(seen))
    assert seen[-1] == pytest.approx(4.0, abs=0.05)


def test_changes_never_land_before_an_earlier_change(tiny, vectors_dir) -> None:
    perf = make(tiny, vectors_dir)
    log = run(perf, 50, [(30, 25, [Change("alpha", 2.0, "tempo")]), (40, 20, [Change("alpha", 1.0, "tempo")])])
    assert [step for step, _ in log] == [25, 25]


def test_bad_change_raises_and_changes_nothing(tiny, vectors_dir) -> None:
    perf = make(tiny, vectors_dir)
    with pytest.raises(KeyError, match="unknown concept"):
        perf.apply([Change("alpha", 1.0, "timbre"), Change("alpha", 1.0, "nope")])
    assert perf.targets == {"tempo": 0.0, "timbre": 0.0}


@pytest.mark.parametrize("bad", [Change("guidance", 100.0), Change("alpha", float("nan"), "tempo"),
                                 Change("alpha", 1.0, "nope"), Change("seed", -1), Change("prompt", "  ")])
def test_a_bad_batch_changes_nothing(tiny, vectors_dir, bad) -> None:
    perf = make(tiny, vectors_dir)
    settings = vars(perf.stream.settings).copy()
    with pytest.raises((ValueError, KeyError)):
        perf.apply([Change("alpha", 1.0, "timbre"), Change("temperature", 0.5), bad])
    assert perf.targets["timbre"] == 0.0 and vars(perf.stream.settings) == settings


def test_the_played_alpha_has_one_owner_the_steerer(tiny, vectors_dir) -> None:
    """The smoothed (played) value lives in the steerer only: the performance reads it
    there, so the status, a rollback and the hooks can never disagree about it."""
    perf = make(tiny, vectors_dir)
    assert not {"current", "_written", "enabled"} & set(vars(perf))  # no second copy to drift
    perf.apply([Change("alpha", 4.0, "timbre")])
    with perf.steerer.installed():
        for _ in range(5):
            perf.step()
        assert perf.current == perf.steerer.alphas() and 0 < perf.current["timbre"] < 4.0
        played_at_3 = perf._history[3][1]["timbre"]
        perf.apply([Change("alpha", -2.0, "tempo")], at_step=3)  # rolls back to step 3
        # the steerer holds the step-3 value at once, before any step writes it again
        assert perf.steerer.alpha("timbre") == played_at_3
        assert perf.steerer.concepts["timbre"].alpha.item() == pytest.approx(played_at_3)


def test_a_performance_is_driven_by_one_thread(tiny, vectors_dir) -> None:
    import threading

    perf = make(tiny, vectors_dir)
    with perf.steerer.installed():
        perf.step()
        errors: list[BaseException] = []

        def other() -> None:
            try:
                perf.apply([Change("alpha", 3.0, "timbre")])
            except BaseException as exc:  # checked below
                errors.append(exc)

        t = threading.Thread(target=other, name="osc")
        t.start()
        t.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError) and "'osc'" in str(errors[0])
    assert perf.targets["timbre"] == 0.0  # refused before it touched anything
