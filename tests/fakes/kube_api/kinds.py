"""Field schemas of the served kinds, transcribed from their Go types (k8s.io/api).

Each field carries its JSON name, type and how Go writes it (``omitempty``, pointer, or
always). ConfigMap and Event are core/v1, Lease is coordination.k8s.io/v1, and the
events.k8s.io/v1 Event is another view of the same stored events.
"""

from __future__ import annotations

from tests.fakes.kube_api.schema import (
    BOOL,
    BYTES,
    INT32,
    INT64,
    MICRO_TIME,
    RAW,
    STRING,
    TIME,
    Field,
    ListOf,
    MapOf,
    Struct,
)


def _strings(*names: str) -> dict[str, Field]:
    return {name: Field(STRING) for name in names}


TYPE_META = _strings("kind", "apiVersion")

OWNER_REFERENCE = Struct(
    "v1.OwnerReference",
    {
        **{name: Field(STRING, "always") for name in ("apiVersion", "kind", "name", "uid")},
        "controller": Field(BOOL, "pointer"),
        "blockOwnerDeletion": Field(BOOL, "pointer"),
    },
)

MANAGED_FIELDS_ENTRY = Struct(
    "v1.ManagedFieldsEntry",
    {
        **_strings("manager", "operation", "apiVersion"),
        "time": Field(TIME, "pointer"),
        "fieldsType": Field(STRING),
        "fieldsV1": Field(RAW, "pointer"),
        "subresource": Field(STRING),
    },
)

OBJECT_META = Struct(
    "v1.ObjectMeta",
    {
        **_strings("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion"),
        "generation": Field(INT64),
        "creationTimestamp": Field(TIME),
        "deletionTimestamp": Field(TIME, "pointer"),
        "deletionGracePeriodSeconds": Field(INT64, "pointer"),
        "labels": Field(MapOf(STRING)),
        "annotations": Field(MapOf(STRING)),
        "ownerReferences": Field(ListOf(OWNER_REFERENCE)),
        "finalizers": Field(ListOf(STRING)),
        "managedFields": Field(ListOf(MANAGED_FIELDS_ENTRY)),
    },
)

CONFIG_MAP = Struct(
    "v1.ConfigMap",
    {
        **TYPE_META,
        "metadata": Field(OBJECT_META, "always"),
        "immutable": Field(BOOL, "pointer"),
        "data": Field(MapOf(STRING)),
        "binaryData": Field(MapOf(BYTES)),
    },
)

LEASE = Struct(
    "v1.Lease",
    {
        **TYPE_META,
        "metadata": Field(OBJECT_META, "always"),
        "spec": Field(
            Struct(
                "v1.LeaseSpec",
                {
                    "holderIdentity": Field(STRING, "pointer"),
                    "leaseDurationSeconds": Field(INT32, "pointer"),
                    "acquireTime": Field(MICRO_TIME, "pointer"),
                    "renewTime": Field(MICRO_TIME, "pointer"),
                    "leaseTransitions": Field(INT32, "pointer"),
                    "strategy": Field(STRING, "pointer"),
                    "preferredHolder": Field(STRING, "pointer"),
                },
            ),
            "always",
        ),
    },
)

OBJECT_REFERENCE = Struct(
    "v1.ObjectReference",
    _strings("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath"),
)

EVENT_SOURCE = Struct("v1.EventSource", _strings("component", "host"))

CORE_EVENT = Struct(
    "v1.Event",
    {
        **TYPE_META,
        "metadata": Field(OBJECT_META, "always"),
        "involvedObject": Field(OBJECT_REFERENCE, "always"),
        "reason": Field(STRING),
        "message": Field(STRING),
        "source": Field(EVENT_SOURCE, "always"),
        "firstTimestamp": Field(TIME),
        "lastTimestamp": Field(TIME),
        "count": Field(INT32),
        "type": Field(STRING),
        "eventTime": Field(MICRO_TIME),
        "series": Field(
            Struct(
                "v1.EventSeries",
                {"count": Field(INT32), "lastObservedTime": Field(MICRO_TIME)},
            ),
            "pointer",
        ),
        "action": Field(STRING),
        "related": Field(OBJECT_REFERENCE, "pointer"),
        "reportingComponent": Field(STRING, "always"),
        "reportingInstance": Field(STRING, "always"),
    },
)

EVENTS_V1_EVENT = Struct(
    "v1.Event",
    {
        **TYPE_META,
        "metadata": Field(OBJECT_META, "always"),
        "eventTime": Field(MICRO_TIME, "always"),
        "series": Field(
            Struct(
                "v1.EventSeries",
                {
                    "count": Field(INT32, "always"),
                    "lastObservedTime": Field(MICRO_TIME, "always"),
                },
            ),
            "pointer",
        ),
        **_strings("reportingController", "reportingInstance", "action", "reason"),
        "regarding": Field(OBJECT_REFERENCE, "always"),
        "related": Field(OBJECT_REFERENCE, "pointer"),
        **_strings("note", "type"),
        "deprecatedSource": Field(EVENT_SOURCE, "always"),
        "deprecatedFirstTimestamp": Field(TIME),
        "deprecatedLastTimestamp": Field(TIME),
        "deprecatedCount": Field(INT32),
    },
)

DELETE_OPTIONS = Struct(
    "v1.DeleteOptions",
    {
        **TYPE_META,
        "gracePeriodSeconds": Field(INT64, "pointer"),
        "preconditions": Field(
            Struct(
                "v1.Preconditions",
                {"uid": Field(STRING, "pointer"), "resourceVersion": Field(STRING, "pointer")},
            ),
            "pointer",
        ),
        "orphanDependents": Field(BOOL, "pointer"),
        "propagationPolicy": Field(STRING, "pointer"),
        "dryRun": Field(ListOf(STRING)),
        "ignoreStoreReadErrorWithClusterBreakingPotential": Field(BOOL, "pointer"),
    },
)

CORE_TO_EVENTS_V1 = {
    "eventTime": "eventTime",
    "series": "series",
    "reportingComponent": "reportingController",
    "reportingInstance": "reportingInstance",
    "action": "action",
    "reason": "reason",
    "involvedObject": "regarding",
    "related": "related",
    "message": "note",
    "type": "type",
    "source": "deprecatedSource",
    "firstTimestamp": "deprecatedFirstTimestamp",
    "lastTimestamp": "deprecatedLastTimestamp",
    "count": "deprecatedCount",
}
"""How a stored (core/v1) Event's fields are named in events.k8s.io/v1."""
