"""Where the controller reads samples: the ``SampleSource`` protocol and its backends.

``controller.source.langfuse.LangfuseSource`` reads Langfuse's public API;
``controller.source.static.StaticSource`` hands out prepared polls, for tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from controller.samples import Cursors, Poll
from controller.source.health import SourceHealth
from policies.model import Policy

__all__ = ["SampleSource", "SourceHealth", "health_of"]


class SampleSource(Protocol):
    """A backend that reports the traces and scores of every running release."""

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        """Read what arrived since ``cursors`` (None: start from ``now``) for the
        releases given (by release name), as seen at ``now`` (seconds since the epoch).

        Never raises for trouble with the backend: that is a poll with ``ok`` False, an
        ``error`` and the cursors it was given, so the same data is read again later.
        A poll may report a trace or score reported by an earlier poll (the caller
        deduplicates by trace id and score id), never one trace twice in one poll.
        """
        ...

    def health(self, now: float) -> SourceHealth:
        """How the source keeps up at ``now`` (seconds since the epoch, as given to
        ``poll``): its read health with a verdict (``controller.source.health``), and
        the scores whose type cannot serve the metric that reads them. Cheap, and never
        waits for a poll in progress."""
        ...

    def close(self) -> None:
        """Release connections; the source is not used afterwards."""
        ...


def health_of(source: object, now: float) -> SourceHealth | None:
    """``source.health(now)``, or None for a source that does not report its health (a
    stand-in written for a test or a benchmark before ``health`` existed)."""
    health = getattr(source, "health", None)
    if not callable(health):
        return None
    found = health(now)
    if not isinstance(found, SourceHealth):
        raise TypeError(f"{source!r}.health() returned {type(found).__name__}, not SourceHealth")
    return found
