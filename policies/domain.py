"""The words every floor of coalmine shares: which arm served a request, where a release
stands. Defined once, here at the bottom, so that the judge, the proxy, the app helper and
the controller's stores cannot drift apart."""

from __future__ import annotations

from enum import StrEnum


class Arm(StrEnum):
    """Which version a request was sent to, and so which arm its trace belongs to.

    The values are also the ``x-coalmine-arm`` header's values and the trace tags'
    suffixes: a change here changes the proxy, the app and the controller at once.
    """

    BASELINE = "baseline"
    CANARY = "canary"
    SHADOW = "shadow"


class Phase(StrEnum):
    """Where a release stands."""

    PENDING = "pending"
    """Waiting for a candidate (a canary label on another version, or a canary upstream)."""
    DATASET = "dataset"
    """The dataset rung: the candidate and the baseline answer a Langfuse dataset."""
    SHADOW = "shadow"
    """The shadow rung: live requests mirrored to the candidate, compared in pairs."""
    CANARY = "canary"
    APPROVAL = "approval"
    """Every step passed; waiting for a person's approval to promote (``approval``)."""
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


FINISHED = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED})
"""Phases a release leaves only when a new rollout starts."""
