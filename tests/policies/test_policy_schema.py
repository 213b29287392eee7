"""The JSON Schema of policy files: committed, current, and in agreement with the model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from policies import (
    DURATION_PATTERN,
    EXAMPLES_DIR,
    SCHEMA_PATH,
    Policy,
    parse_duration,
    policy_json_schema,
    policy_json_schema_text,
)

REGENERATE = "coalmine policy schema --output policies/schema.json"


def test_committed_schema_is_current() -> None:
    committed = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.exists() else ""
    assert committed == policy_json_schema_text(), (
        f"policies/schema.json is out of date with the policy model; run: {REGENERATE}"
    )


def test_schema_text_is_stable() -> None:
    text = policy_json_schema_text()
    assert text == policy_json_schema_text()
    assert text.endswith("}\n")
    assert json.loads(text) == policy_json_schema()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# ------------------------------------------- a small JSON Schema checker (the subset used)

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}
_ANNOTATIONS = {"title", "description", "default", "format", "$schema"}


class SchemaMismatchError(AssertionError):
    pass


def check(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str = "") -> None:
    """Raise SchemaMismatchError unless `value` satisfies `schema` (draft 2020-12, a subset)."""
    unknown = set(schema) - _ANNOTATIONS - {
        "$ref", "$defs", "anyOf", "const", "enum", "type", "properties", "required",
        "additionalProperties", "items", "minItems", "maxItems", "minLength", "maxLength",
        "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    }  # fmt: skip
    if unknown:
        raise AssertionError(f"{where}: the checker does not know {sorted(unknown)}")
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        check(value, root["$defs"][name], root, where)
    if "anyOf" in schema:
        for choice in schema["anyOf"]:
            try:
                check(value, choice, root, where)
                break
            except SchemaMismatchError:
                continue
        else:
            raise SchemaMismatchError(f"{where}: {value!r} matches no choice")
    if "const" in schema and value != schema["const"]:
        raise SchemaMismatchError(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaMismatchError(f"{where}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        _check_type(value, schema["type"], where)
    if isinstance(value, dict):
        _check_object(value, schema, root, where)
    if isinstance(value, list):
        for index, item in enumerate(value):
            if "items" in schema:
                check(item, schema["items"], root, f"{where}[{index}]")
        if len(value) < schema.get("minItems", 0):
            raise SchemaMismatchError(f"{where}: too few items")
        if len(value) > schema.get("maxItems", len(value)):
            raise SchemaMismatchError(f"{where}: too many items")
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            raise SchemaMismatchError(f"{where}: wrong length")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise SchemaMismatchError(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(value, schema, where)


def _check_type(value: Any, kind: str, where: str) -> None:
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, _TYPES[kind])
    if not ok:
        raise SchemaMismatchError(f"{where}: {value!r} is not {kind}")


def _check_object(
    value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any], where: str
) -> None:
    properties = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in value:
            raise SchemaMismatchError(f"{where}: {key} missing")
    for key, item in value.items():
        if key in properties:
            check(item, properties[key], root, f"{where}.{key}")
        elif schema.get("additionalProperties") is False:
            raise SchemaMismatchError(f"{where}: unknown {key}")


def _check_number(value: float, schema: dict[str, Any], where: str) -> None:
    if "minimum" in schema and value < schema["minimum"]:
        raise SchemaMismatchError(f"{where}: below minimum")
    if "maximum" in schema and value > schema["maximum"]:
        raise SchemaMismatchError(f"{where}: above maximum")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        raise SchemaMismatchError(f"{where}: not above exclusiveMinimum")
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        raise SchemaMismatchError(f"{where}: not below exclusiveMaximum")


# ------------------------------------------------------------------ examples


EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_satisfies_the_schema(path: Path) -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    check(yaml.safe_load(path.read_text(encoding="utf-8")), schema, schema)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda data: data.update(routng={}), "unknown routng"),
        (lambda data: data.pop("analysis"), "analysis missing"),
        (lambda data: data["steps"][0].update(minDuration="10 minutes"), "does not match"),
        (lambda data: data["steps"][0].update(weight=0), "exclusiveMinimum"),
        (lambda data: data.update(name="Upper"), "does not match"),
        (lambda data: data["analysis"]["metrics"][0].update(source="dollars"), "not in"),
        (lambda data: data["target"]["prompt"].update(stableLabel="UP"), "prompt: .* matches no"),
        (
            lambda data: data["target"].update(upstreams={"stable": "http://app:8000/v1?x=1"}),
            "upstreams: .* matches no",
        ),
        (
            lambda data: data["target"].update(upstreams={"stable": "http://app:8000/#top"}),
            "upstreams: .* matches no",
        ),
    ],
)
def test_schema_refuses_what_the_model_refuses(change: Any, where: str) -> None:
    schema = policy_json_schema()
    data = yaml.safe_load((EXAMPLES_DIR / "prompt-canary.yaml").read_text(encoding="utf-8"))
    change(data)
    with pytest.raises(SchemaMismatchError, match=where):
        check(data, schema, schema)


def test_stickiness_none_is_in_the_schema() -> None:
    schema = policy_json_schema()
    routing = {"stickiness": "none"}
    check(routing, schema["$defs"]["Routing"], schema)
    with pytest.raises(SchemaMismatchError):
        check({"stickiness": "sticky"}, schema["$defs"]["Routing"], schema)


# ------------------------------------------------------------------ model agreement


def _models() -> dict[str, type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    pending: list[type[BaseModel]] = [Policy]
    while pending:
        model = pending.pop()
        if model.__name__ in found:
            continue
        found[model.__name__] = model
        for info in model.model_fields.values():
            pending.extend(_nested_models(info.annotation))
    return found


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in getattr(annotation, "__args__", ()) for model in _nested_models(arg)]


@pytest.mark.parametrize("name", sorted(_models()))
def test_schema_properties_match_the_model(name: str) -> None:
    model = _models()[name]
    schema = policy_json_schema()
    definition = schema if model is Policy else schema["$defs"][name]
    aliases = {info.alias or field for field, info in model.model_fields.items()}
    required = {
        info.alias or field for field, info in model.model_fields.items() if info.is_required()
    }
    assert set(definition["properties"]) == aliases
    assert set(definition.get("required", [])) == required
    assert definition["additionalProperties"] is False


def test_every_model_is_in_the_schema() -> None:
    schema = policy_json_schema()
    enums = {"Direction", "MetricSource", "OnApprovalTimeout", "OnInconclusive", "OnMaxDuration"}
    enums |= {"RoutingProvider", "ScoreType"}
    assert set(schema["$defs"]) == set(_models()) - {"Policy"} | enums


@pytest.mark.parametrize(
    "text",
    [
        "0s",
        "250ms",
        "30s",
        "10m",
        "2h",
        "1h30m",
        "1.5h",
        "1h2m3s4ms",
        "10 m",
        "m",
        "",
        "30m1h",
        "10ms5s",
    ],
)
def test_duration_pattern_matches_the_parser(text: str) -> None:
    try:
        parse_duration(text)
        parses = True
    except ValueError:
        parses = False
    assert bool(re.search(DURATION_PATTERN, text)) is parses


def test_durations_are_strings_in_the_schema() -> None:
    schema = policy_json_schema()
    assert schema["$defs"]["Analysis"]["properties"]["interval"] == {
        "default": "1m",
        "description": "Time between two analyses.",
        "pattern": DURATION_PATTERN,
        "type": "string",
    }
