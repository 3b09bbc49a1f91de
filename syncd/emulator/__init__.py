"""A faithful stand-in for SecureVideo's REST API: the demo's peer and the chaos tests' adversary.

There is no public SecureVideo sandbox, so this is the only thing syncd's client ever talks to in
tests.  `EmulatorState` is the account (thread-safe, no HTTP); `Emulator` serves it over HTTP with
fault injection (`Emulator.faults`) and a call log (`Emulator.calls`).

Rate-based faults (`Faults.fail_rate`, `throttle_rate`, `drop_after_apply_rate`,
`delay_after_apply_rate`) are a pure function of the request, not of the order requests arrive
in: each plan hashes, with a key made from its seed, the request's identity (`request_identity`:
method, path, query and JSON body, with SessionIds and ParticipationIds in the path replaced by the
host and ExternalSessionId they name) together with how many times it saw that same request.  The
same requests meet the same faults whichever of a client's threads sends first, so a chaos run is
reproducible from its seeds.  Counted faults (`fail_next`, ...) hit the next calls to arrive.

For trying syncd by hand: `StateFile` keeps the account in a file across restarts, and
`simulate_visit` (over HTTP, ``POST /emulator/visit/{SessionId}``) makes a session's participants
connect so that it becomes billable.  `tls_context` serves HTTPS with a given certificate.
"""

from syncd.emulator.persist import StateFile, StateFileError
from syncd.emulator.server import (
    FAULT_KINDS,
    MUTATING_METHODS,
    Emulator,
    Faults,
    RecordedCall,
    request_identity,
    serve,
    tls_context,
)
from syncd.emulator.state import (
    DEFAULT_HOSTS,
    ApiError,
    EmulatorState,
    HostUser,
    InvalidRequestError,
    PacketGiven,
    ParticipantRecord,
    SessionRecord,
    UnknownResourceError,
    demo_hosts,
)
from syncd.emulator.visits import simulate_visit

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
    "PacketGiven",
    "ParticipantRecord",
    "RecordedCall",
    "SessionRecord",
    "StateFile",
    "StateFileError",
    "UnknownResourceError",
    "demo_hosts",
    "request_identity",
    "serve",
    "simulate_visit",
    "tls_context",
]
