"""SIGINT and SIGTERM held from a command's first step to its last.

The servers take over both signals only once their event loop runs, and the loop gives
them back to the default action when it closes. A SIGTERM before (while the state is
read, the proxy workers start) or after (while the controller stops) would end the
process there: the state file left locked, workers orphaned, exit status -15 instead of
a clean stop. Held, such a signal is kept and served as soon as the loop runs."""

from __future__ import annotations

import logging
import signal
from types import FrameType, TracebackType

log = logging.getLogger("coalmine")

HELD = (signal.SIGINT, signal.SIGTERM)


class HeldSignals:
    """Records SIGINT and SIGTERM while no event loop handles them."""

    def __init__(self) -> None:
        self.received: list[signal.Signals] = []
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> HeldSignals:
        for sig in HELD:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def hold(self) -> None:
        """Take both signals back (after an event loop closed and reset them)."""
        for sig in HELD:
            signal.signal(sig, self._record)

    def take(self) -> list[signal.Signals]:
        """The signals received since the last take, oldest first."""
        received, self.received = self.received, []
        return received

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        log.info("%s: stopping", sig.name)
        self.received.append(sig)
