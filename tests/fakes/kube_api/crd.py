"""Custom resources, served from a CustomResourceDefinition file as the API server serves
them (k8s.io/apiextensions-apiserver ``registry/customresource``).

A custom resource is kept as the JSON it was given, less what its structural schema does
not know (pruned, and reported as unknown fields), with the schema's defaults filled in.
Creating one clears its ``status`` (a subresource) and sets ``metadata.generation`` to 1;
an update keeps the stored status and bumps the generation when anything but metadata
changed; an update of the ``/status`` subresource changes the status alone. Every write
is validated against the schema, the list types and the CEL rules, in the server's
order; the CEL rules are skipped, with the server's notice, once a blocking error (type,
required, enum, length, count) is found.

Only the storage version is served (the others would need conversion).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.fakes.kube_api import kinds, openapi, structural
from tests.fakes.kube_api.cel_rules import CelValidator
from tests.fakes.kube_api.errors import FieldError, invalid_value
from tests.fakes.kube_api.schema import Decoded, DecodeError, decode
from tests.fakes.kube_api.validation import name_is_dns_subdomain, validate_object_meta

CEL_SKIPPED = FieldError(
    "FieldValueInvalid",
    "<nil>",
    'Invalid value: "null": some validation rules were not checked because the object was '
    "invalid; correct the existing errors to complete validation",
)


@dataclass(frozen=True)
class CustomResource:
    """One served version of a CRD, and the strategy of its registry."""

    group: str
    version: str
    kind: str
    list_kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    categories: tuple[str, ...]
    schema: Mapping[str, Any]
    status_subresource: bool
    cel: CelValidator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cel", CelValidator(self.schema))

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    # -- decoding ---------------------------------------------------------------------

    def decode(self, body: Any) -> Decoded:
        """A request body as the server reads it: metadata typed as ObjectMeta, the rest
        pruned to the schema and defaulted."""
        if not isinstance(body, dict):
            raise DecodeError(
                f"json: cannot unmarshal {openapi.json_type(body)} into Go value of type "
                "map[string]interface {}"
            )
        obj = copy.deepcopy(body)
        meta = decode(kinds.OBJECT_META, obj.get("metadata") or {}, "ObjectMeta")
        unknown = [f"metadata.{path}" for path in meta.unknown]
        obj["metadata"] = meta.value
        unknown += structural.prune(obj, self.schema)
        structural.prune_nulls(obj, self.schema)
        structural.apply_defaults(obj, self.schema)
        return Decoded(self.canonical(obj), sorted(unknown))

    def canonical(self, obj: dict[str, Any]) -> dict[str, Any]:
        """``apiVersion`` and ``kind`` first, metadata as ObjectMeta serialises."""
        rest = {k: v for k, v in obj.items() if k not in {"apiVersion", "kind", "metadata"}}
        meta = decode(kinds.OBJECT_META, obj.get("metadata") or {}, "ObjectMeta").value
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": meta, **rest}

    # -- the strategy -------------------------------------------------------------------

    def prepare_create(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.status_subresource:
            obj.pop("status", None)
        obj["metadata"]["generation"] = 1
        return obj

    def prepare_update(self, new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
        if self.status_subresource:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        if _content(new) != _content(old):
            new["metadata"]["generation"] = old["metadata"].get("generation", 0) + 1
        return new

    def prepare_status_update(self, new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
        """A write to the status subresource changes the status and nothing else."""
        result = copy.deepcopy(old)
        if "status" in new:
            result["status"] = new["status"]
        else:
            result.pop("status", None)
        return result

    def validate(self, obj: dict[str, Any]) -> list[FieldError]:
        errors = self._type_meta(obj)
        if errors:
            return errors
        errors = validate_object_meta(obj["metadata"], name_is_dns_subdomain)
        errors += openapi.validate(obj, self.schema)
        errors += openapi.validate_list_types(obj, self.schema)
        return errors + self._cel(errors, obj, None)

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
        errors = self._type_meta(new)
        if errors:
            return errors
        errors = openapi.validate(new, self.schema)
        if not openapi.validate_list_types(old, self.schema):
            errors += openapi.validate_list_types(new, self.schema)
        return errors + self._cel(errors, new, old)

    def _type_meta(self, obj: dict[str, Any]) -> list[FieldError]:
        errors = []
        if obj.get("kind") != self.kind:
            errors.append(invalid_value("kind", obj.get("kind", ""), f"must be {self.kind}"))
        if obj.get("apiVersion") != self.api_version:
            errors.append(
                invalid_value(
                    "apiVersion", obj.get("apiVersion", ""), f"must be {self.api_version}"
                )
            )
        return errors

    def _cel(self, found: list[FieldError], obj: Any, old: Any) -> list[FieldError]:
        if any(error.type in openapi.BLOCKING for error in found):
            return [CEL_SKIPPED]
        return self.cel.validate(obj, old)


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "metadata"}


@functools.cache
def load(path: Path) -> tuple[CustomResource, ...]:
    """The storage version of the CRD in ``path`` (YAML), as a served resource."""
    with path.open("rb") as stream:
        definition = yaml.load(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    spec = definition["spec"]
    if spec.get("scope") != "Namespaced":
        raise ValueError(f"{path}: only namespaced custom resources are served")
    names = spec["names"]
    served = []
    for version in spec["versions"]:
        if not (version.get("served") and version.get("storage")):
            continue
        served.append(
            CustomResource(
                group=spec["group"],
                version=version["name"],
                kind=names["kind"],
                list_kind=names.get("listKind", names["kind"] + "List"),
                plural=names["plural"],
                singular=names.get("singular", names["kind"].lower()),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                schema=version["schema"]["openAPIV3Schema"],
                status_subresource="status" in (version.get("subresources") or {}),
            )
        )
    return tuple(served)
