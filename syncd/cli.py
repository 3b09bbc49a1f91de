"""The ``syncd`` command line.  Thin: parse, load settings once, build the App, call one thing.

Exit codes: 0 done; 1 some appointments parked or failed (``once``), or a check failed; 2 could not
run at all (settings, database, credentials) — always with one line on stderr that says why.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable, Sequence

import structlog

from syncd import __version__
from syncd.errors import AuthenticationError, ConfigError, SyncdError
from syncd.log import configure_logging
from syncd.settings import Settings, load_settings

EXIT_OK, EXIT_SOME_FAILED, EXIT_CANNOT_RUN = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except ConfigError as exc:
        return _fail(str(exc))
    except (SyncdError, AuthenticationError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from syncd.adapters.dberrors import describe_database_error

        described = describe_database_error(exc)
        if described is None:
            raise
        return _fail(described)


def _fail(line: str) -> int:
    print(f"syncd: {line}", file=sys.stderr)
    return EXIT_CANNOT_RUN


def _settings(*, report: bool = False) -> Settings:
    """Settings, and logging configured from them.

    Commands whose stdout is a report (plan, status, check...) log to stderr, so that their output
    stays parseable; the daemon and ``once`` log JSON lines to stdout, as containers expect.
    """
    settings = load_settings()
    configure_logging(
        settings.log.format, settings.log.level, stream=sys.stderr if report else None
    )
    return settings


# --- commands -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from syncd.adapters.dberrors import classify
    from syncd.app import build_app
    from syncd.daemon import PassRunner, run_daemon

    settings = _settings()
    stop = threading.Event()
    with build_app(settings, stop=stop) as app:
        runner = PassRunner(app.engine, classify=classify)
        return run_daemon(runner, interval_seconds=settings.sync.poll_interval_seconds, stop=stop)


def cmd_once(args: argparse.Namespace) -> int:
    from syncd.app import build_app

    settings = _settings()
    with build_app(settings, look_before_create=not args.unsafe_skip_look_before_create) as app:
        report = app.engine.run_pass()
    if report.auth_error is not None:
        return _fail(report.auth_error)
    return EXIT_OK if report.clean else EXIT_SOME_FAILED


def cmd_plan(args: argparse.Namespace) -> int:
    from syncd.app import build_app

    settings = _settings(report=True)
    with build_app(settings) as app:
        previews = app.engine.preview()
    pending = False
    for p in previews:
        if p.problem:
            pending = True
            print(f"{p.appointment_id}: cannot apply: {p.problem}")
        elif not p.operations:
            print(f"{p.appointment_id}: no changes")
        else:
            pending = True
            print(f"{p.appointment_id}:")
            for op in p.operations:
                extra = {k: v for k, v in op.items() if k not in ("op", "appointment_id")}
                details = " ".join(f"{k}={_plain(v)}" for k, v in extra.items())
                print(f"  {op['op']:<20} {details}".rstrip())
    if not previews:
        print("nothing pending")
    return 2 if (args.detailed_exitcode and pending) else EXIT_OK


def _plain(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def cmd_status(args: argparse.Namespace) -> int:
    from syncd.status import collect_status, render_status

    settings = _settings(report=True)
    status = collect_status(settings)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print(render_status(status))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    from syncd.app import open_ledger

    settings = _settings(report=True)
    ledger = open_ledger(settings)
    try:
        from datetime import UTC, datetime

        now = datetime.now(UTC).replace(tzinfo=None)
        with ledger.begin() as repo:
            if args.all_parked:
                count = repo.unpark_all(now)
            elif args.appointment_id:
                count = 1 if repo.unpark(args.appointment_id, now) else 0
            else:
                return _fail("retry: give an APPOINTMENT_ID or --all-parked")
    finally:
        ledger.dispose()
    if args.appointment_id and not count:
        print(f"{args.appointment_id} is not parked")
        return EXIT_SOME_FAILED
    print(f"{count} appointment(s) will be retried on the next pass")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from syncd.adapters.ledger import create_ledger_engine, current_revision, migrate

    settings = _settings(report=True)
    engine = create_ledger_engine(settings.ledger.url)
    try:
        before = current_revision(engine)
        migrate(engine, args.revision)
        after = current_revision(engine)
    finally:
        engine.dispose()
    print(f"ledger migrated: {before or 'empty'} -> {after}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from syncd.check import run_checks

    try:
        settings = _settings(report=True)
    except ConfigError as exc:
        print(f"[FAIL] settings: {exc}")
        return EXIT_SOME_FAILED
    return run_checks(settings)


def cmd_demo(args: argparse.Namespace) -> int:
    from syncd.demo import run_demo

    return run_demo(args.dir)


def cmd_emulator(args: argparse.Namespace) -> int:
    from syncd.emulator import serve

    configure_logging("console" if sys.stdout.isatty() else "json", "INFO")
    structlog.get_logger("syncd.emulator").info(
        "emulator_listening", host=args.host, port=args.port
    )
    serve(port=args.port, host=args.host, api_key=args.api_key, api_secret=args.api_secret)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="syncd",
        description="Keeps SecureVideo telehealth sessions in step with EHR appointments.",
    )
    p.add_argument("--version", action="version", version=f"syncd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_, description=help_)
        cmd.set_defaults(func=func)
        return cmd

    add("run", cmd_run, "Run as a daemon: a pass every SYNCD_SYNC__POLL_INTERVAL_SECONDS.")
    once = add(
        "once", cmd_once, "Run one pass and exit (0 all applied, 1 some parked, 2 cannot run)."
    )
    # Only for the crash sweep's control run: proves that test can see duplicates.
    once.add_argument(
        "--unsafe-skip-look-before-create", action="store_true", help=argparse.SUPPRESS
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
    migrate = add("migrate", cmd_migrate, "Bring the ledger schema to the current revision.")
    migrate.add_argument("--revision", default="head", help=argparse.SUPPRESS)
    add("check", cmd_check, "Check settings, outbox, ledger and credentials; name the fix.")
    demo = add("demo", cmd_demo, "Run the whole flow on a sample SQLite EHR and the emulator.")
    demo.add_argument("--dir", default="data/demo", help="Where the demo keeps its files.")
    emu = add(
        "emulator", cmd_emulator, "Serve the SecureVideo emulator for trying a configuration."
    )
    emu.add_argument("--port", type=int, default=8090)
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--api-key", default="demo")
    emu.add_argument("--api-secret", default="demo")
    return p


if __name__ == "__main__":
    sys.exit(main())
