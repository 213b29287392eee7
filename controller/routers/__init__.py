"""Where a release's split and mirroring are put in force: behind one small Protocol
(``Router``), the proxies' routing tables (``ProxyTableRouter``, the default), a rule of
a Gateway API HTTPRoute (``GatewayApiRouter``), and a router that moves nothing
(``NoopRouter``: another system moves the traffic)."""

from controller.routers.base import Router
from controller.routers.gateway_api import GatewayApiRouter
from controller.routers.noop import NoopRouter
from controller.routers.proxy_table import ProxyTableRouter

__all__ = ["GatewayApiRouter", "NoopRouter", "ProxyTableRouter", "Router"]
