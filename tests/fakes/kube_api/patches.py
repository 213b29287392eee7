"""The three non-apply patch types: JSON merge patch (RFC 7386), JSON patch (RFC 6902)
and strategic merge patch.

For ConfigMaps, Leases and Events a strategic merge patch is a merge patch, except for
the two lists of ObjectMeta that carry a patch strategy: ``finalizers`` (merged as a
set) and ``ownerReferences`` (merged by ``uid``), and the ``$patch``, ``$retainKeys``,
``$deleteFromPrimitiveList`` and ``$setElementOrder`` directives.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch that cannot be applied to the document (422 on the server)."""


class PatchFormatError(ValueError):
    """A patch that cannot be read at all (400 on the server)."""


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# -- JSON patch ---------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise PatchError("path must be a string")
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer must be empty or start with a '/': {path}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if allow_end and token == "-":
        return len(container)
    if not token.isdigit() or (token.startswith("0") and token != "0"):
        raise PatchError(f"invalid array index: {token}")
    index = int(token)
    if index > len(container) or (index == len(container) and not allow_end):
        raise PatchError(f"array index out of bounds: {index}")
    return index


def _parent(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list):
            node = node[_index(node, part, allow_end=False)]
        else:
            raise PatchError(f"doc is missing path: /{'/'.join(parts)}")
    return node


def _get(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return doc
    parent = _parent(doc, parts)
    key = parts[-1]
    if isinstance(parent, dict):
        if key not in parent:
            raise PatchError(f"doc is missing key: /{'/'.join(parts)}")
        return parent[key]
    if isinstance(parent, list):
        return parent[_index(parent, key, allow_end=False)]
    raise PatchError(f"doc is missing path: /{'/'.join(parts)}")


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _parent(doc, parts)
    key = parts[-1]
    if isinstance(parent, dict):
        parent[key] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, key, allow_end=True), value)
    else:
        raise PatchError("add operation does not apply: doc is missing path")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise PatchError("remove operation does not apply: cannot remove the root")
    parent = _parent(doc, parts)
    key = parts[-1]
    if isinstance(parent, dict):
        if key not in parent:
            raise PatchError(f"remove operation does not apply: doc is missing key: {key}")
        del parent[key]
    elif isinstance(parent, list):
        del parent[_index(parent, key, allow_end=False)]
    else:
        raise PatchError("remove operation does not apply: doc is missing path")
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 patch; ``PatchFormatError`` if it is not a list of operations."""
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise PatchFormatError(
            "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
            if isinstance(operations, dict)
            else "json: cannot unmarshal into Go value of type jsonpatch.Patch"
        )
    result = copy.deepcopy(doc)
    for operation in operations:
        kind = operation.get("op")
        parts = _pointer(operation.get("path"))
        if kind == "add":
            result = _add(result, parts, copy.deepcopy(_value(operation)))
        elif kind == "remove":
            result = _remove(result, parts)
        elif kind == "replace":
            _get(result, parts)
            result = _add(_remove(result, parts), parts, copy.deepcopy(_value(operation)))
        elif kind in {"move", "copy"}:
            source = _pointer(operation.get("from"))
            value = copy.deepcopy(_get(result, source))
            if kind == "move":
                result = _remove(result, source)
            result = _add(result, parts, value)
        elif kind == "test":
            if _get(result, parts) != _value(operation):
                raise PatchError(f"testing value {operation.get('path')} failed: test failed")
        else:
            raise PatchError(f"Unexpected kind: {kind}")
    return result


def _value(operation: dict[str, Any]) -> Any:
    if "value" not in operation:
        raise PatchError(f"missing value for {operation.get('op')} operation")
    return operation["value"]


# -- strategic merge patch ----------------------------------------------------------------

_MERGE_KEYS = {("metadata", "ownerReferences"): "uid"}
_SET_LISTS = {("metadata", "finalizers")}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        raise PatchFormatError("unable to find api field in struct for the patch")
    return _strategic(target, patch, ())


def _strategic(target: Any, patch: dict[str, Any], path: tuple[str, ...]) -> Any:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    body = {k: v for k, v in patch.items() if k != "$patch"}
    if directive == "replace":
        return {k: v for k, v in body.items() if not k.startswith("$")}
    if directive is not None:
        raise PatchFormatError(f"Unknown patch type: {directive}")
    result = dict(target) if isinstance(target, dict) else {}
    retain = body.pop("$retainKeys", None)
    for key, value in body.items():
        if key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [item for item in result.get(name) or [] if item not in value]
            continue
        where = (*path, key)
        if value is None:
            result.pop(key, None)
        elif where in _SET_LISTS and isinstance(value, list):
            existing = list(result.get(key) or [])
            result[key] = existing + [item for item in value if item not in existing]
        elif where in _MERGE_KEYS and isinstance(value, list):
            result[key] = _merge_by_key(result.get(key) or [], value, _MERGE_KEYS[where])
        elif isinstance(value, dict):
            merged = _strategic(result.get(key), value, where)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_by_key(existing: list[Any], items: list[Any], key: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in existing]
    for item in items:
        if not isinstance(item, dict):
            raise PatchFormatError("list items with a merge key must be objects")
        at = next((i for i, old in enumerate(merged) if old.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if at is not None:
                del merged[at]
        elif at is None:
            merged.append({k: v for k, v in item.items() if not k.startswith("$")})
        else:
            merged[at] = _strategic(merged[at], item, ())
    return merged
