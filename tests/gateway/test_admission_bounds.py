"""The admission bounds as pure logic (admission.py): what a lagging loop does to the in-flight bound.

No process, no clock: the lag monitor is never started, and each tick's lateness is given by the test.
"""

from __future__ import annotations

from app.gateway.admission import Admission, LoopLagMonitor
from app.gateway.metrics import Metrics

BOUND, MAX_LAG = 400, 0.5


def admission() -> Admission:
    metrics = Metrics()
    return Admission(metrics, LoopLagMonitor(metrics), max_in_flight=BOUND, max_lag_seconds=MAX_LAG,
                     retry_after_seconds=1)


def test_the_count_bound_refuses_at_the_bound() -> None:
    a = admission()
    a.in_flight = BOUND - 1
    assert a.overload() is None
    a.admitted()
    assert a.overload() == "in_flight" and a.state()["overloaded"] is True
    a.finished()
    assert a.overload() is None


def test_a_late_tick_lowers_the_bound_to_below_what_is_in_flight_but_never_under_the_floor() -> None:
    a = admission()
    a.in_flight = 300
    a._adapt(MAX_LAG * 2)
    assert a.limit == 270 and a.overload() == "loop_lag"  # nothing new until in flight is under 270
    a.in_flight = 10
    for _ in range(50):
        a._adapt(MAX_LAG * 2)
    assert a.limit == a.floor == BOUND // 10  # still admitting: refusing everything livelocked in make bench
    assert a.overload() is None


def test_ticks_on_time_raise_the_bound_back_to_the_setting() -> None:
    a = admission()
    a.in_flight = 0
    a._adapt(MAX_LAG * 2)
    assert a.limit == a.floor
    for _ in range(1000):
        a._adapt(0.0)
    assert a.limit == BOUND
    a._adapt(MAX_LAG)  # at the bound is not past it
    assert a.limit == BOUND


def test_lag_is_reported_but_refuses_nothing_below_the_floor() -> None:
    a = admission()
    a.in_flight = a.floor - 1
    a._adapt(MAX_LAG * 10)
    assert a.overload() is None and a.lagging() is False  # the monitor never ran: no lag measured
    assert a.lagging_with_work() is False


def test_the_pods_bounds_are_shared_out_among_its_processes() -> None:
    """N processes per pod: each admits the pod's in-flight bound / N (rounded up), and while Redis is
    unavailable each enforces the limits divided by every process of every replica."""
    from app.gateway.settings import IN_FLIGHT_PER_CORE, GatewaySettings

    def settings(**values: object) -> GatewaySettings:
        return GatewaySettings.model_validate({"backends": "127.0.0.1:1", "auth_enabled": False, **values})

    two_cores = settings(cpu_cores=2, rate_limit_replicas=3)
    assert two_cores.process_count == 2  # derived: one per core
    assert two_cores.in_flight_limit == IN_FLIGHT_PER_CORE  # 2 cores' worth, in two halves
    assert two_cores.local_limit_divisor == 6
    assert settings(cpu_cores=2.5).process_count == 3 and settings(cpu_cores=0.5).process_count == 1
    assert settings(cpu_cores=2, processes=1).in_flight_limit == 2 * IN_FLIGHT_PER_CORE  # one process: all of it
    assert settings(cpu_cores=2, max_in_flight=5).in_flight_limit == 3  # 5 over two, rounded up
