"""The hub's one TLS client set-up for its MQTT connections (operator tools, the collector).

Mutual TLS to the broker: the broker's certificate must chain to the pinned CA and name the host
(``check_hostname``), and the hub presents its own certificate. paho clients take the context
with ``tls_set_context``; the collector wraps its own socket with it.
"""

from __future__ import annotations

import ssl


def client_context(ca: str, cert: str = "", key: str = "") -> ssl.SSLContext:
    """A TLS client context that trusts only `ca` and presents `cert`/`key` (when given).

    Raises ValueError naming the files when one cannot be read or does not fit."""
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
        ctx.load_verify_locations(cafile=ca)
        if cert:
            ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"TLS files (ca/cert/key): {e}") from None
    return ctx
