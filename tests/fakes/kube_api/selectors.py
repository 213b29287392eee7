"""Label and field selectors: parsed with the grammar of apimachinery's ``labels.Parse`` and
``fields.ParseSelector``, and matched as the server matches them.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``,
``!a``, ``a>1``, ``a<1``, joined by commas. ``!=`` and ``notin`` also match objects
without the label. Field selectors: ``f=v``, ``f==v``, ``f!=v``, with ``\\`` escapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from tests.fakes.kube_api.validation import is_label_value, is_qualified_name


class SelectorError(ValueError):
    """A selector that does not parse or names an unsupported field."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    """=, !=, in, notin, exists, !, gt, lt"""
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.operator in {"=", "in"}:
            return present and value in self.values
        if self.operator in {"!=", "notin"}:
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if not present or not re.fullmatch(r"[-+]?\d+", value):
            return False
        bound = int(self.values[0])
        return int(value) > bound if self.operator == "gt" else int(value) < bound


_TOKEN = re.compile(r"\s*(!=|==|=|!|\(|\)|,|<|>|[^\s!=(),<>]+)")
_SYMBOLS = {"!=", "==", "=", "!", "(", ")", ",", "<", ">"}


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            break
        tokens.append(match.group(1))
        position = match.end()
        if not text[position:].strip():
            break
    return tokens


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.index = 0

    def peek(self) -> str | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> str | None:
        token = self.peek()
        self.index += 1
        return token

    def identifier(self, expected: str) -> str:
        token = self.take()
        if token is None or token in _SYMBOLS or token in {"in", "notin"}:
            raise SelectorError(f"found '{token or 'EOS'}', expected: {expected}")
        return token

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        while self.peek() is not None:
            requirements.append(self.requirement())
            token = self.take()
            if token is None:
                break
            if token != ",":
                raise SelectorError(f"found '{token}', expected: ',' or 'end of string'")
            if self.peek() is None:
                raise SelectorError("found 'EOS', expected: identifier or '!'")
        return requirements

    def requirement(self) -> Requirement:
        if self.peek() == "!":
            self.take()
            return _checked(Requirement(self.identifier("identifier"), "!"))
        key = self.identifier("identifier or '!'")
        operator = self.peek()
        if operator is None or operator == ",":
            return _checked(Requirement(key, "exists"))
        self.take()
        if operator in {"=", "==", "!=", ">", "<"}:
            value = self.peek()
            if value is None or value == "," or value in _SYMBOLS:
                value = ""
            else:
                self.take()
            name = {"==": "=", ">": "gt", "<": "lt"}.get(operator, operator)
            return _checked(Requirement(key, name, (value,)))
        if operator in {"in", "notin"}:
            return _checked(Requirement(key, operator, self.value_set()))
        raise SelectorError(f"found '{operator}', expected: in, notin, =, ==, !=, gt, lt")

    def value_set(self) -> tuple[str, ...]:
        if self.take() != "(":
            raise SelectorError("found '" + str(self.tokens[self.index - 1]) + "', expected: '('")
        values: list[str] = []
        expecting_value = True
        while True:
            token = self.take()
            if token is None:
                raise SelectorError("found 'EOS', expected: ')'")
            if token == ")":
                if expecting_value and values:
                    values.append("")
                return tuple(values)
            if token == ",":
                if expecting_value:
                    values.append("")
                expecting_value = True
                continue
            if not expecting_value or token in _SYMBOLS:
                raise SelectorError(f"found '{token}', expected: ',', or ')'")
            values.append(token)
            expecting_value = False


def _checked(requirement: Requirement) -> Requirement:
    problems = [
        f'key: Invalid value: "{requirement.key}": {m}' for m in is_qualified_name(requirement.key)
    ]
    operator, values = requirement.operator, requirement.values
    if operator in {"in", "notin"} and not values:
        problems.append(
            "values: Invalid value: null: for 'in', 'notin' operators, values set can't be empty"
        )
    if operator in {"gt", "lt"} and not re.fullmatch(r"[-+]?\d+", values[0]):
        problems.append(
            f"values[0]: Invalid value: \"{values[0]}\": for 'Gt', 'Lt' operators, "
            "the value must be an integer"
        )
    elif operator not in {"gt", "lt"}:
        for index, value in enumerate(values):
            problems += [
                f'values[{index}][{requirement.key}]: Invalid value: "{value}": {m}'
                for m in is_label_value(value)
            ]
    if problems:
        raise SelectorError("unable to parse requirement: " + ", ".join(problems))
    return requirement


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(r.matches(labels or {}) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def parse_label_selector(text: str | None) -> LabelSelector:
    if not text or not text.strip():
        return LabelSelector()
    return LabelSelector(tuple(_LabelParser(text).parse()))


@dataclass(frozen=True)
class FieldTerm:
    field: str
    equal: bool
    value: str


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[FieldTerm, ...] = ()

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all((fields.get(t.field, "") == t.value) == t.equal for t in self.terms)

    @property
    def empty(self) -> bool:
        return not self.terms


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], "", False
    for char in text:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current + ("\\" if escaped else ""))
    return parts


def _unescape(text: str) -> str:
    out, escaped = "", False
    for char in text:
        if escaped:
            if char not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{char}")
            out += char
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out += char
    if escaped:
        raise SelectorError("invalid field selector: unterminated escape sequence")
    return out


def parse_field_selector(text: str | None, supported: Mapping[str, str]) -> FieldSelector:
    """``supported`` maps each selectable field label to the stored field it reads."""
    if not text or not text.strip():
        return FieldSelector()
    terms: list[FieldTerm] = []
    for part in _split_unescaped(text, ","):
        for operator in ("!=", "==", "="):
            at = _find_unescaped(part, operator)
            if at >= 0:
                label, value = part[:at], part[at + len(operator) :]
                break
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        label = _unescape(label).strip()
        if label not in supported:
            raise SelectorError(f"field label not supported: {label}")
        terms.append(FieldTerm(supported[label], operator != "!=", _unescape(value)))
    return FieldSelector(tuple(terms))


def _find_unescaped(text: str, needle: str) -> int:
    index = 0
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text.startswith(needle, index):
            return index
        index += 1
    return -1
