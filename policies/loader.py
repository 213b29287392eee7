"""Load policy files: YAML → `Policy`, with every problem located by file, line and column.

The YAML is composed into nodes (which keep their positions) rather than loaded straight
into Python objects, so that each validation error can point at the key or value it is
about, and so that duplicate keys, which PyYAML would silently accept, can be refused.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from policies.durations import DurationMarker, format_duration
from policies.errors import (
    DOCUMENT,
    FieldPath,
    PolicyError,
    PolicyIssue,
    RuleError,
    format_path,
)
from policies.limits import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_VALUES,
    BoundedLoader,
    LimitError,
    depth_exceeded,
    file_too_large,
    values_exceeded,
)
from policies.model import PATTERN_MESSAGES, Policy

__all__ = ["load_policy", "load_policy_bytes", "load_policy_text", "read_policy_file"]

_Position = tuple[int, int]
"""1-based line and column."""

_START: _Position = (1, 1)
_MERGE_TAG = "tag:yaml.org,2002:merge"


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy file at `path`.

    Raises PolicyError listing every problem found, sorted by line.
    """
    return load_policy_bytes(read_policy_file(path), str(path))


def read_policy_file(path: str | Path) -> bytes:
    """The bytes of the policy file at `path`: at most one more than the size limit, so
    that an oversized file is refused without being read whole.

    Raises PolicyError when the file cannot be read."""
    filename = str(path)
    try:
        with Path(path).open("rb") as file:
            return file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise _fail(filename, "file not found") from None
    except IsADirectoryError:
        raise _fail(filename, "is a directory, not a policy file") from None
    except OSError as error:
        raise _fail(filename, f"cannot read file: {error.strerror or error}") from None


def load_policy_bytes(data: bytes, filename: str) -> Policy:
    """Validate the policy in `data` (UTF-8); `filename` is only used in messages.

    Raises PolicyError listing every problem found, sorted by line.
    """
    if len(data) > MAX_FILE_BYTES:
        raise _fail(filename, file_too_large())
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        line = data.count(b"\n", 0, error.start) + 1
        column = len(data[line_start : error.start].decode("utf-8", errors="replace")) + 1
        byte = data[error.start]
        raise _fail(
            filename, f"not valid UTF-8 (byte 0x{byte:02x}); save the file as UTF-8", line, column
        ) from None
    return load_policy_text(text, filename)


def load_policy_text(text: str, filename: str) -> Policy:
    """Validate the policy in `text`; `filename` is only used in messages.

    Raises PolicyError listing every problem found, sorted by line.
    """
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8")) > MAX_FILE_BYTES:
        raise _fail(filename, file_too_large())
    try:
        document = _compose(text, filename)
    except RecursionError:  # the limits keep within the stack; this is the last guard
        raise _fail(filename, depth_exceeded()) from None
    issues = list(document.issues)
    policy: Policy | None = None
    try:
        policy = Policy.model_validate(
            document.data,
            by_alias=True,
            by_name=False,
            context={"durations": "strings"},
        )
    except ValidationError as error:
        issues.extend(_validation_issues(error, document, filename))
    if issues or policy is None:
        raise PolicyError(_sorted(issues))
    return policy


def _fail(filename: str, message: str, line: int = 1, column: int = 1) -> PolicyError:
    return PolicyError([PolicyIssue(filename, line, column, DOCUMENT, message)])


def _sorted(issues: Iterable[PolicyIssue]) -> list[PolicyIssue]:
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda issue: (issue.line, issue.column))


# --------------------------------------------------------------------------- YAML


@dataclass
class _Document:
    """Plain data of a YAML document, with the positions of its keys and values."""

    filename: str
    data: Any = None
    values: dict[FieldPath, _Position] = field(default_factory=dict)
    keys: dict[FieldPath, _Position] = field(default_factory=dict)
    issues: list[PolicyIssue] = field(default_factory=list)

    def issue(self, path: FieldPath, position: _Position, message: str) -> None:
        line, column = position
        self.issues.append(PolicyIssue(self.filename, line, column, format_path(path), message))

    def value_position(self, path: FieldPath) -> _Position:
        """Position of the value at `path`, or of its closest ancestor present in the file."""
        while path and path not in self.values:
            path = path[:-1]
        return self.values.get(path, _START)


def _position(node: Node) -> _Position:
    mark = node.start_mark
    return (mark.line + 1, mark.column + 1)


def _compose(text: str, filename: str) -> _Document:
    document = _Document(filename)
    try:
        loader = BoundedLoader(text)
    except yaml.YAMLError as error:  # the reader refuses control characters up front
        raise _reader_error(error, text, filename) from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as error:
            raise _syntax_error(error, filename) from None
        except yaml.YAMLError as error:
            raise _reader_error(error, text, filename) from None
        except LimitError as error:
            raise _limit_error(error, filename) from None
        if root is None:
            raise _fail(filename, "empty file: expected a release policy (apiVersion, kind, ...)")
        if not isinstance(root, MappingNode):
            what = "a list" if isinstance(root, SequenceNode) else "a single value"
            line, column = _position(root)
            raise _fail(
                filename,
                f"a policy must be a mapping of fields (apiVersion, kind, ...), not {what}",
                line,
                column,
            )
        try:
            document.data = _Builder(loader, document).build(root, (), frozenset())
        except LimitError as error:
            raise _limit_error(error, filename) from None
    finally:
        loader.dispose()
    return document


def _limit_error(error: LimitError, filename: str) -> PolicyError:
    mark = error.mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else _START
    return _fail(filename, error.message, line, column)


def _syntax_error(error: yaml.MarkedYAMLError, filename: str) -> PolicyError:
    if error.context == "expected a single document in the stream":
        mark = error.problem_mark or error.context_mark
        message = "several YAML documents in one file; a policy file holds one release"
    else:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "invalid YAML"
        message = f"YAML syntax error: {problem}"
        if error.context and error.problem:
            message += f" ({error.context}"
            if error.context_mark is not None and error.context_mark is not mark:
                message += f" at line {error.context_mark.line + 1}"
            message += ")"
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else _START
    return _fail(filename, message, line, column)


def _reader_error(error: yaml.YAMLError, text: str, filename: str) -> PolicyError:
    offset = getattr(error, "position", 0)
    if not isinstance(offset, int):
        offset = 0
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    character = getattr(error, "character", None)
    if isinstance(character, int):
        message = f"character U+{character:04X} is not allowed in YAML"
    else:
        message = f"YAML error: {getattr(error, 'reason', None) or error}"
    return _fail(filename, message, line, column)


class _Builder:
    """Turns composed nodes into dicts, lists and scalars, recording every position.

    An alias is expanded into a copy of what its anchor holds, so the values and the
    depth are counted here, as they grow, against the limits of a policy file."""

    def __init__(self, loader: yaml.SafeLoader, document: _Document) -> None:
        self.loader = loader
        self.document = document
        self.values = 0

    def build(self, node: Node, path: FieldPath, active: frozenset[int]) -> Any:
        document = self.document
        self._count(node)
        document.values[path] = _position(node)
        if id(node) in active:
            document.issue(path, _position(node), "an alias may not refer to itself")
            return None
        if isinstance(node, MappingNode | SequenceNode) and len(path) >= MAX_DEPTH:
            raise LimitError(node.start_mark, depth_exceeded())
        if isinstance(node, MappingNode):
            return self._mapping(node, path, active | {id(node)})
        if isinstance(node, SequenceNode):
            inner = active | {id(node)}
            return [
                self.build(item, (*path, index), inner) for index, item in enumerate(node.value)
            ]
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as error:
            document.issue(path, _position(node), error.problem or "cannot read this value")
        except (ValueError, OverflowError) as error:  # e.g. !!int "nope"
            document.issue(path, _position(node), f"cannot read this value: {error}")
        return None

    def _count(self, node: Node) -> None:
        self.values += 1
        if self.values > MAX_VALUES:
            raise LimitError(node.start_mark, values_exceeded())

    def _mapping(self, node: MappingNode, path: FieldPath, active: frozenset[int]) -> Any:
        document = self.document
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, ScalarNode):
                document.issue(path, _position(key_node), "keys must be plain strings")
                continue
            key = key_node.value
            line, column = _position(key_node)
            if key in first_line:
                document.issue(
                    (*path, key),
                    (line, column),
                    f"duplicate key '{key}' (first set on line {first_line[key]})",
                )
            else:
                first_line[key] = line
        try:
            self.loader.flatten_mapping(node)
        except yaml.MarkedYAMLError as error:
            document.issue(path, _position(node), error.problem or "invalid merge key")
            return {}
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                continue
            key = key_node.value
            child = (*path, key)
            self._count(key_node)
            document.keys[child] = _position(key_node)
            result[key] = self.build(value_node, child, active)
        return result


# ----------------------------------------------------------------- validation errors


def _validation_issues(
    error: ValidationError, document: _Document, filename: str
) -> list[PolicyIssue]:
    issues: list[PolicyIssue] = []

    def add(path: FieldPath, position: _Position, message: str) -> None:
        line, column = position
        issues.append(PolicyIssue(filename, line, column, format_path(path), message))

    for details in error.errors(include_url=False):
        loc: FieldPath = tuple(details["loc"])
        kind = details["type"]
        cause = details.get("ctx", {}).get("error")
        if kind == "value_error" and isinstance(cause, RuleError):
            for relative, message in cause.violations:
                path = (*loc, *relative)
                add(path, document.value_position(path), message)
        elif kind == "too_short" and _long_enough(details):
            continue  # pydantic counts only the items that validated; those have their issues
        elif kind == "missing":
            add(loc, document.value_position(loc[:-1]), "required field missing")
        elif kind == "extra_forbidden":
            position = document.keys.get(loc) or document.value_position(loc)
            add(loc, position, _unknown_field(loc))
        else:
            add(loc, document.value_position(loc), _message(details, loc))
    return issues


def _long_enough(details: ErrorDetails) -> bool:
    given = details.get("input")
    least = details.get("ctx", {}).get("min_length", 0)
    return isinstance(given, list | tuple) and len(given) >= least


def _unknown_field(loc: FieldPath) -> str:
    model = _model_at(loc[:-1])
    key = loc[-1] if loc else ""
    if model is None or not isinstance(key, str):
        return "unknown field"
    allowed = [_alias(name, info) for name, info in model.model_fields.items()]
    squashed = {_squash(alias): alias for alias in allowed}
    suggestion = squashed.get(_squash(key))
    if suggestion is None:
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        suggestion = close[0] if close else None
    if suggestion is not None:
        return f"unknown field; did you mean '{suggestion}'?"
    return f"unknown field; expected one of: {', '.join(allowed)}"


def _squash(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _alias(name: str, info: FieldInfo) -> str:
    return info.validation_alias if isinstance(info.validation_alias, str) else info.alias or name


_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")


_FIXED_MESSAGES: Final = {
    **dict.fromkeys(("float_type", "float_parsing"), "must be a number"),
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "must be an integer"),
    **dict.fromkeys(("bool_type", "bool_parsing"), "must be true or false"),
    "string_type": "must be a string",
    "finite_number": "must be a finite number",
    **dict.fromkeys(("model_type", "model_attributes_type", "dict_type"), "must be a mapping"),
    **dict.fromkeys(("tuple_type", "list_type", "iterable_type"), "must be a list"),
}
"""pydantic's error types whose message says the same whatever the value."""

_BOUNDS: Final = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}
"""pydantic's error types of a bound: the symbol and the context key of the bound."""


def _message(details: ErrorDetails, loc: FieldPath) -> str:
    """pydantic's error, said the way policy authors write the file."""
    kind = details["type"]
    context: dict[str, Any] = dict(details.get("ctx", {}))
    fixed = _FIXED_MESSAGES.get(kind)
    if fixed is not None:
        return fixed
    if kind in _BOUNDS:
        symbol, key = _BOUNDS[kind]
        show = format_duration if _is_duration(loc) else _number
        return f"must be {symbol} {show(context[key])}"
    if kind in ("string_too_short", "too_short", "string_too_long", "too_long"):
        return _length_message(kind, context)
    if kind == "string_pattern_mismatch":
        pattern = str(context.get("pattern", ""))
        return PATTERN_MESSAGES.get(pattern, f"must match {pattern}")
    if kind in ("literal_error", "enum"):
        return _choice_message(context)
    message = details["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _length_message(kind: str, context: dict[str, Any]) -> str:
    """Too short or too long, in characters (strings) or items (lists)."""
    unit = "characters" if kind.startswith("string_") else "items"
    if kind.endswith("too_long"):
        return f"must have at most {context.get('max_length')} {unit}"
    least = context.get("min_length", 1)
    if least == 1:
        return "must not be empty"
    return f"must have at least {least} {unit}"


def _choice_message(context: dict[str, Any]) -> str:
    """One of a fixed set of values (a literal or an enum)."""
    choices = _QUOTED.findall(str(context.get("expected", "")))
    if len(choices) == 1:
        return f"must be {choices[0]}"
    return f"must be one of: {', '.join(choices)}"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ------------------------------------------------------------------ model lookups


def _strip(annotation: Any) -> Any:
    """Remove Annotated and Optional wrappers."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field(model: type[BaseModel], key: str) -> FieldInfo | None:
    for name, info in model.model_fields.items():
        if key in (name, _alias(name, info)):
            return info
    return None


def _model_at(path: FieldPath) -> type[BaseModel] | None:
    """The model class that validates the mapping at `path`, if any."""
    annotation: Any = Policy
    for part in path:
        annotation = _strip(annotation)
        if isinstance(part, int):
            if get_origin(annotation) is not tuple:
                return None
            annotation = get_args(annotation)[0]
            continue
        if not _is_model(annotation):
            return None
        info = _field(annotation, part)
        if info is None:
            return None
        annotation = info.annotation
    annotation = _strip(annotation)
    return annotation if _is_model(annotation) else None


def _is_duration(loc: FieldPath) -> bool:
    if not loc or not isinstance(loc[-1], str):
        return False
    model = _model_at(loc[:-1])
    info = _field(model, loc[-1]) if model is not None else None
    if info is None:
        return False
    return _has_duration_marker(info.metadata) or _annotation_has_marker(info.annotation)


def _has_duration_marker(metadata: Iterable[Any]) -> bool:
    return any(isinstance(item, DurationMarker) for item in metadata)


def _annotation_has_marker(annotation: Any) -> bool:
    if get_origin(annotation) is Annotated and _has_duration_marker(annotation.__metadata__):
        return True
    return any(_annotation_has_marker(arg) for arg in get_args(annotation))
