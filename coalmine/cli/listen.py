"""Where each server of a command listens and who can reach it, said once at start: the
image and the chart bind every server to all interfaces (``0.0.0.0``), which a log line
should not leave to be guessed."""

from __future__ import annotations

import ipaddress
import logging

__all__ = ["listening", "reach"]

log = logging.getLogger("coalmine.listen")

_ALL = "all interfaces: reachable from outside the pod or host"
_LOOPBACK = "loopback only: not reachable from outside the pod or host"


def reach(host: str) -> str:
    """Who can connect to a server bound to ``host``."""
    name = host.strip("[]")
    if name.lower() == "localhost":
        return _LOOPBACK
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return f"the interfaces {name} resolves to: reachable from outside unless they are loopback"
    if address.is_unspecified:
        return _ALL
    if address.is_loopback:
        return _LOOPBACK
    return f"interface {address} only: reachable from outside the pod or host at that address"


def listening(server: str, url: str, host: str, guard: str) -> None:
    """Log that ``server`` listens at ``url`` (bound to ``host``), who can reach it, and
    what guards it (``guard``: "the admin token", "no authentication", ...)."""
    log.info("%s on %s (%s; %s)", server, url, reach(host), guard)
