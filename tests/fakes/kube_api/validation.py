"""Validation of the served kinds, with the rules and messages of the API server's
``pkg/apis/*/validation`` and apimachinery's ``util/validation``.

Every function takes objects in their stored (core/v1 or coordination/v1) JSON form and
returns a list of field errors; an empty list means valid.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

from tests.fakes.kube_api.errors import (
    FieldError,
    forbidden,
    invalid_value,
    not_supported,
    required_value,
    too_long,
)

MAX_CONFIG_MAP_BYTES = 1024 * 1024
MAX_ANNOTATIONS_BYTES = 256 * 1024
IMMUTABLE = "field is immutable"
IMMUTABLE_WHEN_SET = "field is immutable when `immutable` is set"

LABEL_KEY_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE_FMT = f"({LABEL_KEY_FMT})?"
DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + r"(\." + DNS1123_LABEL_FMT + ")*"
CONFIG_MAP_KEY_FMT = "[-._a-zA-Z0-9]+"

NameCheck = Callable[[str, bool], list[str]]


def regex_error(message: str, fmt: str, *examples: str) -> str:
    if not examples:
        return f"{message} (regex used for validation is '{fmt}')"
    listed = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {listed}regex used for validation is '{fmt}')"


def max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def is_dns1123_subdomain(value: str) -> list[str]:
    errors = [max_len_error(253)] if len(value) > 253 else []
    if not re.fullmatch(DNS1123_SUBDOMAIN_FMT, value):
        errors.append(
            regex_error(
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character",
                DNS1123_SUBDOMAIN_FMT,
                "example.com",
            )
        )
    return errors


def is_dns1123_label(value: str) -> list[str]:
    errors = [max_len_error(63)] if len(value) > 63 else []
    if not re.fullmatch(DNS1123_LABEL_FMT, value):
        if re.fullmatch(DNS1123_SUBDOMAIN_FMT, value):
            errors.append("must not contain dots")
        else:
            errors.append(
                regex_error(
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                    "characters or '-', and must start and end with an alphanumeric character",
                    DNS1123_LABEL_FMT,
                    "my-name",
                    "123-abc",
                )
            )
    return errors


def is_qualified_name(value: str) -> list[str]:
    """``IsQualifiedName``: an optional DNS subdomain prefix and '/', then a name part."""
    key_error = (
        "must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
        "with an alphanumeric character"
    )
    parts = value.split("/")
    errors: list[str] = []
    if len(parts) > 2:
        return [
            "a valid label key "
            + regex_error(key_error, LABEL_KEY_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    name = parts[-1]
    if len(parts) == 2:
        if not parts[0]:
            errors.append("prefix part must be non-empty")
        else:
            errors.extend("prefix part " + m for m in is_dns1123_subdomain(parts[0]))
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part " + max_len_error(63))
    if not re.fullmatch(LABEL_KEY_FMT, name):
        errors.append(
            "name part " + regex_error(key_error, LABEL_KEY_FMT, "MyName", "my.name", "123-abc")
        )
    return errors


def is_label_value(value: str) -> list[str]:
    errors = [max_len_error(63)] if len(value) > 63 else []
    if not re.fullmatch(LABEL_VALUE_FMT, value):
        errors.append(
            regex_error(
                "a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character",
                LABEL_VALUE_FMT,
                "MyValue",
                "my_value",
                "12345",
            )
        )
    return errors


def is_config_map_key(value: str) -> list[str]:
    errors = [max_len_error(253)] if len(value) > 253 else []
    if not re.fullmatch(CONFIG_MAP_KEY_FMT, value):
        errors.append(
            regex_error(
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                CONFIG_MAP_KEY_FMT,
                "key.name",
                "KEY_NAME",
                "key-name",
            )
        )
    if value == ".":
        errors.append("must not be '.'")
    elif value == "..":
        errors.append("must not be '..'")
    elif value.startswith(".."):
        errors.append("must not start with '..'")
    return errors


def name_is_dns_subdomain(name: str, prefix: bool) -> list[str]:
    if prefix and name.endswith("-"):
        name = name[:-1] + "a"
    return is_dns1123_subdomain(name)


def path_segment_name(name: str, prefix: bool) -> list[str]:
    """``ValidatePathSegmentName``: what every name must satisfy to sit in a URL."""
    if not prefix and name in {".", ".."}:
        return [f"may not be '{name}'"]
    return [f"may not contain '{bad}'" for bad in ("/", "%") if bad in name]


def validate_object_meta(meta: dict[str, Any], name_check: NameCheck) -> list[FieldError]:
    errors: list[FieldError] = []
    generate_name = meta.get("generateName", "")
    if generate_name:
        errors += [
            invalid_value("metadata.generateName", generate_name, m)
            for m in name_check(generate_name, True)
        ]
    name = meta.get("name", "")
    if not name:
        errors.append(required_value("metadata.name", "name or generateName is required"))
    else:
        errors += [invalid_value("metadata.name", name, m) for m in name_check(name, False)]
    namespace = meta.get("namespace", "")
    if not namespace:
        errors.append(required_value("metadata.namespace"))
    else:
        errors += [
            invalid_value("metadata.namespace", namespace, m) for m in is_dns1123_label(namespace)
        ]
    return errors + _validate_meta_maps(meta)


def _validate_meta_maps(meta: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    for key, value in (meta.get("labels") or {}).items():
        errors += [invalid_value("metadata.labels", key, m) for m in is_qualified_name(key)]
        errors += [invalid_value("metadata.labels", value, m) for m in is_label_value(value)]
    annotations = meta.get("annotations") or {}
    for key in annotations:
        errors += [
            invalid_value("metadata.annotations", key, m) for m in is_qualified_name(key.lower())
        ]
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        errors.append(too_long("metadata.annotations", MAX_ANNOTATIONS_BYTES))
    for index, finalizer in enumerate(meta.get("finalizers") or []):
        errors += [
            invalid_value(f"metadata.finalizers[{index}]", finalizer, m)
            for m in is_qualified_name(finalizer)
        ]
    return errors


def validate_object_meta_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    if old.get("deletionTimestamp"):
        added = [f for f in new.get("finalizers") or [] if f not in (old.get("finalizers") or [])]
        if added:
            errors.append(
                forbidden(
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted, "
                    f"found new finalizers {added!r}".replace("'", '"'),
                )
            )
    if new.get("generation", 0) < old.get("generation", 0):
        errors.append(
            invalid_value(
                "metadata.generation", new.get("generation", 0), "must not be decremented"
            )
        )
    for field in (
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ):
        if new.get(field) != old.get(field):
            errors.append(invalid_value(f"metadata.{field}", new.get(field) or "", IMMUTABLE))
    return errors + _validate_meta_maps(new)


def common_meta_errors(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    """What ``BeforeCreate``/``BeforeUpdate`` check of every object's metadata."""
    errors = validate_object_meta(obj["metadata"], path_segment_name)
    if old is not None:
        errors += validate_object_meta_update(obj["metadata"], old["metadata"])
    return errors


def validate_config_map(obj: dict[str, Any]) -> list[FieldError]:
    errors = validate_object_meta(obj["metadata"], name_is_dns_subdomain)
    data: dict[str, str] = obj.get("data") or {}
    binary: dict[str, str] = obj.get("binaryData") or {}
    size = 0
    for key, value in data.items():
        errors += [invalid_value(f"data[{key}]", key, m) for m in is_config_map_key(key)]
        if key in binary:
            errors.append(
                invalid_value(f"data[{key}]", key, "duplicate of key present in binaryData")
            )
        size += len(value.encode())
    for key, value in binary.items():
        errors += [invalid_value(f"binaryData[{key}]", key, m) for m in is_config_map_key(key)]
        if key in data:
            errors.append(
                invalid_value(f"binaryData[{key}]", key, "duplicate of key present in data")
            )
        size += len(base64.b64decode(value))
    if size > MAX_CONFIG_MAP_BYTES:
        errors.append(too_long("[]", MAX_CONFIG_MAP_BYTES))
    return errors


def validate_config_map_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    if old.get("immutable"):
        if not new.get("immutable"):
            errors.append(forbidden("immutable", IMMUTABLE_WHEN_SET))
        if (new.get("data") or {}) != (old.get("data") or {}):
            errors.append(forbidden("data", IMMUTABLE_WHEN_SET))
        if (new.get("binaryData") or {}) != (old.get("binaryData") or {}):
            errors.append(forbidden("binaryData", IMMUTABLE_WHEN_SET))
    return errors + validate_config_map(new)


def validate_lease(obj: dict[str, Any]) -> list[FieldError]:
    errors = validate_object_meta(obj["metadata"], name_is_dns_subdomain)
    spec = obj.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        errors.append(
            invalid_value("spec.leaseDurationSeconds", duration, "must be greater than 0")
        )
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        errors.append(
            invalid_value(
                "spec.leaseTransitions", transitions, "must be greater than or equal to 0"
            )
        )
    strategy = spec.get("strategy")
    if strategy is not None:
        if "/" not in strategy:
            if strategy != "OldestEmulationVersion":
                errors.append(
                    not_supported("spec.strategy.strategy", strategy, ["OldestEmulationVersion"])
                )
        else:
            errors += [
                invalid_value("spec.strategy.strategy", strategy, m)
                for m in is_qualified_name(strategy)
            ]
    if spec.get("preferredHolder") and not strategy:
        errors.append(
            forbidden("spec.preferredHolder", "may only be specified if `strategy` is defined")
        )
    return errors


def validate_lease_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    return validate_object_meta_update(new["metadata"], old["metadata"]) + validate_lease(new)


def validate_legacy_event(event: dict[str, Any]) -> list[FieldError]:
    """``legacyValidateEvent``: all core/v1 asks of an Event (not even its name's form)."""
    errors: list[FieldError] = []
    namespace = event["metadata"].get("namespace", "")
    involved_namespace = event.get("involvedObject", {}).get("namespace", "")
    mismatch = invalid_value(
        "involvedObject.namespace", involved_namespace, "does not match event.namespace"
    )
    if event.get("eventTime") is None:
        if not involved_namespace:
            if namespace not in {"", "default"}:
                errors.append(mismatch)
        elif namespace != involved_namespace:
            errors.append(mismatch)
    else:
        if not involved_namespace and namespace not in {"default", "kube-system"}:
            errors.append(mismatch)
        controller = event.get("reportingComponent", "")
        if not controller:
            errors.append(required_value("reportingController"))
        errors += [
            invalid_value("reportingController", controller, m)
            for m in is_qualified_name(controller)
        ]
        for path, value, limit in (
            ("reportingInstance", event.get("reportingInstance", ""), 128),
            ("action", event.get("action", ""), 128),
            ("reason", event.get("reason", ""), 128),
        ):
            if not value:
                errors.append(required_value(path))
            if len(value) > limit:
                errors.append(invalid_value(path, "", f"can have at most {limit} characters"))
        if len(event.get("message", "")) > 1024:
            errors.append(invalid_value("message", "", "can have at most 1024 characters"))
    errors += [invalid_value("namespace", namespace, m) for m in is_dns1123_subdomain(namespace)]
    return errors


def validate_events_v1_event(event: dict[str, Any]) -> list[FieldError]:
    """``ValidateEventCreate`` for events.k8s.io/v1: legacy rules plus the strict ones."""
    errors = validate_legacy_event(event)
    errors += validate_object_meta(event["metadata"], name_is_dns_subdomain)
    errors += _validate_series(event)
    if event.get("eventTime") is None:
        errors.append(required_value("eventTime"))
    if event.get("type") not in {"Normal", "Warning"}:
        errors.append(invalid_value("type", "", f"has invalid value: {event.get('type', '')}"))
    for path in ("firstTimestamp", "lastTimestamp"):
        if event.get(path) is not None:
            errors.append(invalid_value(path, "", "needs to be unset"))
    if event.get("count"):
        errors.append(invalid_value("count", "", "needs to be unset"))
    if event.get("source", {}).get("component") or event.get("source", {}).get("host"):
        errors.append(invalid_value("source", "", "needs to be unset"))
    return errors


def _validate_series(event: dict[str, Any]) -> list[FieldError]:
    series = event.get("series")
    if series is None:
        return []
    errors = []
    if series.get("count", 0) < 2:
        errors.append(invalid_value("series.count", "", "should be at least 2"))
    if series.get("lastObservedTime") is None:
        errors.append(required_value("series.lastObservedTime"))
    return errors


def validate_legacy_event_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    return validate_legacy_event(new)


EVENT_IMMUTABLE_FIELDS = (
    "involvedObject",
    "reason",
    "message",
    "source",
    "firstTimestamp",
    "lastTimestamp",
    "count",
    "type",
    "eventTime",
    "action",
    "related",
    "reportingComponent",
    "reportingInstance",
)


def validate_events_v1_event_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    errors = validate_legacy_event(new)
    errors += validate_object_meta_update(new["metadata"], old["metadata"])
    if new.get("series") != old.get("series"):
        errors += _validate_series(new)
    for path in EVENT_IMMUTABLE_FIELDS:
        if new.get(path) != old.get(path):
            label = "reportingController" if path == "reportingComponent" else path
            errors.append(invalid_value(label, _display(new.get(path)), IMMUTABLE))
    return errors


def _display(value: Any) -> object:
    return value if isinstance(value, str | int) else str(value)
