"""Gateway helpers for the fault tests; they live in ``syncd.testing.gateway`` now.

Kept so that ``from gateways import HookedGateway, SimulatedCrash`` goes on working.
"""

from __future__ import annotations

from syncd.testing.gateway import FakeSecureVideo
from syncd.testing.hooks import HookedGateway, SimulatedCrash

__all__ = ["FakeSecureVideo", "HookedGateway", "SimulatedCrash"]
