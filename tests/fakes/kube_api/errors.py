"""API errors as the Kubernetes API server reports them: ``Status`` objects.

Each constructor mirrors one of apimachinery's ``errors.New*`` functions, so that code
(reason, message, details) reads the same as the real server's answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OPTIMISTIC_LOCK_MESSAGE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)
GENERIC_MESSAGES = {
    400: ("BadRequest", "the server rejected our request for an unknown reason"),
    401: ("Unauthorized", "the server has asked for the client to provide credentials"),
    404: ("NotFound", "the server could not find the requested resource"),
    405: ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
    409: ("Conflict", "the server reported a conflict"),
    422: ("Invalid", "the server rejected our request due to an error in our request"),
    429: (
        "TooManyRequests",
        "the server has received too many requests and has asked us to try again later",
    ),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: (
        "Timeout",
        "the server was unable to return a response in the time allotted, "
        "but may still be processing the request",
    ),
}


@dataclass(frozen=True)
class FieldError:
    """One entry of a validation error list (``field.Error``)."""

    type: str
    """The cause type: FieldValueInvalid, FieldValueRequired, FieldValueTooLong, ..."""
    field: str
    body: str
    """The message without the field name (``ErrorBody()``)."""

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


def _quoted(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def invalid_value(path: str, value: object, detail: str) -> FieldError:
    return FieldError("FieldValueInvalid", path, f"Invalid value: {_quoted(value)}: {detail}")


def required_value(path: str, detail: str = "") -> FieldError:
    body = "Required value" + (f": {detail}" if detail else "")
    return FieldError("FieldValueRequired", path, body)


def forbidden(path: str, detail: str) -> FieldError:
    return FieldError("FieldValueForbidden", path, f"Forbidden: {detail}")


def too_long(path: str, max_bytes: int) -> FieldError:
    return FieldError("FieldValueTooLong", path, f"Too long: must have at most {max_bytes} bytes")


def not_supported(path: str, value: object, supported: list[str]) -> FieldError:
    listed = ", ".join(_quoted(item) for item in supported)
    return FieldError(
        "FieldValueNotSupported",
        path,
        f"Unsupported value: {_quoted(value)}: supported values: {listed}",
    )


@dataclass
class ApiError(Exception):
    """An error answered with a ``Status`` body and its HTTP code."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    list_meta: dict[str, Any] = field(default_factory=dict)
    """The Status's ``metadata`` (a ``continue`` token for an expired one)."""

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": dict(self.list_meta),
            "status": "Failure",
            "message": self.message,
        }
        if self.reason:
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(group: str, kind: str, name: str, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if kind:
        details["kind"] = kind
    details.update(extra)
    return details


def qualified(group: str, resource: str) -> str:
    """``schema.GroupResource.String()``: ``configmaps`` or ``leases.coordination.k8s.io``."""
    return f"{resource}.{group}" if group else resource


def not_found(group: str, resource: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f"{qualified(group, resource)} {_quoted(name)} not found",
        _details(group, resource, name),
    )


def already_exists(group: str, resource: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f"{qualified(group, resource)} {_quoted(name)} already exists",
        _details(group, resource, name),
    )


def conflict(group: str, resource: str, name: str, cause: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f"Operation cannot be fulfilled on {qualified(group, resource)} {_quoted(name)}: {cause}",
        _details(group, resource, name),
    )


def invalid(group: str, kind: str, name: str, errors: list[FieldError]) -> ApiError:
    """``NewInvalid``: 422 with one cause per field error (duplicates dropped)."""
    unique: list[FieldError] = []
    for error in errors:
        if str(error) not in {str(seen) for seen in unique}:
            unique.append(error)
    summary = str(unique[0]) if len(unique) == 1 else "[" + ", ".join(map(str, unique)) + "]"
    group_kind = f"{kind}.{group}" if group else kind
    causes = [{"reason": e.type, "message": e.body, "field": e.field} for e in errors]
    return ApiError(
        422,
        "Invalid",
        f"{group_kind} {_quoted(name)} is invalid: {summary}",
        _details(group, kind, name, causes=causes),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def internal(message: str) -> ApiError:
    """An error the server did not turn into a Status itself: 500, no reason."""
    return ApiError(500, "", message)


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(accepted)}",
    )


def too_large_resource_version(wanted: int, current: int) -> ApiError:
    return ApiError(
        504,
        "Timeout",
        f"Timeout: Too large resource version: {wanted}, current: {current}",
        {
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
    )


def generic(code: int, group: str = "", resource: str = "", name: str = "") -> ApiError:
    """``NewGenericServerResponse``: the canned message of a status code."""
    reason, message = GENERIC_MESSAGES.get(
        code,
        (
            "InternalError",
            f'an error on the server ("{code}") has prevented the request from succeeding',
        ),
    )
    return ApiError(code, reason, message, _details(group, resource, name))
