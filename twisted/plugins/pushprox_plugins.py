"""twistd plugins: ``twistd pushprox-proxy`` and ``twistd pushprox-client``."""

from twisted.application.service import ServiceMaker

pushprox_proxy = ServiceMaker(
    "pushprox-proxy",
    "pushprox.proxy_tap",
    "PushProx proxy: relays Prometheus scrapes to clients behind NAT",
    "pushprox-proxy",
)
pushprox_client = ServiceMaker(
    "pushprox-client",
    "pushprox.client_tap",
    "PushProx client: polls the proxy and scrapes local targets",
    "pushprox-client",
)
