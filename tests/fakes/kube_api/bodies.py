"""Reading what a request carries: its JSON body and its options, failing as the server
does (400 for what cannot be decoded, 422 for options that do not validate).

``read_object`` follows the create and update handlers: the body's ``apiVersion`` and
``kind`` default to the URL's, must name the URL's kind, and the rest is decoded against
the kind's schema; unknown fields become warnings, or a 400 under
``fieldValidation=Strict``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.fakes.kube_api import errors, kinds
from tests.fakes.kube_api.errors import ApiError, not_supported
from tests.fakes.kube_api.resources import ResourceType
from tests.fakes.kube_api.schema import DecodeError, decode

Query = Mapping[str, Sequence[str]]
"""Query parameters, each with every value it was given."""

FIELD_VALIDATIONS = ["Ignore", "Strict", "Warn"]
SCHEME = 'scheme "pkg/api/legacyscheme/scheme.go:30"'
REGISTERED = {
    "v1": {
        "ConfigMap",
        "Event",
        "Secret",
        "Pod",
        "Service",
        "Namespace",
        "Node",
        "ServiceAccount",
        "Endpoints",
        "PersistentVolumeClaim",
        "PersistentVolume",
    },
    "coordination.k8s.io/v1": {"Lease", "LeaseCandidate"},
    "coordination.k8s.io/v1beta1": {"Lease"},
    "events.k8s.io/v1": {"Event"},
    "events.k8s.io/v1beta1": {"Event"},
    "apps/v1": {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"},
    "gateway.networking.k8s.io/v1": {"HTTPRoute", "Gateway", "GatewayClass", "GRPCRoute"},
    "gateway.networking.k8s.io/v1beta1": {"HTTPRoute", "Gateway", "GatewayClass"},
}
"""Kinds the real server knows, so that a wrong kind fails with the right message."""


class JsonError(ValueError):
    """Malformed JSON; the message is the one Go's decoder gives."""


def parse_json(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise JsonError(_go_json_message(error)) from error


def _go_json_message(error: json.JSONDecodeError) -> str:
    if error.pos >= len(error.doc) or error.msg.startswith("Unterminated string"):
        return "unexpected end of JSON input"
    char = error.doc[error.pos]
    context = {
        "Expecting value": "looking for beginning of value",
        "Expecting property name enclosed in double quotes": (
            "looking for beginning of object key string"
        ),
        "Expecting ',' delimiter": "after object key:value pair",
        "Expecting ':' delimiter": "after object key",
        "Extra data": "after top-level value",
    }.get(error.msg, "in string literal")
    return f"invalid character {char!r} {context}"


def summarize(raw: bytes, limit: int = 30) -> str:
    """``summarizeData``: the start of a body, as the server quotes it in errors."""
    if not raw:
        return "<empty>"
    if raw[:1] == b"{":
        text = raw.decode("utf-8", errors="replace")
        return text[:limit] + " ..." if len(raw) > limit else text
    return raw[:limit].hex() + (" ..." if len(raw) > limit else "")


def json_type(value: Any) -> str:
    """How Go's decoder names a JSON value's type in its errors."""
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "object"


def _check_kind(rt: ResourceType, api_version: str, kind: str) -> None:
    if (api_version, kind) == (rt.api_version, rt.kind):
        return
    version = api_version.rsplit("/", 1)[-1]
    handled = f'{kind} in version "{version}" cannot be handled as a {rt.kind}'
    if kind not in REGISTERED.get(api_version, set()):
        raise errors.bad_request(
            f'{handled}: no kind "{kind}" is registered for version "{api_version}" in {SCHEME}'
        )
    if kind == rt.kind:
        raise errors.bad_request(
            f"the API version in the data ({api_version}) does not match the expected API "
            f"version ({rt.api_version})"
        )
    internal = rt.group.split(".", maxsplit=1)[0] if rt.group else "core"
    raise errors.bad_request(
        f"{handled}: converting ({version}.{kind}) to ({internal}.{rt.kind}): unknown conversion"
    )


def read_object(
    rt: ResourceType, raw: bytes, field_validation: str
) -> tuple[dict[str, Any], list[str]]:
    """The object a POST or PUT body carries, in ``rt``'s form, and the warnings."""

    def unrecognized(detail: str) -> ApiError:
        return errors.bad_request(
            f"the object provided is unrecognized (must be of type {rt.kind}): "
            f"couldn't get version/kind; json parse error: {detail} ({summarize(raw)})"
        )

    try:
        body = parse_json(raw)
    except JsonError as error:
        raise unrecognized(str(error)) from error
    if not isinstance(body, dict):
        raise unrecognized(
            f"json: cannot unmarshal {json_type(body)} into Go value of type struct "
            '{ APIVersion string "json:\\"apiVersion,omitempty\\""; '
            'Kind string "json:\\"kind,omitempty\\"" }'
        )
    for field in ("apiVersion", "kind"):
        if body.get(field) is not None and not isinstance(body[field], str):
            raise unrecognized(
                f"json: cannot unmarshal {json_type(body[field])} into Go struct field "
                f".{field} of type string"
            )
    _check_kind(rt, body.get("apiVersion") or rt.api_version, body.get("kind") or rt.kind)
    obj, warnings = decode_typed(rt, body, field_validation)
    obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
    return obj, warnings


def decode_typed(
    rt: ResourceType, body: Any, field_validation: str
) -> tuple[dict[str, Any], list[str]]:
    try:
        decoded = rt.decode(body)
    except DecodeError as error:
        raise errors.bad_request(
            f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {error}'
        ) from error
    return decoded.value, unknown_field_warnings(decoded.unknown, field_validation)


def unknown_field_warnings(unknown: list[str], field_validation: str) -> list[str]:
    """Warnings for dropped fields; a 400 instead under ``fieldValidation=Strict``."""
    if field_validation == "Ignore" or not unknown:
        return []
    warnings = [f'unknown field "{path}"' for path in unknown]
    if field_validation == "Strict":
        raise errors.bad_request("strict decoding error: " + ", ".join(warnings))
    return warnings


@dataclass(frozen=True)
class WriteOptions:
    dry_run: bool = False
    field_validation: str = "Warn"


def _dry_run_errors(values: Sequence[str]) -> list[errors.FieldError]:
    bad = [value for value in values if value != "All"]
    if not bad:
        return []
    shown = "[]string{" + ", ".join(json.dumps(v) for v in values) + "}"
    return [
        errors.FieldError(
            "FieldValueNotSupported",
            "dryRun",
            f'Unsupported value: {shown}: supported values: "All"',
        )
    ]


def write_options(query: Query, options_kind: str) -> WriteOptions:
    """``CreateOptions``/``UpdateOptions``/``PatchOptions`` from the query, validated."""
    dry_run = list(query.get("dryRun", []))
    field_validation = (query.get("fieldValidation") or [""])[-1]
    problems = _dry_run_errors(dry_run)
    if field_validation and field_validation not in FIELD_VALIDATIONS:
        problems.append(not_supported("fieldValidation", field_validation, FIELD_VALIDATIONS))
    if problems:
        raise errors.invalid("meta.k8s.io", options_kind, "", problems)
    return WriteOptions(bool(dry_run), field_validation or "Warn")


@dataclass(frozen=True)
class DeleteOptions:
    dry_run: bool = False
    preconditions: Mapping[str, str] | None = None
    propagation_policy: str | None = None


def delete_options(raw: bytes, query: Query) -> DeleteOptions:
    """DeleteOptions from the body if there is one, else from the query."""
    if raw:
        try:
            body = parse_json(raw)
        except JsonError as error:
            raise errors.bad_request(
                f"couldn't get version/kind; json parse error: {error}"
            ) from error
        if not isinstance(body, dict):
            raise errors.bad_request(
                f"json: cannot unmarshal {json_type(body)} into Go value of type v1.DeleteOptions"
            )
        try:
            options = decode(kinds.DELETE_OPTIONS, body, "DeleteOptions").value
        except DecodeError as error:
            raise errors.bad_request(str(error)) from error
    else:
        options = {}
        for name in ("propagationPolicy",):
            if query.get(name):
                options[name] = query[name][-1]
        for name in ("gracePeriodSeconds",):
            if query.get(name):
                try:
                    options[name] = int(query[name][-1])
                except ValueError as error:
                    raise errors.bad_request(
                        f'strconv.ParseInt: parsing "{query[name][-1]}": invalid syntax'
                    ) from error
        if query.get("orphanDependents"):
            options["orphanDependents"] = query["orphanDependents"][-1] == "true"
        if query.get("dryRun"):
            options["dryRun"] = list(query["dryRun"])
    problems = _dry_run_errors(options.get("dryRun") or [])
    policy = options.get("propagationPolicy")
    if policy is not None and options.get("orphanDependents") is not None:
        problems.append(
            errors.invalid_value(
                "propagationPolicy",
                policy,
                "orphanDependents and deletionPropagation cannot be both set",
            )
        )
    if policy is not None and policy not in {"Foreground", "Background", "Orphan"}:
        problems.append(
            not_supported(
                "propagationPolicy", policy, ["Foreground", "Background", "Orphan", "nil"]
            )
        )
    if problems:
        raise errors.invalid("meta.k8s.io", "DeleteOptions", "", problems)
    return DeleteOptions(bool(options.get("dryRun")), options.get("preconditions"), policy)
