"""Kubernetes plumbing shared by the proxy and the controller in cluster mode: settings,
the API client, and the split of API errors into temporary and permanent."""

from coalmine.shared.kube.client import (
    ClusterSettings,
    KubeConflictError,
    KubeError,
    KubeNotFoundError,
    KubePermanentError,
    KubeTemporaryError,
    api_client,
    kube_call,
)

__all__ = [
    "ClusterSettings",
    "KubeConflictError",
    "KubeError",
    "KubeNotFoundError",
    "KubePermanentError",
    "KubeTemporaryError",
    "api_client",
    "kube_call",
]
