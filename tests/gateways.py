"""Gateway helpers for the fault tests; they live in ``syncd.testing.gateway`` now.

Kept so that ``from gateways import HookedGateway, SimulatedCrash`` goes on working.
"""

from __future__ import annotations

from syncd.testing.gateway import FakeSecureVideo, HookedGateway, SimulatedCrash

__all__ = ["FakeSecureVideo", "HookedGateway", "SimulatedCrash"]
