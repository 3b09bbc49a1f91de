"""Keyed fingerprints: how syncd remembers and shows PHI without holding it.

A medical record number or an e-mail address has so few likely values that a plain hash of it is
as good as the value itself; an HMAC under a key that only this installation's ledger holds is not.
The key is made once per ledger (``tx.cursor.fingerprint_key()``), so a fingerprint is stable
across restarts and hosts that share the ledger, and means nothing anywhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from typing import Final

__all__ = ["KEY_BYTES", "Fingerprints", "normalized_name"]

#: 256 bits: the HMAC-SHA-256 block's worth of key, more than any brute force can cover.
KEY_BYTES: Final = 32


def normalized_name(name: str) -> str:
    """The name as a person reads it: "zelda  canary" and "Zelda Canary" are the same name."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


class Fingerprints:
    """Short, stable, keyed digests of identifiers and contact details."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"a fingerprint key has {KEY_BYTES} bytes, not {len(key)}")
        self._key = key

    def digest(self, kind: str, value: str) -> str:
        """64 bits of HMAC as hex; ``kind`` keeps equal values of different fields apart."""
        mac = hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256)
        return mac.hexdigest()[:16]

    def participant(self, external_id: str) -> str:
        """How a participant external id (often an MRN) is shown in plan, status and logs."""
        return "g-" + self.digest("participant", external_id)[:10]

    def name(self, full_name: str) -> str:
        return self.digest("name", normalized_name(full_name))

    def contact(self, value: str | None) -> str | None:
        """An e-mail address or phone number; None stays None (nothing was sent)."""
        return None if value is None else self.digest("contact", value.strip().casefold())
