"""Discovery documents: ``/version``, ``/api``, ``/apis``, ``/apis/{group}`` and the
``APIResourceList`` of each served group version, listing only what the fake serves."""

from __future__ import annotations

from typing import Any

from tests.fakes.kube_api.resources import ALL, STATUS_BY_PATH, ResourceType

VERSION = {
    "major": "1",
    "minor": "34",
    "emulationMajor": "1",
    "emulationMinor": "34",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "33",
    "gitVersion": "v1.34.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-08-27T00:00:00Z",
    "goVersion": "go1.24.6",
    "compiler": "gc",
    "platform": "linux/amd64",
}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for rt in ALL:
        if rt.group and rt.version not in groups.setdefault(rt.group, []):
            groups[rt.group].append(rt.version)
    return groups


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    listed = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": listed, "preferredVersion": listed[0]}


def api_group_list() -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(name, versions) for name, versions in _groups().items()],
    }


def api_group(name: str) -> dict[str, Any] | None:
    versions = _groups().get(name)
    if versions is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


def _resource(rt: ResourceType) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": True,
        "kind": rt.kind,
        "verbs": VERBS,
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    return entry


def _status(rt: ResourceType) -> dict[str, Any]:
    return {
        "name": f"{rt.plural}/status",
        "singularName": "",
        "namespaced": True,
        "kind": rt.kind,
        "verbs": ["get", "patch", "update"],
    }


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    served = [rt for rt in ALL if (rt.group, rt.version) == (group, version)]
    if not served:
        return None
    resources = []
    for rt in served:
        resources.append(_resource(rt))
        if (rt.group, rt.version, rt.plural) in STATUS_BY_PATH:
            resources.append(_status(rt))
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }
