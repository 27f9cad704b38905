"""TLS for the gRPC listener (SPEC §5.2): plaintext by default; TLS 1.3 with a certificate; mTLS with a client CA."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: Path | None, key: Path | None, client_ca: Path | None) -> ssl.SSLContext | None:
    """None (plaintext) without a certificate; a client CA makes a client certificate from it mandatory."""
    if cert is None or key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
