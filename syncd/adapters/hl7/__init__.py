"""HL7 v2 scheduling messages (SIU) over MLLP: the one package that imports the ``hl7`` library.

``mapping`` turns a message into the outbox contract's whole-appointment row (or the ACK code and
HL7 location of what is wrong), ``ack`` builds the acknowledgements, ``mllp`` frames and serves.
"""

from syncd.adapters.hl7.ack import ack_message
from syncd.adapters.hl7.mapping import Hl7Mapping, Mapped, Refused, map_message
from syncd.adapters.hl7.mllp import MllpListener, Outcome

__all__ = [
    "Hl7Mapping",
    "Mapped",
    "MllpListener",
    "Outcome",
    "Refused",
    "ack_message",
    "map_message",
]
