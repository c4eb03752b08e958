"""The probe target's address and its loop's error scale (issue 19 item 3, first half)."""

from __future__ import annotations

import math

import pytest

from bridge.live.control import ControlError
from bridge.live.targets import ControlTable
from steering_core.steer.controller import LoopSettings, PIController, error_of


def table() -> ControlTable:
    return ControlTable([("tempo", (-1.0, 1.0)), ("timbre", (-1.0, 1.0)), ("drums", (-1.0, 1.0))], 2048,
                        probes=["timbre", "drums"])


def test_the_probe_address_exists_only_for_concepts_with_a_probe() -> None:
    t = table()
    assert t.get("/steer/timbre/target/probe") is not None
    assert t.get("/steer/drums/target/probe") is not None
    assert t.get("/steer/tempo/target/probe") is None
    # A concept no sensor reads but with a probe gets an off button too, and no sensor target.
    assert t.get("/steer/drums/target/off") is not None
    assert t.get("/steer/drums/target") is None


def test_the_front_builds_the_same_probe_addresses() -> None:
    t = table()
    again = ControlTable.from_spec(t.spec())
    assert [x.address for x in again] == [x.address for x in t]


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.5, math.nan])
def test_a_probability_outside_0_1_is_refused_with_one_line(bad: float) -> None:
    with pytest.raises(ControlError) as err:
        table().parse("/steer/timbre/target/probe", [bad])
    assert "\n" not in str(err.value)


def test_a_probability_inside_is_taken() -> None:
    [(target, args)] = table().parse("/steer/timbre/target/probe", [0.7])
    assert target.kind == "target_probe" and args == (0.7,)


def test_the_logit_scale_holds_a_simulated_probe_within_0_1() -> None:
    """A probe whose logit is linear in alpha (what adding alpha * direction does to it)."""
    assert error_of(0.5, 0.5, "logit") == 0.0
    plant = lambda a: 1.0 / (1.0 + math.exp(-(4.0 * a - 1.0)))  # noqa: E731
    loop = PIController(LoopSettings((-1.0, 1.0), 4.0, error_scale="logit"), 0.0)
    dt, errors = 0.1, []
    for _ in range(300):
        loop.update(0.8, plant(loop.state.alpha), dt)
        errors.append(abs(plant(loop.state.alpha) - 0.8))
    assert max(errors[50:]) <= 0.1
    assert -1.0 <= loop.state.alpha <= 1.0
