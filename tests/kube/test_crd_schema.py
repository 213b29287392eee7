"""The structural-schema side of the fake API server's custom resources: pruning,
defaulting, OpenAPI v3 validation and list types, each with the real server's message,
and the Go formatting those messages use."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.kube_api import gofmt, openapi, structural

STRING: dict[str, Any] = {"type": "string"}


def obj(**fields: Any) -> dict[str, Any]:
    return {"type": "object", "properties": fields}


def errors(value: Any, schema: dict[str, Any]) -> list[str]:
    return [str(error) for error in openapi.validate(value, schema)]


# -- pruning and defaulting ---------------------------------------------------------------


def test_pruning_drops_unknown_fields_and_names_them() -> None:
    schema = obj(
        spec=obj(name=STRING, items={"type": "array", "items": obj(n={"type": "integer"})}),
        free={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        labels={"type": "object", "additionalProperties": STRING},
    )
    value = {
        "apiVersion": "v1",
        "kind": "K",
        "metadata": {"name": "x"},
        "spec": {"name": "a", "extra": 1, "items": [{"n": 1, "m": 2}]},
        "free": {"anything": {"goes": True}},
        "labels": {"a": "b"},
        "top": 1,
    }
    unknown = structural.prune(value, schema)
    assert sorted(unknown) == ["spec.extra", "spec.items[0].m", "top"]
    assert value == {
        "apiVersion": "v1",
        "kind": "K",
        "metadata": {"name": "x"},
        "spec": {"name": "a", "items": [{"n": 1}]},
        "free": {"anything": {"goes": True}},
        "labels": {"a": "b"},
    }


def test_defaults_fill_absent_fields_top_down() -> None:
    schema = obj(
        rules={
            "type": "array",
            "default": [{"path": {}}],
            "items": obj(
                path=obj(
                    type={"type": "string", "default": "PathPrefix"},
                    value={"type": "string", "default": "/"},
                ),
            ),
        }
    )
    value: dict[str, Any] = {}
    structural.apply_defaults(value, schema)
    assert value == {"rules": [{"path": {"type": "PathPrefix", "value": "/"}}]}
    given = {"rules": [{"path": {"value": "/api"}}, {}]}
    structural.apply_defaults(given, schema)
    assert given == {"rules": [{"path": {"type": "PathPrefix", "value": "/api"}}, {}]}


def test_nulls_count_as_absent_unless_nullable() -> None:
    schema = obj(
        weight={"type": "integer", "default": 1},
        note=STRING,
        maybe={"type": "string", "nullable": True},
    )
    value = {"weight": None, "note": None, "maybe": None}
    structural.prune_nulls(value, schema)
    structural.apply_defaults(value, schema)
    assert value == {"weight": 1, "maybe": None}


# -- OpenAPI validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "value", "expected"),
    [
        (
            {"type": "integer", "minimum": 0, "maximum": 1000000},
            1000001,
            "x: Invalid value: 1000001: x in body should be less than or equal to 1000000",
        ),
        (
            {"type": "integer", "minimum": 0},
            -1,
            "x: Invalid value: -1: x in body should be greater than or equal to 0",
        ),
        (
            {"type": "number", "maximum": 1000000},
            1000000.5,
            "x: Invalid value: 1.0000005e+06: x in body should be less than or equal to 1e+06",
        ),
        (
            {"type": "integer"},
            "10",
            'x: Invalid value: "string": x in body must be of type integer: "string"',
        ),
        ({"type": "string", "maxLength": 3}, "abcd", "x: Too long: may not be more than 3 bytes"),
        (
            {"type": "string", "minLength": 1},
            "",
            'x: Invalid value: "": x in body should be at least 1 chars long',
        ),
        (
            {"type": "string", "pattern": "^[a-z]+$"},
            "A",
            "x: Invalid value: \"A\": x in body should match '^[a-z]+$'",
        ),
        (
            {"type": "string", "enum": ["Exact", "PathPrefix"]},
            "Regex",
            'x: Unsupported value: "Regex": supported values: "Exact", "PathPrefix"',
        ),
        (
            {"type": "array", "maxItems": 2},
            [1, 2, 3],
            "x: Too many: 3: must have at most 2 items",
        ),
        (
            {"type": "array", "minItems": 1},
            [],
            "x: Invalid value: 0: x in body should have at least 1 items",
        ),
        (
            {"type": "string", "format": "date-time"},
            "yesterday",
            'x: Invalid value: "yesterday": x in body must be of type date-time: "yesterday"',
        ),
    ],
)
def test_each_keyword_fails_with_the_servers_message(
    schema: dict[str, Any], value: Any, expected: str
) -> None:
    assert errors({"x": value}, obj(x=schema)) == [expected]


def test_required_fields_and_nested_paths() -> None:
    backend = {**obj(name=STRING, port={"type": "integer"}), "required": ["name"]}
    schema = {
        **obj(spec=obj(backendRefs={"type": "array", "items": backend})),
        "required": ["spec"],
    }
    assert errors({}, schema) == ["spec: Required value"]
    assert errors({"spec": {"backendRefs": [{"name": "a"}, {"port": 80}]}}, schema) == [
        "spec.backendRefs[1].name: Required value"
    ]


def test_one_of_and_any_of() -> None:
    schema = obj(
        x={
            "type": "object",
            "properties": {"a": STRING, "b": STRING},
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
        }
    )
    assert errors({"x": {"a": "1"}}, schema) == []
    assert errors({"x": {"a": "1", "b": "2"}}, schema) == [
        '<nil>: Invalid value: "": "x" must validate one and only one schema (oneOf). '
        "Found 2 valid alternatives"
    ]
    any_of = obj(x={"type": "object", "anyOf": [{"required": ["a"]}, {"required": ["b"]}]})
    assert errors({"x": {}}, any_of) == [
        '<nil>: Invalid value: "": "x" must validate at least one schema (anyOf)',
        "x.a: Required value",
    ]


def test_list_types_set_and_map_uniqueness() -> None:
    header = {**obj(name=STRING, value=STRING), "required": ["name", "value"]}
    schema = obj(
        set={"type": "array", "x-kubernetes-list-type": "set", "items": STRING},
        headers={
            "type": "array",
            "items": header,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
        atomic={"type": "array", "x-kubernetes-list-type": "atomic", "items": STRING},
    )
    value = {
        "set": ["a", "b", "a", "a"],
        "headers": [{"name": "x", "value": "1"}, {"name": "x", "value": "2"}],
        "atomic": ["a", "a"],
    }
    assert [str(e) for e in openapi.validate_list_types(value, schema)] == [
        'set[2]: Duplicate value: "a"',
        'headers[1]: Duplicate value: map[string]interface {}{"name":"x"}',
    ]


# -- Go formatting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "shown"),
    [
        (1e6, "1e+06"),
        (1000001.0, "1.000001e+06"),
        (100000.0, "100000"),
        (2.5, "2.5"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-123456789.0, "-1.23456789e+08"),
    ],
)
def test_floats_print_as_go_prints_them(number: float, shown: str) -> None:
    assert gofmt.number(number) == shown


def test_values_print_as_go_prints_them() -> None:
    assert gofmt.quote('a"b\\c\n\x01é') == '"a\\"b\\\\c\\n\\x01é"'
    assert gofmt.value(None) == '"null"'
    assert gofmt.value(True) == "true"
    assert gofmt.go_syntax({"name": "x", "b": [1, 2.5, None, True]}) == (
        'map[string]interface {}{"b":[]interface {}{1, 2.5, interface {}(nil), true}, "name":"x"}'
    )
