"""The emulator's exceptions, and its error answers in the shape of Langfuse's.

The exceptions, with the HTTP status a client gets for each:

* EmulatorError        the base class, never raised itself
  + ApiError           the status it carries: 400 a bad request (zod issues, bad JSON,
  |                    a bad cursor...), 401 refused credentials, 403 a Bearer key on a
  |                    prompt route, 404 not found, 405 a method the route lacks, 500
  |                    anything unexpected
  + AuthError          401 (``auth.py`` answers it as an ApiError)
  + OtlpError          400 (``otel.py`` answers it as an ApiError)
  + StoreFullError     507 (the write is refused; everything stored before is kept)
  + NeedsPythonError   none: a metrics query the SQL path cannot compute, which the
                       Python path then answers (``metrics_sql.py``)

Any other exception is answered 500 ``{"message": "Internal Server Error", "error":
<text>}``. Rate limits (429), the body limit (413) and injected faults are answered by
middleware, without an exception.

Langfuse's route wrapper (``withMiddlewares``) answers

- a known error as ``{"message": <description>, "error": <class name>}``, e.g.
  ``{"message": "Prompt not found: 'x' with label 'production'", "error":
  "LangfuseNotFoundError"}``;
- a failed zod parse of query or body as 400 ``{"message": "Invalid request data",
  "error": [<zod issues>]}``, each issue ``{"code", "path", "message", ...}``;
- anything else as 500 ``{"message": "Internal Server Error", "error": <text>}``.

Routes built on ``createAuthedProjectAPIRoute`` answer auth failures with
``{"message": ...}`` only. Next.js itself answers a body that is not JSON with a plain
text 400 ``Invalid JSON`` and a body over the size limit with a plain text 413.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

INVALID_REQUEST_DATA = "Invalid request data"
INVALID_JSON = "Invalid JSON"


class EmulatorError(Exception):
    """Base class of the emulator's exceptions."""


class ApiError(EmulatorError):
    """An error answer of the public API."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error = error
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"message": self.message}
        if self.error is not None:
            body["error"] = self.error
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class AuthError(EmulatorError):
    """Credentials Langfuse would refuse, with its message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OtlpError(EmulatorError):
    """A trace export the server refuses with 400; ``message`` is what it answers."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StoreFullError(EmulatorError):
    """The store reached its size bound; the write was refused and rolled back."""


class NeedsPythonError(EmulatorError):
    """A metrics query the SQL path cannot compute; the Python path computes it."""


MISSING: Any = object()
"""Stands for a key absent from a request body (zod reports it as ``undefined``)."""


def js_type(value: Any) -> str:
    """The JavaScript type name zod reports for a decoded JSON value."""
    if value is MISSING:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def bad_request(message: str) -> ApiError:
    """Langfuse's ``InvalidRequestError``."""
    return ApiError(400, message, error="InvalidRequestError")


def not_found(message: str) -> ApiError:
    """Langfuse's ``LangfuseNotFoundError``."""
    return ApiError(404, message, error="LangfuseNotFoundError")


def issue(code: str, path: Sequence[str | int], message: str, **extra: Any) -> dict[str, Any]:
    """One zod (v4) issue, as Langfuse lists them under ``error``."""
    return {"code": code, **extra, "path": list(path), "message": message}


def invalid(issues: Iterable[dict[str, Any]]) -> ApiError:
    """The 400 answer to a request that failed validation."""
    return ApiError(400, INVALID_REQUEST_DATA, error=list(issues))


_ZOD_CODES = {
    "missing": "invalid_type",
    "too_short": "too_small",
    "string_too_short": "too_small",
    "greater_than": "too_small",
    "greater_than_equal": "too_small",
    "too_long": "too_big",
    "string_too_long": "too_big",
    "less_than": "too_big",
    "less_than_equal": "too_big",
    "literal_error": "invalid_value",
    "enum": "invalid_value",
    "string_pattern_mismatch": "invalid_format",
    "value_error": "custom",
    "assertion_error": "custom",
}
_LOCATIONS = {"body", "query", "path", "header", "cookie"}


def zod_issues(errors: Iterable[Any]) -> list[dict[str, Any]]:
    """Pydantic validation errors as zod-shaped issues: the zod code closest to each
    error, its path inside the body or query (without the location), its message."""
    issues = []
    for error in errors:
        location = [part for part in error.get("loc", ()) if part is not None]
        if location and location[0] in _LOCATIONS:
            location = location[1:]
        kind = str(error.get("type", ""))
        code = _ZOD_CODES.get(kind)
        if code is None:
            code = "invalid_type" if kind.endswith(("_type", "_parsing")) else "custom"
        message = str(error.get("msg", "Invalid input"))
        if kind == "missing":
            message = "Invalid input: expected a value, received undefined"
        issues.append(issue(code, location, message))
    return issues


def install(app: FastAPI) -> None:
    """Answer API errors, malformed requests and a full store in Langfuse's shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> Response:
        errors = list(error.errors())
        if any(item.get("type") == "json_invalid" for item in errors):
            return PlainTextResponse(INVALID_JSON, status_code=400)
        return invalid(zod_issues(errors)).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 405:
            return ApiError(
                405,
                "Method not allowed",
                error="MethodNotAllowedError",
                headers=dict(error.headers or {}),
            ).response()
        if error.status_code == 404:
            return ApiError(404, "Not Found", error="LangfuseNotFoundError").response()
        return ApiError(
            error.status_code, str(error.detail), headers=dict(error.headers or {})
        ).response()

    @app.exception_handler(StoreFullError)
    async def _full(_: Request, error: StoreFullError) -> JSONResponse:
        return ApiError(
            507,
            "The emulator's store is full: it refused this write and kept everything "
            "stored before. Restart with a larger --max-mb, or with --db FILE.",
        ).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        return ApiError(500, "Internal Server Error", error=str(error)).response()
