"""twistd plugins (``twistd pushprox-proxy``, ``twistd pushprox-client``) and the
``pushprox-tls:`` and ``pushprox-mtls:`` server endpoints."""

from twisted.application.service import ServiceMaker

from pushprox.shared.tls_listeners import MutualTLSServerParser, TLSServerParser

pushprox_proxy = ServiceMaker(
    "pushprox-proxy",
    "pushprox.proxy.tap",
    "PushProx proxy: relays Prometheus scrapes to clients behind NAT",
    "pushprox-proxy",
)
pushprox_client = ServiceMaker(
    "pushprox-client",
    "pushprox.client.tap",
    "PushProx client: polls the proxy and scrapes local targets",
    "pushprox-client",
)
pushprox_mtls_endpoint = MutualTLSServerParser()
pushprox_tls_endpoint = TLSServerParser()
