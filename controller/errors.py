"""The controller's errors, in one tree under ``coalmine.shared.errors``.

Temporary errors are retried: a label move or weight write that fails temporarily stays
pending in the journal and is carried out again next tick; a decision refused on stale
state is judged again next tick. Permanent ones are not: a journalled action that fails
permanently is marked failed, a service that cannot start stops. ::

    CoalmineError
    ├── TemporaryError
    │   ├── LabelTemporaryError        Langfuse rate limited, down, slow or garbled;
    │   │   │                          the request budget spent (also a LabelError)
    │   │   └── LabelMoveError         a moved label reads back elsewhere
    │   ├── RoutingConflictError       the routing table kept changing under the writer
    │   └── KubeTemporaryError         (coalmine.shared.kube)
    │       └── StaleStateError        a decision on a release another writer changed
    ├── PermanentError
    │   ├── LabelPermanentError        bad keys, no such prompt or version, a label
    │   │                              Langfuse refuses (also a LabelError)
    │   ├── SetupError                 the service cannot start as configured
    │   │   └── StateFileError         the state file is not a coalmine SQLite file
    │   └── StateLockedError           another process holds the state file
    ├── LabelError                     reading or moving a prompt label failed
    ├── ManualActionError              a manual action that does not apply
    │   └── ManualActionIncompleteError   decided, but an action failed or waits
    ├── NotLeaderError                 this replica does not hold the Lease
    ├── BacktestError                  history could not be read (``permanent`` says
    │                                  whether retrying could help)
    ├── ApiError                       an admin API answer other than success
    └── StreamError                    a sample-stream line that cannot be read
                                       (also a ValueError)

The Langfuse sample source keeps two errors private (``controller.source.langfuse``):
both are caught where they are raised and become a failed poll or a skipped row.
"""

from __future__ import annotations

from collections.abc import Mapping

from coalmine.shared.errors import CoalmineError, PermanentError, TemporaryError
from coalmine.shared.kube.client import KubeTemporaryError

__all__ = [
    "ApiError",
    "BacktestError",
    "LabelError",
    "LabelMoveError",
    "LabelPermanentError",
    "LabelTemporaryError",
    "ManualActionError",
    "ManualActionIncompleteError",
    "NotLeaderError",
    "RoutingConflictError",
    "SetupError",
    "StaleStateError",
    "StateFileError",
    "StateLockedError",
    "StreamError",
]


# -- prompt labels ------------------------------------------------------------------------


class LabelError(CoalmineError):
    """Reading or moving a prompt label failed."""


class LabelTemporaryError(LabelError, TemporaryError):
    """The call may succeed later: rate limited, Langfuse unavailable or slow, the
    request budget spent, or an answer that could not be read."""


class LabelPermanentError(LabelError, PermanentError):
    """The call will fail again as made: bad keys, no such prompt or version, a
    label Langfuse refuses."""


class LabelMoveError(LabelTemporaryError):
    """Langfuse accepted a move, but reading the label back found it elsewhere (another
    writer moved it in between). Temporary: reconciling moves it again."""

    def __init__(self, prompt: str, label: str, expected: int, found: int | None) -> None:
        where = "on no version" if found is None else f"on version {found}"
        super().__init__(
            f"moved label '{label}' of prompt '{prompt}' to version {expected}, "
            f"but it reads back {where}"
        )
        self.prompt = prompt
        self.label = label
        self.expected = expected
        self.found = found


# -- routing and state --------------------------------------------------------------------


class RoutingConflictError(TemporaryError):
    """The routing table changed under every write attempt (another writer keeps
    writing it): the weight is written again next tick."""


class StaleStateError(KubeTemporaryError):
    """A decision was taken on a release that another writer has changed since."""


class StateLockedError(PermanentError):
    """Another controller process holds the state file (permanent for this process)."""


class NotLeaderError(CoalmineError):
    """This replica does not hold the Lease: it serves, but may not act."""

    def __init__(self, message: str, leader: str | None) -> None:
        super().__init__(message)
        self.leader = leader


# -- the service and its API --------------------------------------------------------------


class SetupError(PermanentError):
    """The controller cannot start as configured (permanent)."""


class StateFileError(SetupError):
    """The state file cannot be used: not a file, not SQLite, damaged, or the SQLite
    file of something other than coalmine. Raised before anything is written to it."""


class ManualActionError(CoalmineError):
    """A manual action that does not apply to the release as it stands."""


class ManualActionIncompleteError(ManualActionError):
    """A manual action was decided and logged, but one of its actions failed or waits
    for a retry (the release's state did change)."""


class ApiError(CoalmineError):
    """An answer other than success, in the API's error shape."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


# -- recorded and historical samples ------------------------------------------------------


class BacktestError(CoalmineError):
    """Langfuse could not be read; ``permanent`` when retrying would not help (bad keys,
    a request Langfuse refuses)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class StreamError(CoalmineError, ValueError):
    """A line of a sample stream that cannot be read."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message
