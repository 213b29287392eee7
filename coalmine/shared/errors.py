"""The base of coalmine's errors, split by what the caller should do about them.

The split that matters is temporary against permanent: a temporary error may go away if
the same call is made again later (with backoff, or after ``delay`` seconds when the
error knows how long), a permanent one will not, and retrying it only adds load. Each
package keeps its own errors in one module (``controller.errors``, ``coalmine.cli.errors``)
under these classes; the policy model depends on no other package, so its errors
(``policies.errors``) are ``ValueError`` only.

The tree of this package::

    CoalmineError
    ├── TemporaryError                 retry later: backoff, or ``delay`` seconds
    │   └── KubeTemporaryError         429, 5xx, a timeout, the network
    ├── PermanentError                 the same call fails again
    │   └── KubePermanentError         401, 403, 422, no client configuration
    └── KubeError                      a Kubernetes API call failed (its ``status``)
        ├── KubeNotFoundError          404: no such object
        ├── KubeConflictError          409: changed since it was read, or name taken
        ├── KubeTemporaryError         (also a TemporaryError)
        └── KubePermanentError         (also a PermanentError)

The Kubernetes errors are defined in ``coalmine.shared.kube.client``, next to the call
that raises them.
"""

from __future__ import annotations

__all__ = ["CoalmineError", "PermanentError", "TemporaryError"]


class CoalmineError(Exception):
    """An error coalmine raises on purpose, with a message that says what failed."""


class TemporaryError(CoalmineError):
    """The call may succeed if made again later.

    ``delay`` is how many seconds to wait first when the error knows (a ``Retry-After``
    header); None leaves the wait to the caller's backoff.
    """

    def __init__(self, *args: object, delay: float | None = None) -> None:
        super().__init__(*args)
        self.delay = delay


class PermanentError(CoalmineError):
    """The call will fail again as made: retrying it cannot help."""
