"""Typed decoding of request bodies, as Go's JSON decoder does it for the server's types.

A body is checked against a field schema: a value of the wrong JSON type fails with Go's
``json: cannot unmarshal ...`` message, time stamps are parsed and rewritten in the
server's form, base64 ``[]byte`` values are checked, and unknown fields are dropped and
reported (the server warns about them, or refuses them under ``fieldValidation=Strict``).
The result is the object as the server would serialise it again: ``omitempty`` fields
with zero values left out, non-pointer structs and time stamps always present.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tests.fakes.kube_api.timefmt import TimeParseError, normalize_micro_time, normalize_time

Presence = Literal["omitempty", "pointer", "always"]
"""How a field is written: left out when zero, left out only when null, or always."""

INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class Scalar:
    go_type: str
    """string, int32, int64, bool, []byte, Time, MicroTime, or RawJSON (kept as given)."""


@dataclass(frozen=True)
class MapOf:
    value: FieldType


@dataclass(frozen=True)
class ListOf:
    item: FieldType


@dataclass(frozen=True)
class Struct:
    go_name: str
    fields: Mapping[str, Field]


@dataclass(frozen=True)
class Field:
    type: FieldType
    presence: Presence = "omitempty"


FieldType = Scalar | MapOf | ListOf | Struct

STRING = Scalar("string")
INT32 = Scalar("int32")
INT64 = Scalar("int64")
BOOL = Scalar("bool")
BYTES = Scalar("[]byte")
TIME = Scalar("Time")
MICRO_TIME = Scalar("MicroTime")
RAW = Scalar("RawJSON")


class DecodeError(ValueError):
    """The body does not fit the type; the message is the Go decoder's."""


@dataclass
class Decoded:
    value: dict[str, Any]
    unknown: list[str] = field(default_factory=list)
    """Paths of the fields dropped because the type has no such field."""


_OMIT = object()


def go_type_name(kind: FieldType) -> str:
    if isinstance(kind, Scalar):
        return {"Time": "v1.Time", "MicroTime": "v1.MicroTime", "[]byte": "[]uint8"}.get(
            kind.go_type, kind.go_type
        )
    if isinstance(kind, MapOf):
        return f"map[string]{go_type_name(kind.value)}"
    if isinstance(kind, ListOf):
        return f"[]{go_type_name(kind.item)}"
    return kind.go_name


def _json_type(value: Any, into_number: bool) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}" if into_number else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _Decoder:
    def __init__(self, top: str) -> None:
        self.top = top
        self.unknown: list[str] = []

    def mismatch(self, value: Any, kind: FieldType, go_path: str) -> DecodeError:
        into_number = isinstance(kind, Scalar) and kind.go_type in INT_RANGES
        return DecodeError(
            f"json: cannot unmarshal {_json_type(value, into_number)} into Go struct field "
            f"{go_path} of type {go_type_name(kind)}"
        )

    def value(self, kind: FieldType, raw: Any, go_path: str, path: str) -> Any:
        if isinstance(kind, Struct):
            return self.struct(kind, raw, go_path, path)
        if isinstance(kind, MapOf):
            if not isinstance(raw, dict):
                raise self.mismatch(raw, kind, go_path)
            return {
                key: (
                    self.zero(kind.value)
                    if item is None
                    else self.value(kind.value, item, go_path, f"{path}.{key}")
                )
                for key, item in raw.items()
            }
        if isinstance(kind, ListOf):
            if not isinstance(raw, list):
                raise self.mismatch(raw, kind, go_path)
            return [
                self.zero(kind.item)
                if item is None
                else self.value(kind.item, item, go_path, f"{path}[{index}]")
                for index, item in enumerate(raw)
            ]
        return self.scalar(kind, raw, go_path)

    def scalar(self, kind: Scalar, raw: Any, go_path: str) -> Any:
        go_type = kind.go_type
        if go_type == "RawJSON":
            return raw
        if go_type == "bool":
            if not isinstance(raw, bool):
                raise self.mismatch(raw, kind, go_path)
            return raw
        if go_type in INT_RANGES:
            low, high = INT_RANGES[go_type]
            if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
                raise self.mismatch(raw, kind, go_path)
            return raw
        if not isinstance(raw, str):
            raise self.mismatch(raw, kind, go_path)
        if go_type == "[]byte":
            return _canonical_base64(raw)
        try:
            if go_type == "Time":
                return normalize_time(raw)
            if go_type == "MicroTime":
                return normalize_micro_time(raw)
        except TimeParseError as error:
            raise DecodeError(str(error)) from error
        return raw

    def struct(self, kind: Struct, raw: Any, go_path: str, path: str) -> dict[str, Any]:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise self.mismatch(raw, kind, go_path)
        for key in raw:
            if key not in kind.fields:
                self.unknown.append(f"{path}.{key}" if path else key)
        out: dict[str, Any] = {}
        for name, spec in kind.fields.items():
            item = self.field(spec, raw.get(name), f"{go_path}.{name}", _join(path, name))
            if item is not _OMIT:
                out[name] = item
        return out

    def field(self, spec: Field, raw: Any, go_path: str, path: str) -> Any:
        if raw is None:
            if spec.presence == "pointer":
                return _OMIT
            value = self.zero(spec.type)
        else:
            value = self.value(spec.type, raw, go_path, path)
        if spec.presence == "omitempty" and _omittable(spec.type) and _is_empty(value):
            return _OMIT
        return value

    def zero(self, kind: FieldType) -> Any:
        if isinstance(kind, Struct):
            return self.struct(kind, {}, kind.go_name, "")
        if isinstance(kind, MapOf | ListOf):
            return None
        return {"string": "", "int32": 0, "int64": 0, "bool": False, "[]byte": ""}.get(kind.go_type)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _omittable(kind: FieldType) -> bool:
    # Go's omitempty never leaves out a struct, and Time and MicroTime are structs.
    return not isinstance(kind, Struct) and not (
        isinstance(kind, Scalar) and kind.go_type in {"Time", "MicroTime"}
    )


def _is_empty(value: Any) -> bool:
    if isinstance(value, dict | list | str):
        return not value
    return value is None or value == 0


_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _canonical_base64(text: str) -> str:
    stripped = text.replace("\r", "").replace("\n", "")
    try:
        if len(stripped) % 4 or not _BASE64.fullmatch(stripped):
            raise binascii.Error
        data = base64.b64decode(stripped, validate=True)
    except binascii.Error as error:
        bad = next(
            (i for i, c in enumerate(stripped) if not re.fullmatch(r"[A-Za-z0-9+/=]", c)),
            len(stripped) - len(stripped) % 4,
        )
        raise DecodeError(f"illegal base64 data at input byte {bad}") from error
    return base64.b64encode(data).decode("ascii")


def decode(kind: Struct, body: Any, top: str) -> Decoded:
    """``body`` as the server decodes it into ``kind`` (``top`` names it in messages)."""
    decoder = _Decoder(top)
    value = decoder.struct(kind, body, top, "")
    return Decoded(value, decoder.unknown)


def canonical(kind: Struct, obj: dict[str, Any], top: str) -> dict[str, Any]:
    """An object the server built itself, written as it would serialise it."""
    return decode(kind, obj, top).value
