"""twistd plugins (``twistd pushprox-proxy``, ``twistd pushprox-client``) and the
``pushprox-tls:`` and ``pushprox-mtls:`` server endpoints.  Under twistd without TLS options
their modules load without TLS libraries (``pushprox.shared.twistd_footprint``)."""

from pushprox.shared.twistd_footprint import TLSFreeServiceMaker, twistd_imports

with twistd_imports():
    from pushprox.shared.tls_listeners import MutualTLSServerParser, TLSServerParser

pushprox_proxy = TLSFreeServiceMaker(
    "pushprox-proxy",
    "pushprox.proxy.tap",
    "PushProx proxy: relays Prometheus scrapes to clients behind NAT",
    "pushprox-proxy",
)
pushprox_client = TLSFreeServiceMaker(
    "pushprox-client",
    "pushprox.client.tap",
    "PushProx client: polls the proxy and scrapes local targets",
    "pushprox-client",
)
pushprox_mtls_endpoint = MutualTLSServerParser()
pushprox_tls_endpoint = TLSServerParser()
