"""What the proxy observed of one request: the record behind its span and its metrics."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from policies.domain import Arm


class Failure(StrEnum):
    """Why the proxy, not the upstream, ended a request."""

    CONNECT = "connect"
    """The upstream could not be reached (answered 502)."""

    TIMEOUT = "timeout"
    """The upstream did not answer in time (answered 504, or the stream was cut)."""

    UPSTREAM = "upstream"
    """The upstream broke the connection mid-response."""

    CLIENT_GONE = "client_gone"
    """The client went away before the response was complete."""

    TOO_LARGE = "too_large"
    """The request body was over the limit (answered 413)."""


class Usage(NamedTuple):
    """What an OpenAI-style response said it used (its ``usage`` object)."""

    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    """The cost the response itself reported, in US dollars; None when it gave none."""


# not frozen: one is made for every request, and a frozen dataclass sets each of
# its fields through object.__setattr__
@dataclass(slots=True)
class RequestOutcome:
    """One request as the proxy saw it. Times are nanoseconds since the epoch."""

    release: str
    arm: Arm
    method: str
    path: str
    status: int
    """Status sent to the client (for a shadow copy: the staging upstream's status, 0
    when it gave none)."""
    start_ns: int
    end_ns: int
    trace_id: str
    """32 lower-case hex digits: the trace the app's observations join."""
    span_id: str
    """16 hex digits: the proxy's span, the parent of the app's spans."""
    parent_span_id: str | None
    """The caller's span when the request came with a ``traceparent``."""
    request_id: str
    prompt_label: str | None
    failure: Failure | None = None
    shadow_of: str | None = None
    """For a shadow copy: the trace id of the request it mirrors."""
    sampled: bool = False
    """The request is in its release's score sample (``coalmine.shared.sampling``)."""
    usage: Usage | None = None
    """The response's own report of tokens and cost, when it carried one."""

    @property
    def is_error(self) -> bool:
        """Counts against the arm: 5xx answers and failures of the upstream."""
        return self.status >= 500 or self.failure in (
            Failure.CONNECT,
            Failure.TIMEOUT,
            Failure.UPSTREAM,
        )

    @property
    def duration_seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9
