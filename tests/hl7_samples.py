"""SIU messages for the tests, written by hand (no real patient data): 2.3 and 2.5.1 shapes."""

from __future__ import annotations

import socket
from collections.abc import Sequence

START, END = b"\x0b", b"\x1c\r"


def fields(name: str, values: dict[int, str]) -> str:
    """A segment with each numbered field where it belongs (the rest empty)."""
    top = max(values, default=0)
    return "|".join([name, *(values.get(i, "") for i in range(1, top + 1))])


def siu(
    trigger: str = "S12",
    *,
    control_id: str = "MSG00001",
    version: str = "2.5.1",
    sent: str = "20261205083000-0500",
    filler_id: str | None = "APT-1",
    placer_id: str | None = "PL-1",
    ais_start: str | None = "20261210093000-0500",
    aip_start: str | None = None,
    sch_start: str | None = None,
    filler_status: str = "Booked",
    provider: str | None = "prov-001",
    patient_id: str | None = "pat-1",
    family: str = "Canary",
    given: str = "Zelda",
    email: str | None = "canary1@phi.example",
    cell: str | None = "5557770001",
    email_as: str = "equipment",
    pid: bool = True,
    reason: str = "Chest pain^Chest pain",
) -> str:
    """One SIU message; ``None`` leaves that field out."""
    # 2.3 has no message structure component in MSH-9; SIU_S12 is every SIU's structure.
    kind = f"SIU^{trigger}" if version.startswith("2.3") else f"SIU^{trigger}^SIU_S12"
    header = ["EHR", "CLINIC", "SYNCD", "SV", sent, "", kind, control_id, "P", version]
    msh = "MSH|^~\\&|" + "|".join(header)
    sch_values = {7: reason, 25: filler_status}
    if placer_id is not None:
        sch_values[1] = f"{placer_id}^EHR"
    if filler_id is not None:
        sch_values[2] = f"{filler_id}^EHR"
    if sch_start is not None:
        sch_values[11] = f"^^30^{sch_start}"
    segments = [msh, fields("SCH", sch_values)]
    if pid:
        phones: list[str] = []
        if email is not None:
            # Equipment type Internet (2.5.1 style) or use code NET (older senders).
            phones.append(f"^NET^Internet^{email}" if email_as == "equipment" else f"^NET^^{email}")
        if cell is not None:
            phones.append(f"^PRN^CP^^1^{cell[:3]}^{cell[3:]}")
        pid_values = {1: "1", 5: f"{family}^{given}", 7: "19800101", 13: "~".join(phones)}
        if patient_id is not None:
            pid_values[3] = f"{patient_id}^^^EHR^MR"
        segments.append(fields("PID", pid_values))
    segments.append("RGS|1")
    if ais_start is not None:
        segments.append(fields("AIS", {1: "1", 3: "VIDEO^Video visit", 4: ais_start}))
    aip: dict[int, str] = {1: "1"}
    if provider is not None:
        aip[3] = f"{provider}^Doctor^Dana"
    if aip_start is not None:
        aip[6] = aip_start
    segments.append(fields("AIP", aip))
    return "\r".join(segments) + "\r"


class MllpClient:
    """A real MLLP client over loopback: one connection, one ACK per message (or none)."""

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self._buffer = b""

    def send(self, message: str | bytes) -> str | None:
        """The ACK's text, or None when the server closed the connection without one."""
        body = message.encode() if isinstance(message, str) else message
        self.sock.sendall(START + body + END)
        return self.read()

    def read(self) -> str | None:
        while END not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        frame, self._buffer = self._buffer.split(END, 1)
        return frame.lstrip(START).decode()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def segment(ack: str, name: str) -> list[str]:
    for line in ack.split("\r"):
        if line.startswith(name + "|"):
            return line.split("|")
    return []


def acks(client: MllpClient, messages: Sequence[str]) -> list[str | None]:
    return [client.send(m) for m in messages]
