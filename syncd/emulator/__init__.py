"""A faithful stand-in for SecureVideo's REST API: the demo's peer and the chaos tests' adversary.

There is no public SecureVideo sandbox, so this is the only thing syncd's client ever talks to in
tests.  `EmulatorState` is the account (thread-safe, no HTTP); `Emulator` serves it over HTTP with
fault injection (`Emulator.faults`) and a call log (`Emulator.calls`).
"""

from syncd.emulator.server import (
    FAULT_KINDS,
    MUTATING_METHODS,
    Emulator,
    Faults,
    RecordedCall,
    serve,
)
from syncd.emulator.state import (
    DEFAULT_HOSTS,
    ApiError,
    EmulatorState,
    HostUser,
    InvalidRequestError,
    ParticipantRecord,
    SessionRecord,
    UnknownResourceError,
    demo_hosts,
)

__all__ = [
    "DEFAULT_HOSTS",
    "FAULT_KINDS",
    "MUTATING_METHODS",
    "ApiError",
    "Emulator",
    "EmulatorState",
    "Faults",
    "HostUser",
    "InvalidRequestError",
    "ParticipantRecord",
    "RecordedCall",
    "SessionRecord",
    "UnknownResourceError",
    "demo_hosts",
    "serve",
]
