"""A fake Kubernetes API server for tests driven by the official ``kubernetes`` client.

It serves core/v1 ConfigMaps and Events, coordination.k8s.io/v1 Leases,
events.k8s.io/v1 Events and, from the Gateway API's CRD, gateway.networking.k8s.io/v1
HTTPRoutes (a custom resource: pruned, defaulted, validated by its OpenAPI schema and its
CEL rules) over real loopback HTTP, with the real server's semantics for the verbs get,
list, watch, create, update, patch and delete: one resource-version counter, optimistic
concurrency, validation, selectors, paging, watch history and its 410, ``Status`` errors.
``FakeKubeServer`` runs it; ``ObjectStore`` is its storage.
"""

from tests.fakes.kube_api.app import ServerState, create_app
from tests.fakes.kube_api.errors import ApiError
from tests.fakes.kube_api.faults import Faults
from tests.fakes.kube_api.server import FakeKubeServer
from tests.fakes.kube_api.store import Change, ObjectStore, TooOldError

__all__ = [
    "ApiError",
    "Change",
    "FakeKubeServer",
    "Faults",
    "ObjectStore",
    "ServerState",
    "TooOldError",
    "create_app",
]
