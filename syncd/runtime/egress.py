"""Checks for the settings of the way out to SecureVideo: the egress proxy and the CA bundle.

Kept apart from ``settings.py`` (which holds the fields) so that module stays short; both checks
run when the settings are loaded, so a bad value stops the start with one line.  Neither message
repeats the proxy URL: it may carry the proxy's password.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = ["check_ca_bundle_file", "check_proxy_url", "masked_proxy_url"]

_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


def check_proxy_url(value: str | None) -> str | None:
    """An ``http://`` or ``https://`` proxy URL with a host (and a port when it is not the
    scheme's); blank means no proxy."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in {"http", "https"}:
        raise ValueError(
            "must be an http:// or https:// proxy URL, e.g. http://proxy.example.internal:3128 "
            "(the scheme is how syncd talks to the proxy; the tunnel to SecureVideo is always TLS)"
        )
    if not host:
        raise ValueError("must name the proxy's host, e.g. http://proxy.example.internal:3128")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise ValueError("must be the proxy's scheme, host and port only (no path or query)")
    return text.rstrip("/")


def masked_proxy_url(value: str | None) -> str | None:
    """The proxy URL with its password (if any) replaced by ``***``, for ``describe``."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.password is None:
        return value
    user = parts.username or ""
    netloc = f"{user}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_ca_bundle_file(value: Path | None) -> Path | None:
    """A readable PEM file of CA certificates that OpenSSL accepts; blank means the default
    trust store."""
    if value is None or not str(value).strip():
        return None
    path = value.expanduser()
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot read the CA bundle {path}: {reason}") from None
    if _PEM_CERTIFICATE not in text:
        raise ValueError(
            f"{path} is not a PEM CA bundle (no '{_PEM_CERTIFICATE}' line); convert a DER "
            "certificate with `openssl x509 -inform der -in ca.der -out ca.pem`"
        )
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, ValueError) as exc:
        # e.g. "[X509] PEM lib (_ssl.c:4154)": OpenSSL's words, with no value from the file.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{path} holds a certificate OpenSSL cannot load: {reason}") from None
    return path
