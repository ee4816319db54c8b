"""TLS contexts for the DICOM listener and the web server (BCP 195 / RFC 9325 profile).

DICOM's secure transport connection profiles (PS3.15 B.9 "BCP 195 TLS Secure Transport Connection
Profile") ask for TLS 1.2 or newer with the BCP 195 recommended cipher suites: ECDHE/DHE key
exchange with AES-GCM (or ChaCha20-Poly1305); TLS 1.3 suites are all acceptable.
"""

from __future__ import annotations

import ssl
from pathlib import Path

#: TLS 1.2 cipher suites of BCP 195 (RFC 9325 section 4.2), OpenSSL names.
BCP195_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


def server_context(
    cert: Path, key: Path, ca: Path | None = None, *, require_client_cert: bool = False
) -> ssl.SSLContext:
    """A server-side context: TLS 1.2+, BCP 195 ciphers, our certificate; with ``ca``, client
    certificates signed by it are verified (required when ``require_client_cert``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    ctx.load_cert_chain(str(cert), str(key))
    if ca is not None and str(ca) not in ("", "."):
        ctx.load_verify_locations(cafile=str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client-side context verifying the server against ``ca``, optionally with our certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def peer_subject(sock: object) -> str:
    """The commonName of a TLS peer's verified certificate, or ``""``."""
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return ""
    try:
        cert = getpeercert()
    except (ValueError, OSError):
        return ""
    for rdn in (cert or {}).get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return str(v)
    return ""
