"""Every emulator response in the tests, checked against the Langfuse OpenAPI spec.

``SpecCheckingApp`` wraps the emulator's ASGI app: it buffers each response to
``/api/public`` and validates it against the operation's schema in the spec (or, for
the responses listed in ``coalmine.emulator.compat``, records it as a known difference).
Violations are collected; the fixtures fail the test that caused them. Answers made up
by an injected fault (header ``x-emulator-fault``) are deliberately off-spec and skipped.
Paths are matched as sent (``raw_path``), so a folder name ``a%2Fb`` stays one segment.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from openapi_core import Config, OpenAPI
from openapi_core.templating.paths.exceptions import PathNotFound
from openapi_core.testing import MockRequest, MockResponse

from coalmine.emulator.compat import difference

SPEC_PATH = Path(__file__).resolve().parent / "langfuse-openapi.yml"
"""The Langfuse server's OpenAPI spec (4.16.0), kept beside the tests."""


@functools.cache
def spec() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC_PATH), config=Config(spec_validator_cls=None))


@functools.cache
def _templates() -> list[tuple[list[str], str]]:
    paths = spec().spec / "paths"
    return [(str(p).strip("/").split("/"), str(p)) for p in paths.keys()]  # noqa: SIM118


def path_template(path: str) -> tuple[str, dict[str, str]] | None:
    """The spec's path template matching a concrete path, with its parameters."""
    parts = path.strip("/").split("/")
    best: tuple[str, dict[str, str]] | None = None
    for template_parts, template in _templates():
        if len(template_parts) != len(parts):
            continue
        args: dict[str, str] = {}
        for want, got in zip(template_parts, parts, strict=True):
            if want.startswith("{") and want.endswith("}"):
                args[want[1:-1]] = got
            elif want != got:
                break
        else:
            if best is None or len(args) < len(best[1]):  # literal segments win
                best = (template, args)
    return best


@dataclass
class Checked:
    """What the checker saw."""

    responses: int = 0
    known_differences: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


def check(
    method: str, path: str, *, query: str, status: int, body: bytes, content_type: str
) -> str | None:
    """None when the response matches the spec (or a listed difference), else why not."""
    found = path_template(path)
    if found is None:
        return f"{method} {path}: no such path in the spec"
    template, args = found
    if difference(method, template, status) is not None:
        return None
    request = MockRequest(
        "http://localhost",
        method.lower(),
        path,
        args=parse_qsl(query, keep_blank_values=True) or None,  # type: ignore[arg-type]
        view_args=args,
    )
    response = MockResponse(
        body, status_code=status, content_type=content_type or "application/json"
    )
    try:
        spec().validate_response(request, response)
    except PathNotFound as error:
        return f"{method} {path}: {error}"
    except Exception as error:  # openapi-core raises several unrelated types
        detail = repr(error.__cause__ or error)
        return f"{method} {path} -> {status}: {type(error).__name__}: {detail[:600]}"
    return None


class SpecCheckingApp:
    """ASGI middleware: validate every /api/public response against the spec."""

    def __init__(self, app: Any, checked: Checked) -> None:
        self.app = app
        self.checked = checked

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/public"):
            await self.app(scope, receive, send)
            return
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self.checked.responses += 1  # before the client can see the end
            await send(message)

        await self.app(scope, receive, capture)
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        content_type = next(
            (v.decode() for k, v in headers if k.lower() == b"content-type"), ""
        ).split(";")[0]
        body = b"".join(chunks)
        if any(k.lower() == b"x-emulator-fault" for k, _ in headers):
            return
        if status >= 500 or not body or content_type != "application/json":
            return
        try:
            json.loads(body)
        except ValueError:
            self.checked.violations.append(f"{scope['method']} {path}: body is not JSON")
            return
        problem = check(
            scope["method"],
            path,
            query=scope.get("query_string", b"").decode(),
            status=status,
            body=body,
            content_type=content_type,
        )
        if problem is not None:
            self.checked.violations.append(problem)
