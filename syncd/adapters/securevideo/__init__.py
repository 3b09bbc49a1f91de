"""SecureVideo over HTTP: the one package in syncd that imports httpx.

``client`` is the gateway (``SecureVideoClient``, an ``httpx.Client`` underneath), ``transport``
the lanes that bound the requests on the wire, ``wire`` the JSON as pydantic models, ``mapping``
the translation between them and the domain, ``routes`` the paths and their templates, ``gate``
the Retry-After gate and the rate limit.
Keeping httpx in here keeps a change of HTTP library to this package.
"""

from syncd.adapters.securevideo.client import ResponseHook, SecureVideoClient, TlsError
from syncd.adapters.securevideo.gate import parse_retry_after
from syncd.adapters.securevideo.mapping import (
    history_record,
    new_participant,
    parse_history,
    remote_participant,
    remote_session,
)
from syncd.adapters.securevideo.transport import Egress

__all__ = [
    "Egress",
    "ResponseHook",
    "SecureVideoClient",
    "TlsError",
    "history_record",
    "new_participant",
    "parse_history",
    "parse_retry_after",
    "remote_participant",
    "remote_session",
]
