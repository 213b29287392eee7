"""What the API server does to a custom resource's JSON before it validates it, by its
structural schema (k8s.io/apiextensions-apiserver ``schema/pruning`` and
``schema/defaulting``): unknown fields pruned (and reported), nulls of fields that are
neither nullable nor defaulted dropped, and ``default:`` values filled in.

Schemas are the CRD's ``openAPIV3Schema`` nodes as loaded from YAML; values are the
decoded JSON, changed in place.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

Schema = Mapping[str, Any]

ROOT_FIELDS = ("apiVersion", "kind", "metadata")
"""Fields of a resource's root that pruning leaves to the ObjectMeta and TypeMeta logic."""


def properties(schema: Schema) -> Mapping[str, Schema]:
    found: Mapping[str, Schema] = schema.get("properties") or {}
    return found


def items(schema: Schema) -> Schema | None:
    found = schema.get("items")
    return found if isinstance(found, Mapping) else None


def additional(schema: Schema) -> Schema | None:
    """The schema of an object's other keys, when ``additionalProperties`` gives one."""
    found = schema.get("additionalProperties")
    return found if isinstance(found, Mapping) else None


def preserves_unknown(schema: Schema) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


def child(schema: Schema, key: str) -> Schema | None:
    """The schema of an object's field ``key``, or None if the schema has none."""
    found = properties(schema).get(key)
    return found if found is not None else additional(schema)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def prune(value: Any, schema: Schema, *, root: bool = True) -> list[str]:
    """Drop the fields ``schema`` does not know; returns their paths (``spec.foo``)."""
    unknown: list[str] = []
    _prune(value, schema, "", unknown, root)
    return unknown


def _prune(value: Any, schema: Schema, path: str, unknown: list[str], root: bool) -> None:
    if isinstance(value, list):
        element = items(schema)
        if element is not None:
            for index, item in enumerate(value):
                _prune(item, element, f"{path}[{index}]", unknown, False)
        return
    if not isinstance(value, dict):
        return
    keep = ROOT_FIELDS if root or schema.get("x-kubernetes-embedded-resource") else ()
    for key in list(value):
        if key in keep:
            continue
        sub = child(schema, key)
        if sub is not None:
            _prune(value[key], sub, join(path, key), unknown, False)
        elif not preserves_unknown(schema) and schema.get("additionalProperties") is not True:
            del value[key]
            unknown.append(join(path, key))


def prune_nulls(value: Any, schema: Schema) -> None:
    """``PruneNonNullableNullsWithoutDefaults``: a null that a field can neither hold nor
    be defaulted from is taken as the field being absent."""
    if isinstance(value, list):
        element = items(schema)
        if element is not None:
            for item in value:
                prune_nulls(item, element)
        return
    if not isinstance(value, dict):
        return
    for key in list(value):
        sub = child(schema, key)
        if sub is None:
            continue
        if value[key] is None and "default" not in sub and not sub.get("nullable"):
            del value[key]
        else:
            prune_nulls(value[key], sub)


def _defaultable_null(item: Any, schema: Schema) -> bool:
    return item is None and not schema.get("nullable")


def apply_defaults(value: Any, schema: Schema) -> None:
    """``Default``: absent (or non-nullable null) fields take their schema's default, top
    down, so that a default value gets the defaults of its own fields too."""
    if isinstance(value, list):
        element = items(schema)
        if element is None:
            return
        for index, item in enumerate(value):
            if "default" in element and _defaultable_null(item, element):
                value[index] = copy.deepcopy(element["default"])
            apply_defaults(value[index], element)
        return
    if not isinstance(value, dict):
        return
    for key, sub in properties(schema).items():
        if "default" in sub and (key not in value or _defaultable_null(value[key], sub)):
            value[key] = copy.deepcopy(sub["default"])
    for key, item in value.items():
        field = child(schema, key)
        if field is not None:
            apply_defaults(item, field)
