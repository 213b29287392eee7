"""API keys, checked the way Langfuse checks them (``apiAuth.ts``).

- ``Authorization: Basic base64(public:secret)`` gives project access: everything.
- ``Authorization: Bearer <public key>`` gives the ``scores`` access level, which is
  enough to create scores and nothing else.

The three route dependencies answer a refusal the way the matching Langfuse route does:

- ``require_project``: routes built on ``createAuthedProjectAPIRoute`` (scores v3,
  observations v2, metrics, prompt label updates): 401 ``{"message": ...}``, a Bearer
  key included.
- ``require_prompts``: the prompt routes (``authorizePromptRequestOrThrow``): 401
  ``{"message", "error": "UnauthorizedError"}``; a Bearer key gets 403.
- ``require_scores_access``: ``POST /api/public/scores``: Basic or Bearer.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from enum import StrEnum

from fastapi import Request

from coalmine.emulator.errors import ApiError, AuthError
from coalmine.emulator.settings import EmulatorSettings

HOST_HINT = ". Confirm that you've configured the correct host."
PROJECT_KEY_NEEDED = "Access denied - need to use basic auth with secret key"


class Access(StrEnum):
    """What a request's credentials allow."""

    PROJECT = "project"  # Basic auth with public and secret key: everything
    SCORES = "scores"  # Bearer with the public key only: creating scores


def verify(header: str | None, settings: EmulatorSettings) -> Access:
    """The access level an ``Authorization`` header grants, or ``AuthError``.

    Scheme names are case-sensitive (``Basic `` and ``Bearer ``), as in Langfuse.
    """
    if not header:
        raise AuthError("No authorization header")
    if header.startswith("Basic "):
        public, secret = _basic_credentials(header)
        valid = hmac.compare_digest(public.encode(), settings.public_key.encode()) & (
            hmac.compare_digest(secret.encode(), settings.secret_key.encode())
        )
        if not valid:
            raise AuthError("Invalid credentials" + HOST_HINT)
        return Access.PROJECT
    if header.startswith("Bearer "):
        key = header.removeprefix("Bearer ")
        if not hmac.compare_digest(key.encode(), settings.public_key.encode()):
            raise AuthError("Invalid public key" + HOST_HINT)
        return Access.SCORES
    raise AuthError("Invalid authorization header")


def _basic_credentials(header: str) -> tuple[str, str]:
    parts = header.split(" ")
    value = parts[1] if len(parts) > 1 else ""
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError("Invalid authorization header" + HOST_HINT) from None
    public, _, secret = decoded.partition(":")
    if not value or not public or not secret:
        raise AuthError("Invalid authorization header" + HOST_HINT)
    return public, secret


def settings_of(request: Request) -> EmulatorSettings:
    settings: EmulatorSettings = request.app.state.settings
    return settings


def authenticate(
    request: Request, settings: EmulatorSettings, *, scores_ok: bool = False
) -> Access:
    """The access level of a request, or a 401 ``ApiError`` shaped like Langfuse's
    project routes. A Bearer key passes only with ``scores_ok``."""
    try:
        access = verify(request.headers.get("authorization"), settings)
    except AuthError as error:
        raise ApiError(401, error.message) from None
    if access is Access.SCORES and not scores_ok:
        raise ApiError(401, PROJECT_KEY_NEEDED)
    return access


def require_project(request: Request) -> Access:
    """FastAPI dependency of project routes: Basic auth with public and secret key."""
    return authenticate(request, settings_of(request))


def require_scores_access(request: Request) -> Access:
    """FastAPI dependency of score creation: Basic auth, or Bearer with the public key."""
    return authenticate(request, settings_of(request), scores_ok=True)


def require_prompts(request: Request) -> Access:
    """FastAPI dependency of the prompt routes (get, list, create, delete)."""
    try:
        access = verify(request.headers.get("authorization"), settings_of(request))
    except AuthError as error:
        raise ApiError(401, error.message, error="UnauthorizedError") from None
    if access is not Access.PROJECT:
        raise ApiError(
            403,
            f"{PROJECT_KEY_NEEDED} to {request.method} prompts",
            error="ForbiddenError",
        )
    return access
