"""The served resources: what each is called, how it is stored, validated and selected,
and the update policy of its registry strategy.

``configmaps`` and ``events`` (core/v1), ``leases`` (coordination.k8s.io/v1), and
``events`` again in events.k8s.io/v1: a second view of the core events, converted field
by field, with the stricter validation that API version applies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.fakes.kube_api import kinds, validation
from tests.fakes.kube_api.errors import FieldError
from tests.fakes.kube_api.schema import Struct, canonical

Validate = Callable[[dict[str, Any]], list[FieldError]]
ValidateUpdate = Callable[[dict[str, Any], dict[str, Any]], list[FieldError]]
Convert = Callable[[dict[str, Any]], dict[str, Any]]

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
        return canonical(self.storage_schema, obj, self.kind)


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

ALL = (CONFIG_MAPS, CORE_EVENTS, LEASES, EVENTS_V1)
BY_PATH = {(rt.group, rt.version, rt.plural): rt for rt in ALL}
"""(group, version, plural) → resource; the core group is ""."""
