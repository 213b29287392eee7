"""Where the controller reads samples: the ``SampleSource`` protocol and its backends.

``controller.source.langfuse.LangfuseSource`` reads Langfuse's public API;
``controller.source.static.StaticSource`` hands out prepared polls, for tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from controller.samples import Cursors, Poll
from policies.model import Policy

__all__ = ["SampleSource"]


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

    def close(self) -> None:
        """Release connections; the source is not used afterwards."""
        ...
