"""Langfuse prompt labels: which version holds a label, and moving a label.

A label sits on one version of a prompt. ``PATCH /api/public/v2/prompts/{name}/
versions/{v}`` with ``{"newLabels": [label]}`` moves it there atomically (it leaves
every other version in the same transaction), so a move is idempotent and safe to
retry after a timeout whose outcome is unknown. A move is read back before it counts.

Errors say what to do next (``controller.errors``): ``LabelTemporaryError`` (the answers
``coalmine.shared.retry`` calls temporary: 408, 425, 429, 5xx but 501 and 505; timeouts,
connection failures, a garbled answer, the request budget spent, a read-back
that disagrees): try again later; ``LabelPermanentError`` (401, 403, 404 of the prompt or
version, 400): retrying the same call will not help.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol
from urllib.parse import quote

import httpx

from coalmine.shared.retry import Outcome, outcome_of, status_class
from controller.errors import (
    LabelError,
    LabelMoveError,
    LabelPermanentError,
    LabelTemporaryError,
)
from controller.source.budget import RequestBudget
from controller.source.langfuse import error_detail
from controller.source.public_api import PublicApiClient

__all__ = [
    "LangfusePromptLabels",
    "PromptLabels",
    "StaticPromptLabels",
    "prompt_path",
]

PROMPTS_PATH: Final = "/api/public/v2/prompts"
LATEST: Final = "latest"
"""Langfuse keeps this label on the newest version itself; it cannot be moved."""


class PromptLabels(Protocol):
    """Where prompt labels are kept."""

    def version_of(self, prompt: str, label: str) -> int | None:
        """The version of ``prompt`` that holds ``label``; None when no version does
        (or there is no such prompt)."""
        ...

    def move(self, prompt: str, label: str, version: int) -> None:
        """Put ``label`` on ``version`` of ``prompt`` (it leaves the version that held
        it) and check that it is there."""
        ...


def prompt_path(name: str) -> str:
    """A prompt name as one URL path segment: a folder's ``/`` becomes ``%2F``."""
    return quote(name, safe="")


class LangfusePromptLabels(PublicApiClient):
    """Prompt labels in Langfuse, through the public API.

    ``budget`` is the request budget of the General API bucket (shared with the sample
    source): label moves are counted in that bucket on Langfuse Cloud. Reading a prompt
    falls in the ``prompts`` bucket, which has no limit on any plan, and takes nothing
    from the budget.

    ``request_counts[(endpoint, status_class)]`` counts requests for metrics
    (endpoints ``prompt_get`` and ``prompt_label_move``).
    """

    def __init__(
        self,
        base_url: str,
        public_key: str,
        secret_key: str,
        *,
        budget: RequestBudget,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(base_url, public_key, secret_key, timeout=timeout, transport=transport)
        self.budget = budget
        self.timeout = timeout

    def version_of(self, prompt: str, label: str) -> int | None:
        """``GET /api/public/v2/prompts/{name}?label=…``; a 404 is None."""
        url = f"{self.base_url}{PROMPTS_PATH}/{prompt_path(prompt)}"
        # resolve=false: the stored version, past Langfuse's prompt cache.
        response = self._send("prompt_get", "GET", url, params={"label": label, "resolve": "false"})
        if response.status_code == 404:
            return None
        self._raise_for_status(response, f"reading label '{label}' of prompt '{prompt}'")
        version = _json(response).get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise LabelTemporaryError(f"prompt '{prompt}': the answer has no version number")
        return version

    def move(self, prompt: str, label: str, version: int) -> None:
        """``PATCH …/versions/{version}`` with ``{"newLabels": [label]}``, then read the
        label back; ``LabelMoveError`` when it is not on ``version``."""
        if label == LATEST:
            raise LabelPermanentError("the label 'latest' is kept by Langfuse and cannot be moved")
        if not self.budget.try_acquire():
            raise LabelTemporaryError("request budget spent")
        url = f"{self.base_url}{PROMPTS_PATH}/{prompt_path(prompt)}/versions/{version}"
        response = self._send("prompt_label_move", "PATCH", url, json={"newLabels": [label]})
        what = f"moving label '{label}' of prompt '{prompt}' to version {version}"
        if response.status_code == 404:
            raise LabelPermanentError(f"{what}: prompt '{prompt}' has no version {version}")
        self._raise_for_status(response, what)
        found = self.version_of(prompt, label)
        if found != version:
            raise LabelMoveError(prompt, label, version, found)

    def _send(self, endpoint: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TimeoutException:
            self._count(endpoint, "timeout")
            raise LabelTemporaryError(f"{endpoint}: no answer within {self.timeout:g}s") from None
        except httpx.TransportError as error:
            self._count(endpoint, "connection")
            raise LabelTemporaryError(
                f"{endpoint}: connection failed ({type(error).__name__})"
            ) from None
        except httpx.HTTPError as error:
            self._count(endpoint, "error")
            raise LabelTemporaryError(
                f"{endpoint}: request failed ({type(error).__name__})"
            ) from None
        self._count(endpoint, status_class(response.status_code))
        if response.status_code == 429:
            wait = self.budget.hold_off(response.headers.get("retry-after"))
            raise LabelTemporaryError(
                f"{endpoint}: rate limited (429), retry after {wait:g}s", delay=wait
            )
        return response

    @staticmethod
    def _raise_for_status(response: httpx.Response, what: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = f"{what}: HTTP {status}{error_detail(response)}"
        if outcome_of(status) is Outcome.TEMPORARY:
            raise LabelTemporaryError(detail)
        raise LabelPermanentError(detail)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise LabelTemporaryError("Langfuse answered something that is not JSON") from None
    if not isinstance(body, dict):
        raise LabelTemporaryError("Langfuse answered JSON that is not an object")
    return body


class StaticPromptLabels:
    """Prompt labels in memory, with Langfuse's rules, for tests.

    ``labels`` maps each prompt to ``{label: version}``; ``versions`` lists each
    prompt's versions (default: the versions its labels name). ``moves`` records every
    successful move; ``fail_next`` makes the next calls raise.
    """

    def __init__(
        self,
        labels: Mapping[str, Mapping[str, int]] | None = None,
        versions: Mapping[str, Iterable[int]] | None = None,
    ) -> None:
        self.labels: dict[str, dict[str, int]] = {
            prompt: dict(held) for prompt, held in (labels or {}).items()
        }
        self.versions: dict[str, set[int]] = {
            prompt: set(held.values()) for prompt, held in self.labels.items()
        }
        for prompt, numbers in (versions or {}).items():
            self.versions.setdefault(prompt, set()).update(numbers)
            self.labels.setdefault(prompt, {})
        self.moves: list[tuple[str, str, int]] = []
        self._failures: list[LabelError] = []

    def add_version(self, prompt: str, version: int, labels: Iterable[str] = ()) -> None:
        """A new version of ``prompt``, taking ``labels`` from the other versions."""
        self.versions.setdefault(prompt, set()).add(version)
        held = self.labels.setdefault(prompt, {})
        for label in labels:
            held[label] = version

    def fail_next(self, *errors: LabelError) -> None:
        """Raise these, one per call, before doing anything else."""
        self._failures.extend(errors)

    def version_of(self, prompt: str, label: str) -> int | None:
        self._maybe_fail()
        return self.labels.get(prompt, {}).get(label)

    def move(self, prompt: str, label: str, version: int) -> None:
        self._maybe_fail()
        if label == LATEST:
            raise LabelPermanentError("the label 'latest' is kept by Langfuse and cannot be moved")
        if version not in self.versions.get(prompt, set()):
            raise LabelPermanentError(f"prompt '{prompt}' has no version {version}")
        self.labels[prompt][label] = version
        self.moves.append((prompt, label, version))

    def _maybe_fail(self) -> None:
        if self._failures:
            raise self._failures.pop(0)
