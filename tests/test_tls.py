"""
Tests for L{pushprox.shared.tls}: configuration errors, identity checks, and real TLS handshakes
over 127.0.0.1 with certificates made by L{tests.tlsfixtures}.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import treq
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity.exceptions import DNSMismatch, VerificationError
from service_identity.hazmat import DNS_ID
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHandshakeListener,
    IListeningPort,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    AcceptableCiphers,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from pushprox.shared.tls import (
    INTERMEDIATE_CIPHER_SUITES,
    ServerTLS,
    TLSProfile,
    certificate_names_fqdn,
    https_policy,
    load_certificates,
    peer_names,
    server_context_factory,
)
from tests.tlsfixtures import CertificateAuthority, IssuedCertificate, make_pki


def _temporary_directory(case: SynchronousTestCase) -> str:
    """A fresh directory removed after the test (trial's mktemp writes below the cwd)."""
    path = tempfile.mkdtemp(prefix="pushprox-test-tls-")
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def _port_number(port: IListeningPort) -> int:
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return address.port


def _subject(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string()


def _ssl_reasons(failure: Failure | None) -> list[str]:
    """
    The OpenSSL reason strings of an C{SSL.Error} failure.

    A received alert is reduced to its description ("certificate expired"): OpenSSL
    versions disagree on the prefix ("sslv3 alert", "tlsv1 alert", "tls alert").
    """
    assert failure is not None
    failure.trap(SSL.Error)
    error = failure.value
    assert isinstance(error, SSL.Error)
    return [reason.split(" alert ")[-1] for (_library, _function, reason) in error.args[0]]


class LoadCertificatesTests(SynchronousTestCase):
    """L{load_certificates} reads whole PEM bundles and names the file when it cannot."""

    def setUp(self) -> None:
        self.pki = make_pki(_temporary_directory(self))

    def test_loads_every_certificate_of_a_bundle(self) -> None:
        """Both certificates of a two-CA bundle are loaded, in file order."""
        certificates = load_certificates(self.pki.ca_bundle)
        self.assertEqual(
            [_subject(c.original.to_cryptography()) for c in certificates],
            ["CN=pushprox-other-ca", "CN=pushprox-test-ca"],
        )

    def test_missing_file_names_the_file(self) -> None:
        """A file that does not exist is a ValueError naming it."""
        path = os.path.join(self.pki.directory, "absent.crt")
        error = self.assertRaises(ValueError, load_certificates, path)
        self.assertEqual(
            str(error), f"cannot read certificate file {path}: No such file or directory"
        )

    def test_file_without_certificates_names_the_file(self) -> None:
        """A file holding no PEM certificate (here a key) is a ValueError naming it."""
        path = self.pki.server.key
        error = self.assertRaises(ValueError, load_certificates, path)
        self.assertEqual(str(error), f"certificate file {path} holds no valid PEM certificate")


class ConfigurationErrorTests(SynchronousTestCase):
    """Bad certificate or key arguments are one-line ValueErrors naming the file."""

    def setUp(self) -> None:
        self.pki = make_pki(_temporary_directory(self))

    def test_client_certificate_without_key(self) -> None:
        """https_policy refuses a certificate without a key, verifying or not."""
        message = "a client certificate needs both cert and key, not only one of them"
        error = self.assertRaises(
            ValueError, https_policy, cacert=None, cert=self.pki.client.cert, key=None
        )
        self.assertEqual(str(error), message)
        error = self.assertRaises(
            ValueError,
            https_policy,
            cacert=None,
            cert=None,
            key=self.pki.client.key,
            insecure_skip_verify=True,
        )
        self.assertEqual(str(error), message)

    def test_key_not_matching_certificate(self) -> None:
        """A key that belongs to another certificate is refused."""
        cert, key = self.pki.server.cert, self.pki.client.key
        error = self.assertRaises(
            ValueError, server_context_factory, cert=cert, key=key, client_ca=None
        )
        self.assertEqual(
            str(error), f"private key file {key} does not match certificate file {cert}"
        )

    def test_encrypted_key(self) -> None:
        """An encrypted key is refused with a hint rather than a password prompt."""
        with open(self.pki.client.key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        path = os.path.join(self.pki.directory, "encrypted.key")
        with open(path, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            )
        error = self.assertRaises(
            ValueError, https_policy, cacert=None, cert=self.pki.client.cert, key=path
        )
        self.assertEqual(
            str(error), f"private key file {path} is encrypted; give an unencrypted key"
        )

    def test_key_file_without_key(self) -> None:
        """A key file that holds no key (here a certificate) is refused."""
        path = self.pki.server.cert
        error = self.assertRaises(
            ValueError, server_context_factory, cert=path, key=path, client_ca=None
        )
        self.assertEqual(str(error), f"private key file {path} holds no valid PEM private key")

    def test_missing_client_ca(self) -> None:
        """A client CA file that does not exist is refused, naming it."""
        path = os.path.join(self.pki.directory, "absent-ca.crt")
        error = self.assertRaises(
            ValueError,
            server_context_factory,
            cert=self.pki.server.cert,
            key=self.pki.server.key,
            client_ca=path,
        )
        self.assertEqual(
            str(error), f"cannot read client CA file {path}: No such file or directory"
        )

    def test_missing_trust_bundle(self) -> None:
        """A CA bundle that does not exist is refused when the policy is built."""
        path = os.path.join(self.pki.directory, "absent-bundle.crt")
        error = self.assertRaises(ValueError, https_policy, cacert=path, cert=None, key=None)
        self.assertEqual(
            str(error), f"cannot read certificate file {path}: No such file or directory"
        )


class CertificateNamesFqdnTests(SynchronousTestCase):
    """L{certificate_names_fqdn} follows service-identity's matching rules."""

    def test_exact_name(self) -> None:
        """A listed name matches, ignoring case on both sides."""
        self.assertTrue(certificate_names_fqdn(["other.example", "node1.example"], "node1.example"))
        self.assertTrue(certificate_names_fqdn(["Node1.Example"], "NODE1.example"))

    def test_other_name(self) -> None:
        """A name that is not listed does not match, nor does a parent or child domain."""
        self.assertFalse(certificate_names_fqdn(["node1.example"], "node2.example"))
        self.assertFalse(certificate_names_fqdn(["node1.example"], "example"))
        self.assertFalse(certificate_names_fqdn(["node1.example"], "a.node1.example"))

    def test_wildcard_covers_one_label(self) -> None:
        """A left-most wildcard matches exactly one label and not the bare domain."""
        names = ["*.pods.example"]
        self.assertTrue(certificate_names_fqdn(names, "web-1.pods.example"))
        self.assertFalse(certificate_names_fqdn(names, "a.b.pods.example"))
        self.assertFalse(certificate_names_fqdn(names, "pods.example"))

    def test_invalid_wildcard_is_ignored(self) -> None:
        """A too-broad wildcard matches nothing but does not hide the other names."""
        self.assertFalse(certificate_names_fqdn(["*.example"], "node1.example"))
        self.assertTrue(certificate_names_fqdn(["*.example", "node1.example"], "node1.example"))

    def test_no_names_or_no_fqdn(self) -> None:
        """No names, an empty FQDN, or an IP address as FQDN never match."""
        self.assertFalse(certificate_names_fqdn([], "node1.example"))
        self.assertFalse(certificate_names_fqdn(["node1.example"], ""))
        self.assertFalse(certificate_names_fqdn(["127.0.0.1"], "127.0.0.1"))


class _FakeTLSTransport:
    def __init__(self, certificate: X509 | None) -> None:
        self.certificate = certificate

    def getPeerCertificate(self) -> X509 | None:
        return self.certificate


class PeerNamesTests(SynchronousTestCase):
    """L{peer_names} reads the dNSName entries of the peer's certificate."""

    def test_dns_names_lowercase(self) -> None:
        """DNS names come back lowercase in certificate order; IP addresses are left out."""
        ca = CertificateAuthority(_temporary_directory(self), "peer-names-ca")
        issued = ca.issue("leaf", ["Node1.Example", "10.0.0.1", "*.Pods.Example"])
        with open(issued.cert, "rb") as f:
            certificate = X509.from_cryptography(x509.load_pem_x509_certificate(f.read()))
        self.assertEqual(
            peer_names(_FakeTLSTransport(certificate)), ["node1.example", "*.pods.example"]
        )

    def test_no_certificate(self) -> None:
        """A TLS transport whose peer sent no certificate has no names."""
        self.assertEqual(peer_names(_FakeTLSTransport(None)), [])

    def test_not_tls(self) -> None:
        """A plain TCP-like transport, or anything else, has no names."""
        self.assertEqual(peer_names(StringTransport()), [])
        self.assertEqual(peer_names(object()), [])

    def test_transport_that_cannot_tell(self) -> None:
        """A transport whose getPeerCertificate is not implemented has no names."""

        class Legacy:
            def getPeerCertificate(self) -> None:
                raise NotImplementedError("Server.getPeerCertificate")

        self.assertEqual(peer_names(Legacy()), [])


class _TrackingFactory(WrappingFactory):
    """Wrap a server factory and tell when all of its connections are gone."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._waiting: list[defer.Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def all_closed(self) -> defer.Deferred[None]:
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d


class _PeerNamesResource(Resource):
    """Answer every GET with the client certificate's DNS names, comma-separated."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return ",".join(peer_names(request.transport)).encode("ascii")


@pytest.mark.processes
class HTTPSTests(TestCase):
    """Client policies against a twisted.web server using L{server_context_factory}."""

    timeout = 20

    def setUp(self) -> None:
        self.pki = make_pki(_temporary_directory(self))

    @defer.inlineCallbacks
    def get(
        self, policy: IPolicyForHTTPS, server_cert: IssuedCertificate, client_ca: str | None
    ) -> Any:
        """Serve with C{server_cert}, GET / on it with C{policy}, and return the body."""
        creator = server_context_factory(
            cert=server_cert.cert, key=server_cert.key, client_ca=client_ca
        )
        tracker = _TrackingFactory(TLSMemoryBIOFactory(creator, False, Site(_PeerNamesResource())))
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(tracker)
        self.addCleanup(tracker.all_closed)
        self.addCleanup(port.stopListening)
        number = _port_number(port)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        client = HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
        response = yield client.get(f"https://127.0.0.1:{number}/")
        self.assertEqual(response.code, 200)
        body = yield treq.content(response)
        return body

    @defer.inlineCallbacks
    def test_client_policies_connect_and_show_the_client_names(self) -> Any:
        """
        The server is trusted through the given CA (or the second CA of a bundle) and sees
        the client's names; a client without certificate still connects and shows none.
        """
        pki = self.pki
        cases = [
            ("CA", https_policy(cacert=pki.ca_cert, cert=pki.client.cert, key=pki.client.key),
             b"node1.example"),
            ("no client certificate", https_policy(cacert=pki.ca_cert, cert=None, key=None),
             b""),
            ("bundle", https_policy(cacert=pki.ca_bundle, cert=pki.client.cert,
                                    key=pki.client.key), b"node1.example"),
        ]
        bodies = []
        for label, policy, _ in cases:
            body = yield self.get(policy, pki.server, client_ca=pki.ca_cert)
            bodies.append((label, body))
        self.assertEqual(bodies, [(label, body) for label, _, body in cases])

    @defer.inlineCallbacks
    def test_policies_reject_certificates_they_must_not_trust(self) -> Any:
        """
        The GET fails before any response, with OpenSSL saying why: a server certificate
        signed by another CA or expired fails verification (also for a target policy
        without insecure_skip_verify); a client certificate is optional, but one from
        another CA fails the handshake.
        """
        pki = self.pki
        verifying = https_policy(cacert=pki.ca_cert, cert=None, key=None)
        cases = [
            ("server of another CA", verifying, pki.rogue_server, None,
             "certificate verify failed"),
            ("expired server", verifying, pki.expired_server, None, "certificate verify failed"),
            ("target policy", https_policy(cacert=pki.ca_cert, cert=None, key=None,
                                           insecure_skip_verify=False),
             pki.rogue_server, None, "certificate verify failed"),
            ("client of another CA", https_policy(cacert=pki.ca_cert, cert=pki.rogue_client.cert,
                                                  key=pki.rogue_client.key),
             pki.server, pki.ca_cert, "unknown ca"),
        ]
        reasons = []
        for label, policy, server_cert, client_ca, _ in cases:
            error = yield self.assertFailure(
                self.get(policy, server_cert, client_ca), ResponseNeverReceived
            )
            reasons.append((label, [_ssl_reasons(f) for f in error.reasons]))
        self.assertEqual(reasons, [(case[0], [[case[-1]]]) for case in cases])

    @defer.inlineCallbacks
    def test_insecure_target_policy_accepts_any_server(self) -> Any:
        """Insecure mode accepts a foreign CA and an expired certificate, with a client cert."""
        policy = https_policy(
            cacert=self.pki.ca_cert,
            cert=self.pki.client.cert,
            key=self.pki.client.key,
            insecure_skip_verify=True,
        )
        rogue = yield self.get(policy, self.pki.rogue_server, client_ca=self.pki.ca_cert)
        expired = yield self.get(policy, self.pki.expired_server, client_ca=self.pki.ca_cert)
        self.assertEqual((rogue, expired), (b"node1.example", b"node1.example"))


@implementer(IHandshakeListener)
class _Peer(Protocol):
    """Record what one side of a TLS connection learns, then (client side) hang up."""

    def __init__(self, hang_up: bool) -> None:
        self.hang_up = hang_up
        self.names: list[str] | None = None
        self.server_name: bytes | None = None
        self.client_ca_names: list[str] | None = None
        self.reason: Failure | None = None
        self.lost: defer.Deferred[None] = defer.Deferred()

    def handshakeCompleted(self) -> None:
        self.names = peer_names(self.transport)
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        self.server_name = handle.get_servername()
        self.client_ca_names = [
            name.rfc4514_string() for name in handle.get_client_ca_list(as_cryptography=True)
        ]
        if self.hang_up:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.lost.callback(None)


@pytest.mark.processes
class HandshakeTests(TestCase):
    """Raw TLS handshakes through the policies' connection creators."""

    timeout = 20

    def setUp(self) -> None:
        self.pki = make_pki(_temporary_directory(self))
        self.server_peers: list[_Peer] = []

    @defer.inlineCallbacks
    def listen(self, creator: IOpenSSLServerConnectionCreator) -> Any:
        factory = Factory.forProtocol(lambda: self._server_peer())
        port: IListeningPort = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            TLSMemoryBIOFactory(creator, False, factory)
        )
        self.addCleanup(port.stopListening)
        return _port_number(port)

    def _server_peer(self) -> _Peer:
        peer = _Peer(hang_up=False)
        self.server_peers.append(peer)
        return peer

    @defer.inlineCallbacks
    def handshake(
        self,
        policy: IPolicyForHTTPS,
        hostname: bytes,
        server_cert: IssuedCertificate,
        client_ca: str | None,
    ) -> Any:
        """Connect to a fresh server as C{hostname}; return both peers once both are closed."""
        result = yield self.handshake_with(
            lambda port: policy.creatorForNetloc(hostname, port),
            server_context_factory(cert=server_cert.cert, key=server_cert.key, client_ca=client_ca),
        )
        return result

    @defer.inlineCallbacks
    def handshake_with(self, client_creator: Any,
                       server_creator: IOpenSSLServerConnectionCreator) -> Any:
        """
        Connect with C{client_creator(port)} to a fresh server made with C{server_creator};
        return both peers once both are closed.
        """
        port = yield self.listen(server_creator)
        endpoint = wrapClientTLS(client_creator(port),
                                 TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        client = yield connectProtocol(endpoint, _Peer(hang_up=True))
        yield client.lost
        server = self.server_peers.pop()
        yield server.lost
        return client, server

    def tls12_client(self, cipher: str) -> Any:
        """A client creator that speaks TLS 1.2 at most, offering only OpenSSL's C{cipher}."""
        trust = trustRootFromCertificates(load_certificates(self.pki.ca_cert))
        return lambda port: optionsForClientTLS("localhost", trustRoot=trust,
                                                extraCertificateOptions={
            "lowerMaximumSecurityTo": TLSVersion.TLSv1_2,
            "acceptableCiphers": AcceptableCiphers.fromOpenSSLCipherString(cipher)})

    def server(self, profile: TLSProfile | None = None) -> ServerTLS:
        """The listener's TLS with the test server certificate and C{profile}."""
        return ServerTLS(cert=self.pki.server.cert, key=self.pki.server.key, profile=profile)

    @defer.inlineCallbacks
    def test_client_policy_reload_applies_to_the_next_connection(self) -> Any:
        """
        A creator handed out before a reload (as an endpoint keeps it) presents the new
        client certificate on its next connection; a bad new key is refused and the
        certificate in force stays.
        """
        directory = _temporary_directory(self)
        cert, key = os.path.join(directory, "c.crt"), os.path.join(directory, "c.key")
        shutil.copy(self.pki.client.cert, cert)
        shutil.copy(self.pki.client.key, key)
        policy = https_policy(cacert=self.pki.ca_cert, cert=cert, key=key)
        server = server_context_factory(cert=self.pki.server.cert, key=self.pki.server.key,
                                        client_ca=self.pki.ca_cert)
        creators: dict[int, Any] = {}

        def creator(port: int) -> Any:
            return creators.setdefault(0, policy.creatorForNetloc(b"localhost", port))

        _, before = yield self.handshake_with(creator, server)
        other = self.pki.ca.issue("node2", ["node2.example"], server=False)
        shutil.copy(other.cert, cert)
        shutil.copy(other.key, key)
        policy.reload()
        _, after = yield self.handshake_with(creator, server)
        shutil.copy(self.pki.client.key, key)
        self.assertRaises(ValueError, policy.reload)
        _, refused = yield self.handshake_with(creator, server)
        self.assertEqual((before.names, after.names, refused.names),
                         (["node1.example"], ["node2.example"], ["node2.example"]))

    @defer.inlineCallbacks
    def test_default_profile_offers_no_cbc_cipher(self) -> Any:
        """
        A TLS 1.2 client offering only a CBC suite gets no handshake from the default
        profile; given that suite in the profile, it does.
        """
        cbc = self.tls12_client("ECDHE-ECDSA-AES128-SHA")
        client, server = yield self.handshake_with(cbc, self.server())
        self.assertEqual(_ssl_reasons(server.reason), ["no shared cipher"])
        self.assertIsNone(client.names)
        client, server = yield self.handshake_with(cbc, self.server(TLSProfile(
            cipher_suites=(*INTERMEDIATE_CIPHER_SUITES, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"))))
        self.assertEqual(client.names, ["localhost"])

    @defer.inlineCallbacks
    def test_default_profile_speaks_tls12_aead_and_tls13_min_version_raises_it(self) -> Any:
        """A TLS 1.2 AEAD client is served by default, refused with a TLS13 minimum."""
        gcm = self.tls12_client("ECDHE-ECDSA-AES128-GCM-SHA256")
        client, server = yield self.handshake_with(gcm, self.server())
        self.assertEqual(client.names, ["localhost"])
        client, server = yield self.handshake_with(gcm, self.server(TLSProfile("TLS13")))
        self.assertEqual(_ssl_reasons(server.reason), ["unsupported protocol"])
        self.assertIsNone(client.names)

    @defer.inlineCallbacks
    def test_client_profile_refuses_an_old_server_target_policy_does_not(self) -> Any:
        """
        The client's policy to the proxy (with the profile) refuses a server that offers
        only TLS 1.2 CBC; the targets' policy (Twisted's defaults) still talks to it.
        """
        # cryptography's objects, which pyOpenSSL wants (Twisted annotates its own).
        identity: dict[str, Any] = {
            "privateKey": serialization.load_pem_private_key(
                Path(self.pki.server.key).read_bytes(), password=None),
            "certificate": x509.load_pem_x509_certificate(
                Path(self.pki.server.cert).read_bytes()),
        }
        old = CertificateOptions(
            **identity,
            lowerMaximumSecurityTo=TLSVersion.TLSv1_2,
            acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString("ECDHE-ECDSA-AES128-SHA"),
        )
        to_proxy = https_policy(cacert=self.pki.ca_cert, cert=None, key=None,
                                profile=TLSProfile())
        client, server = yield self.handshake_with(
            lambda port: to_proxy.creatorForNetloc(b"localhost", port), old)
        self.assertIsNone(client.names)
        self.assertIsNotNone(server.reason)
        to_targets = https_policy(cacert=self.pki.ca_cert, cert=None, key=None)
        client, server = yield self.handshake_with(
            lambda port: to_targets.creatorForNetloc(b"localhost", port), old)
        self.assertEqual(client.names, ["localhost"])

    @defer.inlineCallbacks
    def test_both_sides_see_each_others_names(self) -> Any:
        """
        After a verified handshake the client sees the server's DNS names, the server the
        client's, the server got the SNI name and advertised its client CA.
        """
        policy = https_policy(
            cacert=self.pki.ca_cert, cert=self.pki.client.cert, key=self.pki.client.key
        )
        client, server = yield self.handshake(
            policy, b"localhost", self.pki.server, client_ca=self.pki.ca_cert
        )
        self.assertEqual(
            (client.names, server.names, server.server_name, client.client_ca_names),
            (["localhost"], ["node1.example"], b"localhost", ["CN=pushprox-test-ca"]),
        )
        self.assertIsInstance(client.reason and client.reason.value, ConnectionDone)

    @defer.inlineCallbacks
    def test_wrong_hostname_rejected(self) -> Any:
        """A trusted certificate that does not name the host fails with a DNS mismatch."""
        policy = https_policy(cacert=self.pki.ca_cert, cert=None, key=None)
        client, server = yield self.handshake(
            policy, b"wrong.example", self.pki.server, client_ca=None
        )
        reason = client.reason
        assert reason is not None
        reason.trap(VerificationError)
        self.assertEqual(
            [(type(e), e.mismatched_id) for e in reason.value.errors],
            [(DNSMismatch, DNS_ID("wrong.example"))],
        )
        self.assertEqual((client.names, server.names), (None, None))

    @defer.inlineCallbacks
    def test_expired_server_reported_as_expired(self) -> Any:
        """The client tells the server why: its certificate expired."""
        policy = https_policy(cacert=self.pki.ca_cert, cert=None, key=None)
        client, server = yield self.handshake(
            policy, b"localhost", self.pki.expired_server, client_ca=None
        )
        self.assertEqual(_ssl_reasons(server.reason), ["certificate expired"])
        self.assertEqual(_ssl_reasons(client.reason), ["certificate verify failed"])
        self.assertEqual((client.names, server.names), (None, None))

    @defer.inlineCallbacks
    def test_insecure_policy_ignores_name_and_ca_but_sends_sni(self) -> Any:
        """
        Insecure mode completes a handshake with a foreign-CA server under a wrong name,
        still sends that name as SNI and presents the client certificate.
        """
        policy = https_policy(
            cacert=None,
            cert=self.pki.client.cert,
            key=self.pki.client.key,
            insecure_skip_verify=True,
        )
        client, server = yield self.handshake(
            policy, b"wrong.example", self.pki.rogue_server, client_ca=self.pki.ca_cert
        )
        self.assertEqual(
            (client.names, server.names, server.server_name),
            (["localhost"], ["node1.example"], b"wrong.example"),
        )

    @defer.inlineCallbacks
    def test_no_sni_for_ip_address(self) -> Any:
        """An IP address is not sent as SNI, verified or not."""
        for policy in (
            https_policy(cacert=self.pki.ca_cert, cert=None, key=None),
            https_policy(cacert=None, cert=None, key=None, insecure_skip_verify=True),
        ):
            self.server_peers.clear()
            client, server = yield self.handshake(
                policy, b"127.0.0.1", self.pki.server, client_ca=None
            )
            self.assertEqual((client.names, server.server_name), (["localhost"], None))
