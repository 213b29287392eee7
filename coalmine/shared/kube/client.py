"""Cluster-mode settings, the official client built from them, and API errors by kind.

The client comes from an explicit kubeconfig, else the in-cluster service account, else
the default kubeconfig (``KUBECONFIG``, ``~/.kube/config``). Every call goes through
``kube_call``, which gives each request a timeout and turns the client's exceptions into
four kinds: not found, conflict (a stale ``resourceVersion``, or a name already taken),
temporary (retry with backoff: 429, 5xx, the network) and permanent (the rest: 401, 403,
422...). The temporary and permanent kinds are also ``TemporaryError`` and
``PermanentError`` of ``coalmine.shared.errors``, whose docstring draws the tree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

from coalmine.shared.errors import CoalmineError, PermanentError, TemporaryError

T = TypeVar("T")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REQUEST_TIMEOUT = (3.05, 10.0)
"""(connect, read) seconds of one API request."""


class ClusterSettings(BaseSettings):
    """Cluster mode: state in ConfigMaps, a Lease for the leader, Events for decisions."""

    cluster: bool = False
    """Run in cluster mode (``COALMINE_CLUSTER``); off: the local SQLite state file."""

    namespace: str | None = None
    """Namespace of the ConfigMaps, Lease and Events; None: the pod's own (the service
    account's namespace file), else the kubeconfig context's, else ``default`` (as
    ``kubectl`` does)."""

    pod_name: str | None = None
    """This pod's name (downward API): the Lease holder's identity and the object
    Events are reported on; None: the host name."""

    pod_uid: str | None = None
    """This pod's uid (downward API), so ``kubectl describe pod`` lists its Events."""

    kubeconfig: Path | None = None
    """A kubeconfig file; None: in-cluster config when in a pod, else the default
    kubeconfig."""

    configmap_prefix: str = Field(
        default="coalmine", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=100
    )
    """ConfigMaps are named ``<prefix>-<release>-state``, ``<prefix>-<release>-routing``
    and ``<prefix>-index``."""

    lease_name: str = Field(
        default="coalmine-controller", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    )
    """The ``coordination.k8s.io`` Lease whose holder is the acting controller."""

    lease_duration_seconds: float = Field(default=15.0, gt=0)
    """How long a Lease nobody renews stays held: a standby takes over after it."""

    renew_deadline_seconds: float = Field(default=10.0, gt=0)
    """A leader that could not renew for this long stops acting (before the Lease can
    expire for the others)."""

    retry_period_seconds: float = Field(default=2.0, gt=0)
    """Seconds between two attempts to take or renew the Lease."""

    @model_validator(mode="after")
    def _lease_timing(self) -> ClusterSettings:
        if not self.retry_period_seconds < self.renew_deadline_seconds:
            raise ValueError("retry_period_seconds must be less than renew_deadline_seconds")
        if not self.renew_deadline_seconds < self.lease_duration_seconds:
            raise ValueError("renew_deadline_seconds must be less than lease_duration_seconds")
        return self

    def resolved_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        try:
            found = SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
        except OSError:
            found = ""
        return found or self._context_namespace() or "default"

    def _context_namespace(self) -> str | None:
        """The namespace of the kubeconfig's current context, if it names one."""
        from kubernetes import config  # noqa: PLC0415
        from kubernetes.config.config_exception import ConfigException  # noqa: PLC0415

        path = None if self.kubeconfig is None else str(self.kubeconfig)
        try:
            _, current = config.list_kube_config_contexts(config_file=path)
        except (ConfigException, OSError):
            return None
        namespace = (current or {}).get("context", {}).get("namespace")
        return str(namespace) if namespace else None

    def identity(self) -> str:
        return self.pod_name or os.environ.get("HOSTNAME") or os.uname().nodename


class KubeError(CoalmineError):
    """A Kubernetes API call failed."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class KubeNotFoundError(KubeError):
    """404: the object does not exist."""


class KubeConflictError(KubeError):
    """409: the object changed since it was read, or its name is taken."""


class KubeTemporaryError(KubeError, TemporaryError):
    """429, 5xx, a timeout or the network: retry with backoff."""


class KubePermanentError(KubeError, PermanentError):
    """Anything else (401, 403, 422...): retrying the same request cannot help."""


def api_client(settings: ClusterSettings) -> Any:
    """The official client's ``ApiClient`` for these settings.

    Raises KubePermanentError when no configuration can be found.
    """
    from kubernetes import client, config  # noqa: PLC0415 (only in cluster mode)
    from kubernetes.config.config_exception import ConfigException  # noqa: PLC0415

    try:
        if settings.kubeconfig is not None:
            return config.new_client_from_config(config_file=str(settings.kubeconfig))
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        return config.new_client_from_config()
    except (ConfigException, OSError) as error:
        where = settings.kubeconfig or "in-cluster config or the default kubeconfig"
        raise KubePermanentError(
            f"cluster mode: cannot configure the client ({where}): {error}"
        ) from None


def kube_call(what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """One API call with a request timeout; its failure as a KubeError kind."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415
    from urllib3.exceptions import HTTPError  # noqa: PLC0415

    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
    try:
        return call(*args, **kwargs)
    except ApiException as error:
        status = int(error.status or 0)
        message = f"{what}: {status} {_reason(error)}"
        if status == 404:
            raise KubeNotFoundError(message, status) from None
        if status == 409:
            raise KubeConflictError(message, status) from None
        if status in (0, 429) or status >= 500:
            raise KubeTemporaryError(message, status) from None
        raise KubePermanentError(message, status) from None
    except (HTTPError, OSError) as error:
        raise KubeTemporaryError(f"{what}: {error}") from None


def _reason(error: Any) -> str:
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        return str(error.reason or "")
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(error.reason or "")
