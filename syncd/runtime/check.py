"""``syncd check``: a checklist an operator can act on. Stops at the first failure, naming a fix."""

from __future__ import annotations

from collections.abc import Callable

from syncd.adapters.securevideo import TlsError
from syncd.core.errors import AuthenticationError, ConfigError, SyncdError
from syncd.runtime.app import ledger_revisions, open_gateway, open_outbox, verify_outbox
from syncd.runtime.dbhints import explain_database_error
from syncd.runtime.settings import Settings

#: One item of the checklist: the line to print when it passes; raises when it fails.
CheckStep = Callable[[Settings], str]


def _hl7_only(settings: Settings) -> bool:
    return settings.hl7.enabled and not settings.outbox.url


def _settings(settings: Settings) -> str:
    if not _hl7_only(settings):
        settings.require_outbox_url()
    settings.require_credentials()
    return f"settings (config file: {settings.describe()['config_file'] or 'none'})"


def _outbox(settings: Settings) -> str:
    if _hl7_only(settings):
        return "outbox: none set, the HL7 inbox is the only source (SYNCD_HL7__ENABLED)"
    reader = open_outbox(settings)
    try:
        verify_outbox(settings, reader)
    finally:
        reader.dispose()
    return f"outbox {settings.outbox.table} readable, columns as the contract says"


def _ledger(settings: Settings) -> str:
    dialect, current, head = ledger_revisions(settings)
    if current != head:
        if dialect == "sqlite":
            return f"ledger at {current or 'empty'}; SQLite is migrated to {head} on start"
        raise SyncdError(f"ledger at {current or 'empty'}, needs {head} — run `syncd migrate`")
    return f"ledger at head ({head})"


def _credentials(settings: Settings) -> str:
    with open_gateway(settings) as client:
        try:
            client.probe()
        except AuthenticationError as exc:
            raise SyncdError(
                f"{exc} — check SYNCD_SECUREVIDEO__API_KEY and SYNCD_SECUREVIDEO__API_SECRET"
            ) from None
        except TlsError as exc:
            raise SyncdError(
                f"{exc} — behind a TLS-inspecting proxy, set SYNCD_SECUREVIDEO__CA_BUNDLE_FILE "
                "to its CA certificate (PEM)"
            ) from None
    return f"SecureVideo accepted the credentials ({settings.securevideo.base_url})"


CHECKS: tuple[tuple[str, CheckStep], ...] = (
    ("settings", _settings),
    ("outbox", _outbox),
    ("ledger", _ledger),
    ("credentials", _credentials),
)


def run_checks(settings: Settings, *, out: Callable[[str], None] = print) -> int:
    for name, check in CHECKS:
        try:
            detail = check(settings)
        except (ConfigError, SyncdError) as exc:
            out(f"[FAIL] {name}: {exc}")
            return 1
        except Exception as exc:
            # Names the database and the fix of the failure's class (login, host, grant...).
            described = explain_database_error(exc, settings)
            if described is None:
                raise
            out(f"[FAIL] {name}: {described}")
            return 1
        out(f"[ ok ] {detail}")
    return 0
