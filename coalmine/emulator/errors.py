"""Errors shaped the way Langfuse's public API shapes them: ``{"message": ...}``,
with validation details under ``error`` where the server gives them."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from coalmine.emulator.store import StoreFullError


class ApiError(Exception):
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


def install(app: FastAPI) -> None:
    """Answer API errors, malformed requests and a full store in Langfuse's shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        issues = [
            {
                "path": [str(part) for part in issue.get("loc", ())],
                "message": str(issue.get("msg", "invalid")),
            }
            for issue in error.errors()
        ]
        return ApiError(400, "Invalid request data", error=issues).response()

    @app.exception_handler(StoreFullError)
    async def _full(_: Request, error: StoreFullError) -> JSONResponse:
        return ApiError(
            507,
            "The emulator's store is full: it refused this write and kept everything "
            "stored before. Restart with a larger --max-mb, or with --db FILE.",
        ).response()
