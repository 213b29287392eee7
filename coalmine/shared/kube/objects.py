"""What coalmine keeps in a namespace: the names and labels of its ConfigMaps, and the
body of one to write."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MANAGED_BY = {"app.kubernetes.io/managed-by": "coalmine"}
ROLE_LABEL = "coalmine.dev/role"
RELEASE_LABEL = "coalmine.dev/release"


def state_name(prefix: str, release: str) -> str:
    """The ConfigMap of a release's phase, decision log, action journal and label history."""
    return f"{prefix}-{release}-state"


def routing_name(prefix: str, release: str) -> str:
    """The ConfigMap of a release's routing table, which every proxy watches."""
    return f"{prefix}-{release}-routing"


def index_name(prefix: str) -> str:
    """The ConfigMap listing every release that has a state ConfigMap."""
    return f"{prefix}-index"


def configmap_body(
    name: str,
    namespace: str,
    data: Mapping[str, str],
    *,
    role: str,
    release: str | None = None,
    resource_version: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A ConfigMap to create (no ``resource_version``) or to replace only if it is still
    at ``resource_version``."""
    labels = {**MANAGED_BY, ROLE_LABEL: role}
    if release is not None:
        labels[RELEASE_LABEL] = release
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        metadata["annotations"] = dict(annotations)
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": dict(data)}
