"""The served resources: what each is called, how it is stored, validated and selected,
and the update policy of its registry strategy.

``configmaps`` and ``events`` (core/v1), ``leases`` (coordination.k8s.io/v1), and
``events`` again in events.k8s.io/v1: a second view of the core events, converted field
by field, with the stricter validation that API version applies. Custom resources come
from CRD files (``crd``): the Gateway API's ``httproutes`` (gateway.networking.k8s.io/v1),
when its CRD is found in the shared reference folder beside the repository.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes.kube_api import crd, kinds, validation
from tests.fakes.kube_api.errors import FieldError
from tests.fakes.kube_api.schema import Decoded, Struct, canonical, decode

Validate = Callable[[dict[str, Any]], list[FieldError]]
ValidateUpdate = Callable[[dict[str, Any], dict[str, Any]], list[FieldError]]
Convert = Callable[[dict[str, Any]], dict[str, Any]]
Prepare = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]

META_FIELDS = {"metadata.name": "metadata.name", "metadata.namespace": "metadata.namespace"}
CORE_EVENT_FIELDS = {
    **META_FIELDS,
    **{
        f"involvedObject.{name}": f"involvedObject.{name}"
        for name in (
            "kind",
            "namespace",
            "name",
            "uid",
            "apiVersion",
            "resourceVersion",
            "fieldPath",
        )
    },
    "reason": "reason",
    "reportingComponent": "reportingComponent",
    "source": "source",
    "type": "type",
}
EVENTS_V1_FIELDS = {
    **META_FIELDS,
    **{
        f"regarding.{name}": f"involvedObject.{name}"
        for name in (
            "kind",
            "namespace",
            "name",
            "uid",
            "apiVersion",
            "resourceVersion",
            "fieldPath",
        )
    },
    "reason": "reason",
    "reportingController": "reportingComponent",
    "type": "type",
}


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    storage: str
    """The store bucket: the two event APIs share one."""
    schema: Struct
    storage_schema: Struct
    """The schema of the stored form (core/v1 for both event APIs)."""
    short_names: tuple[str, ...]
    validate: Validate
    validate_update: ValidateUpdate
    allow_create_on_update: bool
    allow_unconditional_update: bool
    field_labels: Mapping[str, str]
    """Field-selector label → the stored field it reads."""
    to_view: Convert
    """A stored object in this API version's form."""
    from_view: Convert
    """An object in this API version's form, as stored."""
    decoder: Callable[[Any], Decoded] | None = None
    """How a body is read, if not by ``schema`` (custom resources)."""
    canonicalize: Convert | None = None
    """How the server writes an object out, if not by ``storage_schema``."""
    prepare_create: Convert | None = None
    """The strategy's ``PrepareForCreate``: fields the server sets or clears."""
    prepare_update: Prepare | None = None
    """The strategy's ``PrepareForUpdate`` (new, old): fields an update cannot change."""
    strategic_merge: bool = True
    """Whether strategic merge patches apply (not to custom resources)."""
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def storage_key(self, namespace: str, name: str) -> str:
        return f"/registry/{self.storage}/{namespace}/{name}"

    def as_stored(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A stored-form object the server changed, written as it would serialise it."""
        if self.canonicalize is not None:
            return self.canonicalize(obj)
        return canonical(self.storage_schema, obj, self.kind)

    def decode(self, body: Any) -> Decoded:
        """A request body read into this API version's form (``DecodeError`` if it does
        not fit), with the paths of the unknown fields dropped."""
        if self.decoder is not None:
            return self.decoder(body)
        return decode(self.schema, body, self.kind)


def selectable_fields(stored: dict[str, Any]) -> dict[str, str]:
    """The values a field selector can read from a stored object (``ToSelectableFields``)."""
    meta = stored.get("metadata", {})
    fields = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
    }
    if stored.get("kind") == "Event":
        involved = stored.get("involvedObject", {})
        for name in (
            "kind",
            "namespace",
            "name",
            "uid",
            "apiVersion",
            "resourceVersion",
            "fieldPath",
        ):
            fields[f"involvedObject.{name}"] = involved.get(name, "")
        fields["reason"] = stored.get("reason", "")
        fields["reportingComponent"] = stored.get("reportingComponent", "")
        fields["source"] = stored.get("source", {}).get("component") or fields["reportingComponent"]
        fields["type"] = stored.get("type", "")
    return fields


def _same(api_version: str, kind: str, schema: Struct) -> Convert:
    def convert(obj: dict[str, Any]) -> dict[str, Any]:
        return canonical(schema, {**obj, "apiVersion": api_version, "kind": kind}, kind)

    return convert


def _core_to_events_v1(stored: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": stored.get("metadata", {}),
    }
    for core_name, v1_name in kinds.CORE_TO_EVENTS_V1.items():
        if core_name in stored:
            view[v1_name] = stored[core_name]
    return canonical(kinds.EVENTS_V1_EVENT, view, "Event")


def _events_v1_to_core(view: dict[str, Any]) -> dict[str, Any]:
    stored: dict[str, Any] = {"apiVersion": "v1", "kind": "Event", "metadata": view["metadata"]}
    for core_name, v1_name in kinds.CORE_TO_EVENTS_V1.items():
        if v1_name in view:
            stored[core_name] = view[v1_name]
    return canonical(kinds.CORE_EVENT, stored, "Event")


CONFIG_MAPS = ResourceType(
    group="",
    version="v1",
    plural="configmaps",
    singular="configmap",
    kind="ConfigMap",
    storage="configmaps",
    schema=kinds.CONFIG_MAP,
    storage_schema=kinds.CONFIG_MAP,
    short_names=("cm",),
    validate=validation.validate_config_map,
    validate_update=validation.validate_config_map_update,
    allow_create_on_update=False,
    allow_unconditional_update=True,
    field_labels=META_FIELDS,
    to_view=_same("v1", "ConfigMap", kinds.CONFIG_MAP),
    from_view=_same("v1", "ConfigMap", kinds.CONFIG_MAP),
)

CORE_EVENTS = ResourceType(
    group="",
    version="v1",
    plural="events",
    singular="event",
    kind="Event",
    storage="events",
    schema=kinds.CORE_EVENT,
    storage_schema=kinds.CORE_EVENT,
    short_names=("ev",),
    validate=validation.validate_legacy_event,
    validate_update=validation.validate_legacy_event_update,
    allow_create_on_update=True,
    allow_unconditional_update=True,
    field_labels=CORE_EVENT_FIELDS,
    to_view=_same("v1", "Event", kinds.CORE_EVENT),
    from_view=_same("v1", "Event", kinds.CORE_EVENT),
)

LEASES = ResourceType(
    group="coordination.k8s.io",
    version="v1",
    plural="leases",
    singular="lease",
    kind="Lease",
    storage="leases",
    schema=kinds.LEASE,
    storage_schema=kinds.LEASE,
    short_names=(),
    validate=validation.validate_lease,
    validate_update=validation.validate_lease_update,
    allow_create_on_update=True,
    allow_unconditional_update=False,
    field_labels=META_FIELDS,
    to_view=_same("coordination.k8s.io/v1", "Lease", kinds.LEASE),
    from_view=_same("coordination.k8s.io/v1", "Lease", kinds.LEASE),
)

EVENTS_V1 = ResourceType(
    group="events.k8s.io",
    version="v1",
    plural="events",
    singular="event",
    kind="Event",
    storage="events",
    schema=kinds.EVENTS_V1_EVENT,
    storage_schema=kinds.CORE_EVENT,
    short_names=("ev",),
    validate=validation.validate_events_v1_event,
    validate_update=validation.validate_events_v1_event_update,
    allow_create_on_update=True,
    allow_unconditional_update=True,
    field_labels=EVENTS_V1_FIELDS,
    to_view=_core_to_events_v1,
    from_view=_events_v1_to_core,
)

HTTPROUTES_CRD = (
    Path(__file__).resolve().parents[3].parent
    / "shared/reference/gateway-api/httproutes-v1.6.1.yaml"
)
"""The Gateway API's HTTPRoute CRD (v1.6.1, standard channel), kept beside the repository."""

UNSTRUCTURED = Struct("map[string]interface {}", {})


def custom_resource(definition: crd.CustomResource) -> ResourceType:
    """A resource served by the custom-resource registry: kept as given, less what its
    schema prunes, validated by its schema and CEL rules."""

    def view(obj: dict[str, Any]) -> dict[str, Any]:
        return definition.canonical(copy.deepcopy(obj))

    return ResourceType(
        group=definition.group,
        version=definition.version,
        plural=definition.plural,
        singular=definition.singular,
        kind=definition.kind,
        storage=definition.plural,
        schema=UNSTRUCTURED,
        storage_schema=UNSTRUCTURED,
        short_names=definition.short_names,
        validate=definition.validate,
        validate_update=definition.validate_update,
        allow_create_on_update=False,
        allow_unconditional_update=False,
        field_labels=META_FIELDS,
        to_view=view,
        from_view=view,
        decoder=definition.decode,
        canonicalize=view,
        prepare_create=definition.prepare_create,
        prepare_update=definition.prepare_update,
        strategic_merge=False,
        categories=definition.categories,
    )


def status_subresource(definition: crd.CustomResource) -> ResourceType:
    """The ``/status`` subresource of a custom resource: writes change only the status."""
    return dataclasses.replace(
        custom_resource(definition),
        prepare_create=None,
        prepare_update=definition.prepare_status_update,
    )


DEFINITIONS = crd.load(HTTPROUTES_CRD) if HTTPROUTES_CRD.exists() else ()
CUSTOM = tuple(custom_resource(d) for d in DEFINITIONS)
HTTPROUTES = next((rt for rt in CUSTOM if rt.plural == "httproutes"), None)

ALL = (CONFIG_MAPS, CORE_EVENTS, LEASES, EVENTS_V1, *CUSTOM)
BY_PATH = {(rt.group, rt.version, rt.plural): rt for rt in ALL}
"""(group, version, plural) → resource; the core group is ""."""
STATUS_BY_PATH = {
    (d.group, d.version, d.plural): status_subresource(d)
    for d in DEFINITIONS
    if d.status_subresource
}
"""The resources with a ``/status`` subresource, as that subresource."""
