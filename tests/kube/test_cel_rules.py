"""The CEL side of the fake API server's custom-resource validation: cel-python standing
in for cel-go on the functions, macros and literals the HTTPRoute CRD's rules use, the
escaping of property names, and how a rule's result becomes a field error (message,
``messageExpression``, ``fieldPath``, ``reason``, evaluation errors, ``oldSelf``).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.kube_api import crd
from tests.fakes.kube_api.cel_rules import CelValidator, Rule, escape, program, to_cel
from tests.fakes.kube_api.resources import HTTPROUTES_CRD
from tests.fakes.kube_api.structural import items, properties


def evaluate(expression: str, value: Any, schema: dict[str, Any] | None = None) -> Any:
    return program(expression).evaluate({"self": to_cel(value, schema)})


def crd_rules() -> list[tuple[str, dict[str, Any]]]:
    """Every (schema path, rule) of the served version of the HTTPRoute CRD."""
    (definition,) = crd.load(HTTPROUTES_CRD)
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(schema: Any, path: str) -> None:
        found.extend((path, rule) for rule in schema.get("x-kubernetes-validations") or [])
        for name, sub in properties(schema).items():
            walk(sub, f"{path}.{name}")
        element = items(schema)
        if element is not None:
            walk(element, f"{path}[]")

    walk(definition.schema, "")
    return found


# -- the CRD's rules ----------------------------------------------------------------------


def test_every_rule_of_the_httproute_crd_compiles() -> None:
    rules = crd_rules()
    assert len(rules) == 89
    assert len({(rule["rule"], rule["message"]) for _, rule in rules}) == 50
    assert len({rule["rule"] for _, rule in rules}) == 48
    for _, rule in rules:
        program(rule["rule"])
    # none uses oldSelf, messageExpression, fieldPath or reason: all are plain rules
    assert not [r for _, r in rules if Rule.of(r).uses_old_self]
    assert {key for _, r in rules for key in r} == {"rule", "message"}


# -- cel-python against cel-go, for what those rules call ---------------------------------


@pytest.mark.parametrize(
    ("expression", "value", "expected"),
    [
        ("has(self.a)", {"a": 1}, True),
        ("has(self.a)", {"b": 1}, False),
        ("self.all(x, x > 0)", [1, 2], True),
        ("self.all(x, x > 1)", [1, 2], False),
        ("self.exists(x, x == 2)", [1, 2], True),
        ("self.exists_one(x, x > 0)", [1, 2], False),
        ("self.exists_one(x, x > 1)", [1, 2], True),
        ("self.filter(x, x > 1).size() <= 1", [1, 2, 3], False),
        ("size(self) == 3 && self.size() == 3", [1, 2, 3], True),
        ("size(self) == 2", "hé", True),
        ("'*' in self", ["a", "*"], True),
        ("self in ['Exact','PathPrefix']", "Exact", True),
        ("self.startsWith('/')", "/a", True),
        ("self.endsWith('/..')", "/a/..", True),
        ("self.contains('%2F')", "/a%2Fb", True),
        ("self.matches('b+')", "abbc", True),  # RE2 search, not a full match
        ("self.matches('^b+$')", "abbc", False),
        (
            'self.matches(r"""^(?:[-A-Za-z0-9/._~!$&\'()*+,;=:@]|[%][0-9a-fA-F]{2})+$""")',
            "/a%2f",
            True,
        ),
        (
            'self.matches(r"""^(?:[-A-Za-z0-9/._~!$&\'()*+,;=:@]|[%][0-9a-fA-F]{2})+$""")',
            "/a b",
            False,
        ),
        ("self.size() > 1 ? self[1] : 0", [5, 7], 7),
        ("self.size() > 1 ? self[1] : 0", [5], 0),
        ("self.a == 1 || true", {}, True),  # an error on one side of || gives way to true
        ("self.a == 1 && false", {}, False),
    ],
)
def test_cel_python_evaluates_like_cel_go(expression: str, value: Any, expected: Any) -> None:
    assert evaluate(expression, value) == expected


@pytest.mark.parametrize(
    ("longer", "shorter"),
    [("1h", "59m"), ("1h30m", "1h"), ("1s", "500ms"), ("10000h", "9999h59m59s"), ("1m", "0s")],
)
def test_duration_parses_gateway_api_timeouts_as_go_does(longer: str, shorter: str) -> None:
    """``HTTPRouteTimeouts`` are Go durations (``^([0-9]{1,5}(h|m|s|ms)){1,4}$``)."""
    assert evaluate(f"duration('{longer}') > duration(self)", shorter)
    assert not evaluate(f"duration('{shorter}') > duration(self)", longer)
    assert evaluate("duration(self) == duration('0s')", "0s")


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("group", "group"),
        ("namespace", "__namespace__"),
        ("in", "__in__"),
        ("x-kubernetes", "x__dash__kubernetes"),
        ("a.b/c", "a__dot__b__slash__c"),
        ("a__b", "a__underscores__b"),
        ("9lives", None),
        ("a b", None),
    ],
)
def test_property_names_are_escaped_as_kubernetes_escapes_them(
    name: str, escaped: str | None
) -> None:
    assert escape(name) == escaped


def test_an_object_is_seen_through_its_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "namespace": {"type": "string"},
            "when": {"type": "string", "format": "date-time"},
        },
    }
    value = {"namespace": "a", "when": "2026-12-02T16:04:21Z", "pruned": 1}
    assert evaluate("self.__namespace__ == 'a'", value, schema)
    assert evaluate("self.when < timestamp('2027-01-01T00:00:00Z')", value, schema)
    assert not evaluate("has(self.pruned)", value, schema)


# -- rule results as field errors ---------------------------------------------------------


def node(*rules: dict[str, Any], **schema: Any) -> dict[str, Any]:
    return {"type": "object", "x-kubernetes-validations": list(rules), **schema}


def root(spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"spec": spec}}


def messages(schema: dict[str, Any], value: Any, old: Any = None) -> list[str]:
    return [str(error) for error in CelValidator(schema).validate(value, old)]


def test_a_false_rule_reports_its_message_at_its_node() -> None:
    schema = root(node({"rule": "self.a < self.b", "message": "a must be below b"}))
    assert messages(schema, {"spec": {"a": 2, "b": 1}}) == [
        'spec: Invalid value: "object": a must be below b'
    ]
    assert messages(schema, {"spec": {"a": 1, "b": 2}}) == []


def test_a_rule_without_message_quotes_itself() -> None:
    schema = root({"type": "array", "x-kubernetes-validations": [{"rule": "self.size() < 2"}]})
    assert messages(schema, {"spec": [1, 2]}) == [
        'spec: Invalid value: "array": failed rule: self.size() < 2'
    ]


def test_rules_apply_to_every_element_parents_first() -> None:
    element = node({"rule": "self.n > 0", "message": "n must be positive"})
    schema = root(
        {
            "type": "array",
            "items": element,
            "x-kubernetes-validations": [{"rule": "self.size() < 2", "message": "one at most"}],
        }
    )
    assert messages(schema, {"spec": [{"n": 0}, {"n": 1}, {"n": -1}]}) == [
        'spec: Invalid value: "array": one at most',
        'spec[0]: Invalid value: "object": n must be positive',
        'spec[2]: Invalid value: "object": n must be positive',
    ]


def test_message_expression_field_path_and_reason() -> None:
    schema = root(
        node(
            {
                "rule": "self.a < 3",
                "messageExpression": "'a is ' + string(self.a)",
                "fieldPath": ".a",
                "reason": "FieldValueForbidden",
            },
            {"rule": "has(self.b)", "message": "b is needed", "reason": "FieldValueRequired"},
            properties={"a": {"type": "integer"}, "b": {"type": "integer"}},
        )
    )
    assert messages(schema, {"spec": {"a": 5}}) == [
        "spec.a: Forbidden: a is 5",
        "spec: Required value: b is needed",
    ]


def test_a_failing_message_expression_falls_back_to_the_message() -> None:
    schema = root(node({"rule": "false", "message": "plain", "messageExpression": "self.missing"}))
    assert messages(schema, {"spec": {}}) == ['spec: Invalid value: "object": plain']


def test_an_evaluation_error_is_reported_as_the_server_words_it() -> None:
    schema = root(node({"rule": "self.absent == 1", "message": "needs absent"}))
    assert messages(schema, {"spec": {}}) == [
        'spec: Invalid value: "object": no such key: absent evaluating rule: needs absent'
    ]


def test_a_rule_that_does_not_compile_is_reported() -> None:
    schema = root(node({"rule": "self.a ==", "message": "broken"}))
    (message,) = messages(schema, {"spec": {"a": 1}})
    assert message.startswith('spec: Invalid value: "object": rule compile error: ')


def test_null_values_are_not_checked() -> None:
    schema = root(node({"rule": "false"}, nullable=True))
    assert messages(schema, {"spec": None}) == []


# -- transition rules ---------------------------------------------------------------------


IMMUTABLE = {"rule": "self == oldSelf", "message": "value is immutable"}


def test_a_transition_rule_runs_on_update_only() -> None:
    schema = root(
        node(properties={"id": {"type": "string", "x-kubernetes-validations": [IMMUTABLE]}})
    )
    assert messages(schema, {"spec": {"id": "a"}}) == []
    assert messages(schema, {"spec": {"id": "b"}}, {"spec": {"id": "a"}}) == [
        'spec.id: Invalid value: "string": value is immutable'
    ]
    assert messages(schema, {"spec": {"id": "a"}}, {"spec": {"id": "a"}}) == []
    # a field the old object did not have has no old value: the rule does not run
    assert messages(schema, {"spec": {"id": "b"}}, {"spec": {}}) == []


def test_elements_of_a_map_list_meet_their_old_selves_by_key() -> None:
    element = node(
        {"rule": "self.port == oldSelf.port", "message": "port is immutable"},
        properties={"name": {"type": "string"}, "port": {"type": "integer"}},
    )
    schema = root(
        {
            "type": "array",
            "items": element,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        }
    )
    old = {"spec": [{"name": "a", "port": 1}, {"name": "b", "port": 2}]}
    reordered = {"spec": [{"name": "b", "port": 2}, {"name": "a", "port": 1}, {"name": "c"}]}
    assert messages(schema, reordered, old) == []
    changed = {"spec": [{"name": "b", "port": 3}]}
    assert messages(schema, changed, old) == ['spec[0]: Invalid value: "object": port is immutable']


def test_elements_of_other_lists_have_no_old_self() -> None:
    element = node(IMMUTABLE, properties={"n": {"type": "integer"}})
    schema = root({"type": "array", "items": element, "x-kubernetes-list-type": "atomic"})
    assert messages(schema, {"spec": [{"n": 2}]}, {"spec": [{"n": 1}]}) == []
