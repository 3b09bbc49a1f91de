"""The ``syncd`` command line.  Thin: parse, load settings once, ask the composition root
(``syncd.runtime.app``) for what the command needs, run it, map the result to an exit code.

Exit codes: 0 done; 1 some appointments parked or failed (``once``), or a check failed; 2 could not
run at all (settings, database, credentials) — always with one line on stderr that says why; 3
(``once``) the outbox went back (a restored backup, say) and was read again from its start.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import structlog

from syncd import __version__
from syncd.core.errors import AuthenticationError, ConfigError, SyncdError
from syncd.runtime.log import STDERR, configure_logging
from syncd.runtime.settings import Settings, load_settings

if TYPE_CHECKING:
    from syncd.runtime.app import Wiring

EXIT_OK, EXIT_SOME_FAILED, EXIT_CANNOT_RUN, EXIT_REWOUND = 0, 1, 2, 3

Command = Callable[[argparse.Namespace, "Wiring"], int]


def main(argv: Sequence[str] | None = None, *, wiring: Wiring | None = None) -> int:
    """``wiring``: how the composition root puts the parts together; the defaults unless
    ``syncd.testing.control`` asks otherwise."""
    parser = _parser()
    args = parser.parse_args(argv)
    command: Command = args.func
    try:
        if wiring is None:
            # Imported here, not at the top: ``--help`` and ``--version`` stay fast.
            from syncd.runtime.app import Wiring

            wiring = Wiring()
        return command(args, wiring)
    except ConfigError as exc:
        return _fail(str(exc))
    except (SyncdError, AuthenticationError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from syncd.runtime.dbhints import explain_database_error

        # Names the database, what failed and the fix of its class (login, host, grant...).
        described = explain_database_error(exc, _loaded[-1] if _loaded else None)
        if described is None:
            raise
        return _fail(described)


def _fail(line: str) -> int:
    print(f"syncd: {line}", file=sys.stderr)
    return EXIT_CANNOT_RUN


#: the settings the running command loaded, for the fix a database error's line names
_loaded: list[Settings] = []


def _settings(*, report: bool = False) -> Settings:
    """Settings, and logging configured from them.

    Commands whose stdout is a report (plan, status, check...) log to stderr, so that their output
    stays parseable; the daemon and ``once`` log JSON lines to stdout, as containers expect.
    """
    settings = load_settings()
    _loaded[:] = [settings]
    configure_logging(settings.log.format, settings.log.level, stream=STDERR if report else None)
    return settings


# --- commands -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, wiring: Wiring) -> int:
    from syncd.runtime.app import open_daemon
    from syncd.runtime.daemon import install_stop_handlers

    settings = _settings()
    stop = threading.Event()
    install_stop_handlers(stop)
    daemon = open_daemon(settings, stop=stop, wiring=wiring)
    if daemon is None:
        return EXIT_OK
    with daemon:
        return daemon.run()


def cmd_outcomes(args: argparse.Namespace, wiring: Wiring) -> int:
    from syncd.runtime.app import build_app

    settings = _settings(report=True)
    with build_app(settings, wiring=wiring) as app:
        report = app.outcome_collector().collect()
        links = app.link_publisher().publish()
    print(
        f"outcomes: {report.targets} managed session(s) not final; read the account's sessions "
        f"{report.account_reads} time(s) and {report.hosts_read} host(s) "
        f"({report.host_failures} failed) and history {report.history_reads} time(s); "
        f"{report.sessions_changed} session(s) and {report.participants_changed} participant(s) "
        f"changed, {report.finalized} final"
        + ("; history could not be read" if report.history_failed else "")
    )
    if settings.links.enabled or links.removed:
        print(
            f"links: {links.put} written, {links.removed} removed; read {links.hosts_read} "
            f"host(s) ({links.host_failures} failed)"
        )
    return EXIT_OK if report.clean and not links.host_failures else EXIT_SOME_FAILED


def cmd_links(args: argparse.Namespace, wiring: Wiring) -> int:
    from syncd.runtime.app import build_app
    from syncd.sync.links import UnknownAppointmentError

    appointment_id = args.appointment_id.strip()
    if not appointment_id:
        return _fail("links: APPOINTMENT_ID is empty")
    settings = _settings(report=True)
    with build_app(settings, wiring=wiring) as app:
        try:
            links = app.links(appointment_id)
        except UnknownAppointmentError as exc:
            return _fail(f"links: {exc}")
    if links.problem is not None:
        print(f"syncd: links: appointment {appointment_id}: {links.problem}", file=sys.stderr)
        return EXIT_SOME_FAILED
    print(f"appointment {appointment_id}, session {links.session_id}:")
    for g in links.guests:
        index = "-" if g.index is None else str(g.index)
        how = f"delivery {g.deliver}" if g.deliver else "         "
        print(f"  guest {index:>2}  {g.fingerprint}  {how}  {g.url or g.problem}")
    if links.unmanaged:
        print(f"  ({links.unmanaged} guest(s) added in SecureVideo itself, not from the EHR)")
    return EXIT_OK if all(g.url for g in links.guests) else EXIT_SOME_FAILED


def cmd_history(args: argparse.Namespace, wiring: Wiring) -> int:
    from datetime import UTC, datetime

    from syncd.sync.billing import PeriodError, parse_period, run_history
    from syncd.sync.billing_render import render, skipped_lines

    try:
        period = parse_period(args.month, args.start, args.end)
    except PeriodError as exc:
        return _fail(f"history: {exc}")
    from syncd.runtime.app import build_app

    settings = _settings(report=True)
    with build_app(settings, wiring=wiring) as app:
        now = datetime.now(UTC).replace(tzinfo=None)
        report = run_history(app.ledger, app.gateway, period, now=now)
    sys.stdout.write(render(report, args.format))
    for line in skipped_lines(report):
        print(f"syncd: {line}", file=sys.stderr)
    if report.api_orphans:
        # Not a failure of the report, but something to look into: said where it is seen.
        print(
            f"syncd: history: ALARM: {len(report.api_orphans)} session(s) made through the API "
            "are unknown to the ledger (another integration, or a lost ledger): "
            + ", ".join(str(s.session_id) for s in report.api_orphans),
            file=sys.stderr,
        )
    return EXIT_SOME_FAILED if report.skipped else EXIT_OK


def cmd_once(args: argparse.Namespace, wiring: Wiring) -> int:
    from syncd.runtime.app import build_app
    from syncd.runtime.daemon import run_one_pass

    settings = _settings()
    with build_app(settings, wiring=wiring) as app:
        report = run_one_pass(app.synchronizer, app.lease)
    if report is None:
        from syncd.sync.lease import describe_holder

        # Not a failure to fix (exit 2): the running instance does this work.
        other = describe_holder(app.lease.other if app.lease is not None else None)
        print(
            "syncd: another syncd instance holds the leader lease on this ledger "
            f"({other}); nothing was done",
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    if report.auth_error is not None:
        return _fail(report.auth_error)
    if report.rewound and report.rewind is not None:
        print(
            f"syncd: the outbox went back (newest event {report.rewind.newest_event_id}, cursor "
            f"was {report.rewind.from_event_id}): read again from its start, and the "
            f"{report.ingested} appointment(s) whose newest row differs from the one applied "
            "were worked on (see outbox_rewound)",
            file=sys.stderr,
        )
        return EXIT_REWOUND
    return EXIT_OK if report.clean else EXIT_SOME_FAILED


def cmd_plan(args: argparse.Namespace, wiring: Wiring) -> int:
    from syncd.runtime.app import build_app

    settings = _settings(report=True)
    with build_app(settings, wiring=wiring) as app:
        previews = app.synchronizer.preview()
    pending = False
    for p in previews:
        if p.problem:
            pending = True
            print(f"{p.appointment_id}: cannot apply: {p.problem}")
        elif not p.operations:
            print(f"{p.appointment_id}: no changes")
        else:
            pending = True
            print(f"{p.appointment_id}: {_notices(p.notices)} to patients")
            for op in p.operations:
                extra = {k: v for k, v in op.items() if k not in ("op", "appointment_id")}
                details = " ".join(f"{k}={_plain(v)}" for k, v in extra.items())
                print(f"  {op['op']:<20} {details}".rstrip())
    if not previews:
        print("nothing pending")
    elif pending:
        # What a bulk change costs patients, before it happens: counts only, never recipients.
        touched = sum(1 for p in previews if p.notices)
        total = sum(p.notices for p in previews)
        print(f"total: {_notices(total)} to patients across {touched} appointment(s)")
    return 2 if (args.detailed_exitcode and pending) else EXIT_OK


def _notices(count: int) -> str:
    return f"{count} notice" + ("" if count == 1 else "s")


def _plain(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def cmd_status(args: argparse.Namespace, wiring: Wiring) -> int:
    from syncd.runtime.status import collect_status, render_status

    settings = _settings(report=True)
    status = collect_status(settings)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print(render_status(status))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, wiring: Wiring) -> int:
    from datetime import UTC, datetime

    from syncd.runtime.app import ledger_of

    settings = _settings(report=True)
    with ledger_of(settings) as ledger:
        if not (args.all_parked or args.appointment_id):
            return _fail("retry: give an APPOINTMENT_ID or --all-parked")
        now = datetime.now(UTC).replace(tzinfo=None)
        with ledger.begin() as tx:
            if args.all_parked:
                count = tx.appointments.unpark_all(now)
            else:
                count = 1 if tx.appointments.unpark(args.appointment_id, now) else 0
    if args.appointment_id and not count:
        print(f"{args.appointment_id} is not parked")
        return EXIT_SOME_FAILED
    print(f"{count} appointment(s) will be retried on the next pass")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace, wiring: Wiring) -> int:
    from syncd.runtime.app import migrate_ledger

    settings = _settings(report=True)
    before, after = migrate_ledger(settings, args.revision)
    print(f"ledger migrated: {before or 'empty'} -> {after}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace, wiring: Wiring) -> int:
    from syncd.runtime.check import run_checks

    try:
        settings = _settings(report=True)
    except ConfigError as exc:
        print(f"[FAIL] settings: {exc}")
        return EXIT_SOME_FAILED
    return run_checks(settings)


def cmd_healthcheck(args: argparse.Namespace, wiring: Wiring) -> int:
    from syncd.runtime.health import heartbeat_path
    from syncd.runtime.health_http import read_heartbeat

    settings = _settings(report=True)
    healthy, line = read_heartbeat(heartbeat_path(settings))
    print(line)
    return EXIT_OK if healthy else EXIT_SOME_FAILED


def cmd_demo(args: argparse.Namespace, wiring: Wiring) -> int:
    from syncd.runtime.demo import run_demo

    return run_demo(args.dir, wiring=wiring)


def cmd_emulator(args: argparse.Namespace, wiring: Wiring) -> int:
    import ssl
    from pathlib import Path

    from syncd.emulator import Emulator, StateFileError, serve, tls_context

    if (args.tls_cert is None) != (args.tls_key is None):
        return _fail("emulator: give --tls-cert and --tls-key together")
    try:
        tls = None if args.tls_cert is None else tls_context(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        return _fail(f"emulator: --tls-cert/--tls-key cannot be loaded: {_one_line(exc)}")
    configure_logging("console" if sys.stdout.isatty() else "json", "INFO")
    log = structlog.get_logger("syncd.emulator")

    def ready(emulator: Emulator) -> None:
        log.info("emulator_listening", host=args.host, port=emulator.port, tls=tls is not None)
        # External ids and user ids only: they are what SYNCD_OUTBOX rows name as providers.
        for host in emulator.state.hosts():
            log.info(
                "emulator_host", provider_external_id=host.external_id, host_user_id=host.user_id
            )

    try:
        serve(
            port=args.port,
            host=args.host,
            api_key=args.api_key,
            api_secret=args.api_secret,
            on_ready=ready,
            tls=tls,
            state_file=None if args.state_file is None else Path(args.state_file),
            passkeys=args.passkeys,
            round_to_quarter_hours=args.round_to_quarter_hours,
            host_change=args.host_change,
        )
    except StateFileError as exc:
        return _fail(f"emulator: --state-file {exc}")
    except OSError as exc:
        return _fail(f"emulator: cannot serve on {args.host}:{args.port}: {_one_line(exc)}")
    return EXIT_OK


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="syncd",
        description="Keeps SecureVideo telehealth sessions in step with EHR appointments.",
    )
    p.add_argument("--version", action="version", version=f"syncd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help_: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_, description=help_)
        cmd.set_defaults(func=func)
        return cmd

    add("run", cmd_run, "Run as a daemon: a pass every SYNCD_SYNC__POLL_INTERVAL_SECONDS.")
    add(
        "once",
        cmd_once,
        "Run one pass and exit (0 all applied, 1 some parked, 2 cannot run, 3 the outbox went "
        "back and was read again).",
    )
    plan = add("plan", cmd_plan, "Show what the next pass would do; changes nothing.")
    plan.add_argument(
        "--detailed-exitcode", action="store_true", help="Exit 2 when changes are pending."
    )
    status = add("status", cmd_status, "Cursor, lag, counts by state, parked appointments.")
    status.add_argument("--json", action="store_true", help="Machine-readable output.")
    retry = add("retry", cmd_retry, "Un-park appointments so the next pass tries them again.")
    retry.add_argument("appointment_id", nargs="?", help="The EHR appointment id.")
    retry.add_argument("--all-parked", action="store_true", help="Every parked appointment.")
    add("outcomes", cmd_outcomes, "Collect visit outcomes from SecureVideo once (see run).")
    links = add(
        "links",
        cmd_links,
        "Print the join URL of each guest of an appointment's session, read from SecureVideo now "
        "(for guests with delivery N, whom SecureVideo sends nothing).  The URLs carry the "
        "connect codes, which are access credentials: hand them to the guest only.",
    )
    links.add_argument("appointment_id", metavar="APPOINTMENT_ID", help="The EHR appointment id.")
    history = add(
        "history",
        cmd_history,
        "Billing reconciliation: SecureVideo's history for a month or date range (UTC), "
        "joined to appointments; no patient data.",
    )
    history.add_argument("--month", metavar="YYYY-MM", help="A calendar month (UTC).")
    history.add_argument("--start", metavar="YYYY-MM-DD", help="First day (UTC), with --end.")
    history.add_argument("--end", metavar="YYYY-MM-DD", help="Last day (UTC), included.")
    history.add_argument(
        "--format", choices=("table", "csv", "json"), default="table", help="Default: table."
    )
    migrate = add("migrate", cmd_migrate, "Bring the ledger schema to the current revision.")
    migrate.add_argument("--revision", default="head", help=argparse.SUPPRESS)
    add("check", cmd_check, "Check settings, outbox, ledger and credentials; name the fix.")
    add(
        "healthcheck",
        cmd_healthcheck,
        "Exit 0 if the running daemon's heartbeat (in the data dir) is fresh and healthy.",
    )
    demo = add("demo", cmd_demo, "Run the whole flow on a sample SQLite EHR and the emulator.")
    demo.add_argument("--dir", default="data/demo", help="Where the demo keeps its files.")
    emu = add(
        "emulator", cmd_emulator, "Serve the SecureVideo emulator for trying a configuration."
    )
    emu.add_argument("--port", type=int, default=8090)
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--api-key", default="demo")
    emu.add_argument("--api-secret", default="demo")
    emu.add_argument(
        "--state-file",
        metavar="PATH",
        help="Keep the account (sessions, participants, billing) in this JSON file: loaded at "
        "start, written after every change and at exit.",
    )
    emu.add_argument("--tls-cert", metavar="PEM", help="Serve HTTPS with this certificate.")
    emu.add_argument("--tls-key", metavar="PEM", help="The private key of --tls-cert.")
    emu.add_argument(
        "--passkeys",
        action="store_true",
        help="The account option: guests made through the API get a Passkey (else null).",
    )
    emu.add_argument(
        "--round-to-quarter-hours",
        action="store_true",
        help="Put scheduled times on minute 0, 15, 30 or 45 (one reading of the API documents).",
    )
    emu.add_argument(
        "--host-change",
        action="store_true",
        help="The account option PUT /sessionhost needs: a provider change moves the session.",
    )
    return p


if __name__ == "__main__":
    sys.exit(main())
