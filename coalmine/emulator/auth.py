"""HTTP Basic auth with the project's public and secret key, as Langfuse checks it."""

from __future__ import annotations

import base64
import binascii
import hmac
from enum import StrEnum

from fastapi import Request

from coalmine.emulator.errors import ApiError
from coalmine.emulator.settings import EmulatorSettings


class Access(StrEnum):
    """What a request's credentials allow."""

    PROJECT = "project"  # Basic auth with public and secret key: everything
    SCORES = "scores"  # Bearer with the public key only: creating scores


def authenticate(
    request: Request, settings: EmulatorSettings, *, scores_ok: bool = False
) -> Access:
    """The access level of a request, or a 401/403 ``ApiError``."""
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(401, "Unauthorized: no authorization header")
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        if not hmac.compare_digest(credentials.strip(), settings.public_key):
            raise ApiError(401, "Unauthorized: invalid public key")
        if not scores_ok:
            raise ApiError(
                403, "Access denied: need to use basic auth with secret key for this endpoint"
            )
        return Access.SCORES
    if scheme != "basic":
        raise ApiError(401, "Unauthorized: authorization scheme must be Basic")
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(401, "Unauthorized: malformed Basic credentials") from None
    public, sep, secret = decoded.partition(":")
    valid = hmac.compare_digest(public, settings.public_key) & hmac.compare_digest(
        secret, settings.secret_key
    )
    if not sep or not valid:
        raise ApiError(401, "Unauthorized: invalid public or secret key")
    return Access.PROJECT
