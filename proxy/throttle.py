"""How many wrong admin tokens a client may send before it has to wait.

Forcing an arm on the public port takes the admin token; a client that sends a wrong one
spends one of its tries. Each client address has ``burst`` tries and gets one back every
``refill_seconds`` (a token bucket); with none left, its force-arm requests are refused
with 429 and the seconds until its next try, whatever token they carry, so the token
cannot be guessed at speed. The addresses remembered are bounded: past ``max_clients``
the one seen longest ago is forgotten.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class FailedAttempts:
    """Wrong admin tokens by client address, as a token bucket per address."""

    def __init__(
        self,
        burst: int = 5,
        refill_seconds: float = 60.0,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or refill_seconds <= 0 or max_clients < 1:
            raise ValueError(
                "FailedAttempts needs burst >= 1, refill_seconds > 0 and max_clients >= 1"
            )
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.max_clients = max_clients
        self._clock = clock
        self._tries: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """Client → tries left and when they were counted."""
        self._lock = threading.Lock()

    def _left(self, client: str, now: float) -> float:
        counted = self._tries.get(client)
        if counted is None:
            return float(self.burst)
        tries, at = counted
        return min(float(self.burst), tries + (now - at) / self.refill_seconds)

    def wait(self, client: str) -> int | None:
        """Whole seconds before ``client`` may try again; None: it may try now."""
        with self._lock:
            left = self._left(client, self._clock())
        if left >= 1.0:
            return None
        return max(1, math.ceil((1.0 - left) * self.refill_seconds))

    def failed(self, client: str) -> None:
        """``client`` sent a wrong token: one try fewer."""
        with self._lock:
            now = self._clock()
            self._tries[client] = (max(0.0, self._left(client, now) - 1.0), now)
            self._tries.move_to_end(client)
            while len(self._tries) > self.max_clients:
                self._tries.popitem(last=False)
