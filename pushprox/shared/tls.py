# -*- test-case-name: tests.test_tls -*-
"""
TLS for both sides of pushprox: policies for the client's outgoing connections, the
proxy's listening context, and certificate identity checks with service-identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity.exceptions import CertificateError, VerificationError
from service_identity.hazmat import DNS_ID, DNSPattern, verify_service_identity
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

if TYPE_CHECKING:
    # Twisted exports this interface only from its private module.
    from pushprox.shared.twisted_internals import IOpenSSLTrustRoot

__all__ = [
    "INTERMEDIATE_CIPHER_SUITES",
    "ClientTLSPolicy",
    "ServerTLS",
    "TLSProfile",
    "certificate_names_fqdn",
    "cipher_suites",
    "client_tls_endpoint",
    "https_policy",
    "load_certificates",
    "peer_names",
    "server_context_factory",
    "tls_version",
]

#: Creators kept by a client policy, one per host name.
_CREATOR_CACHE_SIZE = 64


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _load_x509(path: str, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{what} {path} holds no valid PEM certificate") from None


def load_certificates(path: str) -> list[Certificate]:
    """Load every certificate of the PEM bundle at C{path}."""
    return [
        Certificate(X509.from_cryptography(c))
        for c in _load_x509(path, "certificate file")
    ]


def _load_private_key(path: str) -> PrivateKeyTypes:
    data = _read(path, "private key file")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography's way of saying the key is encrypted.
        raise ValueError(f"private key file {path} is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"private key file {path} holds no valid PEM private key") from None


_SUPPORTED_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


@dataclass(frozen=True)
class _Identity:
    """A certificate, the certificates that complete its chain, and its private key."""

    certificate: x509.Certificate
    chain: list[x509.Certificate]
    private_key: PrivateKeyTypes

    def options(self) -> dict[str, Any]:
        """Return these as L{CertificateOptions} keyword arguments."""
        # Twisted annotates these as pyOpenSSL objects but hands them straight to
        # pyOpenSSL's Context, which (pyOpenSSL 26.4 here) emits a DeprecationWarning for
        # its own X509 and PKey types and wants cryptography's.
        return {
            "privateKey": self.private_key,
            "certificate": self.certificate,
            "extraCertChain": list(self.chain),
        }


def _options(identity: _Identity | None) -> dict[str, Any]:
    return {} if identity is None else identity.options()


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _load_identity(cert: str, key: str) -> _Identity:
    """Load a certificate (followed by its chain) and the private key that matches it."""
    chain = _load_x509(cert, "certificate file")
    private_key = _load_private_key(key)
    if not isinstance(private_key, _SUPPORTED_KEYS):
        raise ValueError(f"private key file {key} holds an unsupported key type")
    if _spki(chain[0].public_key()) != _spki(private_key.public_key()):
        raise ValueError(f"private key file {key} does not match certificate file {cert}")
    return _Identity(certificate=chain[0], chain=chain[1:], private_key=private_key)


def _client_identity(cert: str | None, key: str | None) -> _Identity | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("a client certificate needs both cert and key, not only one of them")
    return _load_identity(cert, key)


#: Mozilla's "intermediate" TLS 1.2 cipher suites, ECDHE only (Twisted offers DHE only
#: with explicit parameters), by their IANA names, as exporter-toolkit's cipher_suites.
INTERMEDIATE_CIPHER_SUITES = (
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
)

#: TLS 1.2 cipher suites by IANA name (Go's names, which exporter-toolkit takes) and the
#: OpenSSL name of each.  TLS 1.3's suites are all AEAD and are not chosen.
_OPENSSL_CIPHER_NAMES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}

#: The lowest TLS versions one may ask for, by exporter-toolkit's names.
TLS_VERSIONS = {"TLS12": TLSVersion.TLSv1_2, "TLS13": TLSVersion.TLSv1_3}


def cipher_suites(value: str) -> tuple[str, ...]:
    """Parse a comma-separated list of TLS 1.2 cipher suites by IANA name."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names:
        raise ValueError("no cipher suite given")
    unknown = [name for name in names if name not in _OPENSSL_CIPHER_NAMES]
    if unknown:
        raise ValueError(f"unknown TLS 1.2 cipher suite {', '.join(unknown)} (IANA names, "
                         f"e.g. {INTERMEDIATE_CIPHER_SUITES[1]})")
    return names


def tls_version(value: str) -> str:
    """Parse the lowest TLS version: TLS12 or TLS13 (exporter-toolkit's names)."""
    if value not in TLS_VERSIONS:
        raise ValueError(f"{value} is not one of {', '.join(TLS_VERSIONS)}")
    return value


@dataclass(frozen=True)
class TLSProfile:
    """
    What TLS is offered: by default Mozilla's "intermediate" profile, TLS 1.2 with AEAD
    ciphers and forward secrecy only, and TLS 1.3.
    """

    min_version: str = "TLS12"
    cipher_suites: tuple[str, ...] = INTERMEDIATE_CIPHER_SUITES
    max_version: str = "TLS13"

    def options(self) -> dict[str, Any]:
        """Return this profile as L{CertificateOptions} keyword arguments."""
        options = {
            "raiseMinimumTo": TLS_VERSIONS[self.min_version],
            "acceptableCiphers": _acceptable_ciphers(self.cipher_suites),
        }
        if self.max_version != "TLS13":
            options["lowerMaximumSecurityTo"] = TLS_VERSIONS[self.max_version]
        return options


_CIPHER_CACHE: dict[tuple[str, ...], AcceptableCiphers] = {}


def _acceptable_ciphers(suites: tuple[str, ...]) -> AcceptableCiphers:
    # Expanding a cipher string makes an OpenSSL connection: done once per list.
    ciphers = _CIPHER_CACHE.get(suites)
    if ciphers is None:
        # TLS 1.3's suites are kept by OpenSSL whatever the TLS 1.2 list says.
        ciphers = _CIPHER_CACHE[suites] = AcceptableCiphers.fromOpenSSLCipherString(
            ":".join(_OPENSSL_CIPHER_NAMES[name] for name in suites))
    return ciphers


@dataclass(frozen=True)
class _ClientTLS:
    """What the client's TLS is made of at one time: trust root and certificate."""

    trust_root: IOpenSSLTrustRoot | None
    identity: _Identity | None


@implementer(IOpenSSLClientConnectionCreator)
class _CurrentCreator:
    """Makes each connection with the creator its policy holds for the host at that time."""

    def __init__(self, policy: ClientTLSPolicy, hostname: bytes) -> None:
        self._policy = policy
        self._hostname = hostname

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """Create a client TLS connection with the certificates in force now."""
        creator = self._policy.current_creator(self._hostname)
        return creator.clientConnectionForTLS(tlsProtocol)


@implementer(IPolicyForHTTPS)
class ClientTLSPolicy:
    """
    The client's TLS policy, whose files (CA bundle, certificate, key) can be re-read.

    Endpoints keep the creator they were given once; the creators handed out here ask
    the policy for the certificates in force at each new connection, so a reload
    applies to the next connection and leaves those already made alone.
    """

    def __init__(self, *, cacert: str | None, cert: str | None, key: str | None,
                 insecure_skip_verify: bool, profile: TLSProfile | None) -> None:
        self._cacert = None if insecure_skip_verify else cacert
        self._cert = cert
        self._key = key
        self._insecure = insecure_skip_verify
        self._profile = profile
        #: The files read, for watching them.
        self.paths = tuple(path for path in (self._cacert, cert, key) if path)
        self._state = self._load()
        self._creators: dict[bytes, IOpenSSLClientConnectionCreator] = {}
        self._insecure_options: CertificateOptions | None = None

    def _load(self) -> _ClientTLS:
        identity = _client_identity(self._cert, self._key)
        trust_root = None
        if self._cacert is not None:
            trust_root = trustRootFromCertificates(load_certificates(self._cacert))
        return _ClientTLS(trust_root=trust_root, identity=identity)

    def reload(self) -> None:
        """Re-read the files; raise ValueError and keep the ones in force if one is bad."""
        self._state = self._load()
        self._creators.clear()
        self._insecure_options = None

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        """Return a connection creator for C{hostname} (the port does not matter)."""
        return _CurrentCreator(self, hostname)

    def current_creator(self, hostname: bytes) -> IOpenSSLClientConnectionCreator:
        """The creator for C{hostname} with the files in force now."""
        creator = self._creators.get(hostname)
        if creator is not None:
            return creator
        profile = {} if self._profile is None else self._profile.options()
        extra = {**profile, **_options(self._state.identity)}
        if self._insecure:
            if self._insecure_options is None:
                self._insecure_options = CertificateOptions(verify=False, **extra)
            creator = _UnverifiedCreator(self._insecure_options, hostname)
        else:
            creator = optionsForClientTLS(hostname.decode("ascii"),
                                          trustRoot=self._state.trust_root,
                                          extraCertificateOptions=extra)
        # Agent asks for a creator on every new connection; building one means a new SSL
        # context (and, for platform trust, reading the system CA store), so keep a few.
        if len(self._creators) >= _CREATOR_CACHE_SIZE:
            self._creators.clear()
        self._creators[hostname] = creator
        return creator


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    """Make client connections that verify nothing but still send SNI for DNS names."""

    def __init__(self, options: CertificateOptions, hostname: bytes) -> None:
        self._options = options
        text = hostname.decode("ascii")
        self._server_name = None if isIPAddress(text) or isIPv6Address(text) else hostname

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """Create an unverified client TLS connection."""
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


def https_policy(
    *, cacert: str | None, cert: str | None, key: str | None, insecure_skip_verify: bool = False,
    profile: TLSProfile | None = None,
) -> ClientTLSPolicy:
    """
    Build the HTTPS policy of the client's connections, to the proxy or to targets.

    It trusts C{cacert} (else the platform's trust store) and checks the host name,
    presents C{cert}/C{key} when given; insecure mode verifies nothing and ignores C{cacert}.
    It offers C{profile}'s versions and ciphers (Twisted's defaults without one); its
    C{reload()} re-reads the files, for connections made after it.
    """
    return ClientTLSPolicy(
        cacert=cacert, cert=cert, key=key, insecure_skip_verify=insecure_skip_verify,
        profile=profile,
    )


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    A TLS listener's certificate, key and client CA, which can be re-read.

    Each new connection is made with the certificates in force at its start: a reload
    applies to new handshakes and leaves connections already made (held polls) alone.
    With C{client_ca}, clients are asked for a certificate signed by it: a certificate
    that does not verify fails the handshake, but having none is allowed at the TLS layer
    (Prometheus scrapes without one; the HTTP layer decides which paths need one) unless
    C{require_certificate}.
    """

    def __init__(self, *, cert: str, key: str, client_ca: str | None = None,
                 extra_chain: str | None = None, profile: TLSProfile | None = None,
                 require_certificate: bool = False) -> None:
        self._cert = cert
        self._key = key
        self._client_ca = client_ca
        self._require_certificate = require_certificate
        self._extra_chain = extra_chain
        self._profile = profile or TLSProfile()
        #: The files read, for watching them.
        self.paths = tuple(path for path in (cert, key, client_ca, extra_chain) if path)
        self._options, self._certificate = self._load()

    def _load(self) -> tuple[CertificateOptions, x509.Certificate]:
        identity = _load_identity(self._cert, self._key)
        if self._extra_chain is not None:
            identity = _Identity(
                certificate=identity.certificate, private_key=identity.private_key,
                chain=identity.chain + _load_x509(self._extra_chain, "certificate chain file"))
        if self._client_ca is None:
            return (CertificateOptions(**self._profile.options(), **identity.options()),
                    identity.certificate)
        authorities = _load_x509(self._client_ca, "client CA file")
        options = CertificateOptions(
            verify=True,
            caCerts=[X509.from_cryptography(c) for c in authorities],
            requireCertificate=self._require_certificate,
            **self._profile.options(),
            **identity.options(),
        )
        # Twisted does not send the acceptable CA names in the certificate request; clients
        # holding several certificates use them to pick the right one. The context is built
        # once and shared by every connection, so configuring it here applies to all.
        context = options.getContext()
        for authority in authorities:
            context.add_client_ca(authority)
        return options, identity.certificate

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate presented to new connections."""
        return self._certificate

    def reload(self) -> None:
        """Re-read the files; raise ValueError and keep the ones in force if one is bad."""
        self._options, self._certificate = self._load()

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """Create a server TLS connection with the certificates in force now."""
        return self._options.serverConnectionForTLS(tlsProtocol)


def server_context_factory(*, cert: str, key: str, client_ca: str | None,
                           profile: TLSProfile | None = None) -> ServerTLS:
    """Build the TLS of a listener (see L{ServerTLS})."""
    return ServerTLS(cert=cert, key=key, client_ca=client_ca, profile=profile)


def peer_names(transport: object) -> list[str]:
    """Return the lowercase subjectAltName DNS names of a TLS transport's peer certificate."""
    get_peer_certificate = getattr(transport, "getPeerCertificate", None)
    if get_peer_certificate is None:
        return []
    try:
        certificate = get_peer_certificate()
    except NotImplementedError:
        # twisted.internet.ssl.Server, the pre-TLSMemoryBIO transport, has the method
        # only to raise this.
        return []
    if isinstance(certificate, X509):
        certificate = certificate.to_cryptography()
    if not isinstance(certificate, x509.Certificate):
        return []
    try:
        alt_names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [name.lower() for name in alt_names.value.get_values_for_type(x509.DNSName)]


def certificate_names_fqdn(names: list[str], fqdn: str) -> bool:
    """Tell whether a certificate with DNS names C{names} is valid for host C{fqdn}."""
    try:
        service_id = DNS_ID(fqdn)
    except ValueError:
        return False
    patterns = []
    for name in names:
        try:
            patterns.append(DNSPattern.from_bytes(name.encode("ascii")))
        except (UnicodeEncodeError, CertificateError):
            continue
    try:
        verify_service_identity(patterns, obligatory_ids=[service_id], optional_ids=[])
    except (VerificationError, CertificateError):
        return False
    return True


def _wrapped_protocol(tls: IProtocol) -> IProtocol:
    wrapped: IProtocol = tls.wrappedProtocol  # type: ignore[attr-defined]
    return wrapped


@implementer(IStreamClientEndpoint)
class _ClientTLSEndpoint:
    """``wrapped``'s connections with TLS on top, as ``wrapClientTLS`` makes them."""

    def __init__(self, creator: IOpenSSLClientConnectionCreator,
                 wrapped: IStreamClientEndpoint, clock: IReactorTime | None) -> None:
        self._creator = creator
        self._wrapped = wrapped
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect ``protocolFactory``'s protocol over TLS; fires with that protocol."""
        factory = TLSMemoryBIOFactory(self._creator, True, protocolFactory, clock=self._clock)
        connecting: Deferred[IProtocol] = self._wrapped.connect(factory)
        return connecting.addCallback(_wrapped_protocol)


def client_tls_endpoint(creator: IOpenSSLClientConnectionCreator,
                        wrapped: IStreamClientEndpoint,
                        clock: IReactorTime | None = None) -> IStreamClientEndpoint:
    """
    What ``twisted.internet.endpoints.wrapClientTLS`` returns, made from public names only.

    ``wrapClientTLS`` refuses to work when ``twisted.internet.endpoints`` was imported
    without pyOpenSSL, which the commands do when no option names TLS
    (``pushprox.shared.footprint``); an ``https://`` target is then scraped through this.
    """
    return _ClientTLSEndpoint(creator, wrapped, clock)
