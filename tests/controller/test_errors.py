"""The errors' tree: what is temporary, what is permanent, and who catches what."""

from __future__ import annotations

import pytest

from coalmine.cli.errors import InputError
from coalmine.shared.errors import CoalmineError, PermanentError, TemporaryError
from coalmine.shared.kube.client import (
    KubeConflictError,
    KubeError,
    KubeNotFoundError,
    KubePermanentError,
    KubeTemporaryError,
)
from controller.actions import REFUSED, RETRIED
from controller.errors import (
    ApiError,
    BacktestError,
    LabelError,
    LabelMoveError,
    LabelPermanentError,
    LabelTemporaryError,
    ManualActionError,
    ManualActionIncompleteError,
    NotLeaderError,
    RoutingConflictError,
    SetupError,
    StaleStateError,
    StateLockedError,
    StreamError,
)

TEMPORARY, PERMANENT, NEITHER = "temporary", "permanent", "neither"


def kind_of(error: Exception) -> str:
    if isinstance(error, TemporaryError):
        assert not isinstance(error, PermanentError)
        return TEMPORARY
    return PERMANENT if isinstance(error, PermanentError) else NEITHER


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (LabelTemporaryError("503"), TEMPORARY),
        (LabelMoveError("p", "canary", 2, 1), TEMPORARY),
        (RoutingConflictError("keeps changing"), TEMPORARY),
        (KubeTemporaryError("503", 503), TEMPORARY),
        (StaleStateError("changed by another writer", 409), TEMPORARY),
        (LabelPermanentError("401"), PERMANENT),
        (KubePermanentError("403", 403), PERMANENT),
        (SetupError("no keys"), PERMANENT),
        (StateLockedError("held"), PERMANENT),
        (InputError("bad flag"), PERMANENT),
        (KubeNotFoundError("404", 404), NEITHER),
        (KubeConflictError("409", 409), NEITHER),
        (ManualActionError("not running"), NEITHER),
        (ManualActionIncompleteError("a move waits"), NEITHER),
        (NotLeaderError("pod-b leads", "pod-b"), NEITHER),
        (BacktestError("down", permanent=False), NEITHER),
        (ApiError(404, "not_found", "no release"), NEITHER),
        (StreamError(3, "ts: missing"), NEITHER),
    ],
)
def test_every_error_is_a_coalmine_error_of_one_kind(error: Exception, kind: str) -> None:
    assert isinstance(error, CoalmineError)
    assert kind_of(error) == kind


def test_errors_keep_the_bases_their_callers_catch() -> None:
    assert issubclass(StaleStateError, KubeTemporaryError)
    assert issubclass(KubeTemporaryError, KubeError) and issubclass(KubePermanentError, KubeError)
    assert issubclass(LabelTemporaryError, LabelError) and issubclass(
        LabelPermanentError, LabelError
    )
    assert issubclass(ManualActionIncompleteError, ManualActionError)
    assert issubclass(StreamError, ValueError)


@pytest.mark.parametrize(
    ("error", "retried", "refused"),
    [
        (LabelTemporaryError("503"), True, False),
        (LabelMoveError("p", "canary", 2, 1), True, False),
        (RoutingConflictError("keeps changing"), True, False),
        (LabelPermanentError("404"), False, True),
        (ValueError("bad intent"), False, True),
        # the state store's and the cluster's errors end the release's tick instead
        (StaleStateError("changed by another writer", 409), False, False),
        (KubeTemporaryError("503", 503), False, False),
        (KubePermanentError("403", 403), False, False),
    ],
)
def test_which_action_errors_the_loop_retries_or_marks_failed(
    error: Exception, retried: bool, refused: bool
) -> None:
    assert (isinstance(error, RETRIED), isinstance(error, REFUSED)) == (retried, refused)


def test_a_temporary_error_may_say_how_long_to_wait() -> None:
    assert LabelTemporaryError("429", delay=30.0).delay == 30.0
    assert KubeTemporaryError("503", 503).delay is None
    assert str(KubeTemporaryError("get lease: 503", 503)) == "get lease: 503"
