"""The tries a client has at the admin token: a token bucket per address, bounded."""

from __future__ import annotations

import pytest

from proxy.throttle import FailedAttempts


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_a_client_waits_once_its_tries_are_spent_and_gets_them_back_over_time() -> None:
    clock = Clock()
    attempts = FailedAttempts(3, 10.0, clock=clock)
    for _ in range(3):
        assert attempts.wait("a") is None
        attempts.failed("a")
    assert attempts.wait("a") == 10
    clock.now += 2.5
    assert attempts.wait("a") == 8  # whole seconds, rounded up
    clock.now += 7.5
    assert attempts.wait("a") is None
    clock.now += 1000  # tries come back up to the burst, no further
    for _ in range(3):
        attempts.failed("a")
    assert attempts.wait("a") == 10


def test_failures_past_zero_do_not_push_the_wait_further() -> None:
    clock = Clock()
    attempts = FailedAttempts(1, 60.0, clock=clock)
    for _ in range(50):
        attempts.failed("a")
    assert attempts.wait("a") == 60


def test_the_clients_remembered_are_bounded() -> None:
    attempts = FailedAttempts(1, 60.0, max_clients=2, clock=Clock())
    for client in ("a", "b", "c"):
        attempts.failed(client)
    assert [attempts.wait(client) for client in ("a", "b", "c")] == [None, 60, 60]


@pytest.mark.parametrize("arguments", [{"burst": 0}, {"refill_seconds": 0.0}, {"max_clients": 0}])
def test_limits_that_make_no_sense_are_refused(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="FailedAttempts needs"):
        FailedAttempts(**arguments)  # type: ignore[arg-type]
