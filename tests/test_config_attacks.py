"""Scenario 10: configuration attacks, refused at start by the real ``syncd run`` / ``syncd once``.

An outbox table or column name built to break out of SQL quoting, a base URL that would send the
API credentials over plain http or to the cloud metadata service, a secret pasted into a URL: each
stops the start with exit 2 and one line on stderr naming the setting, and no secret ever appears
in what the process prints.  ``syncd.runtime.settings`` validates these (unit-tested in
test_settings.py); this is the end-to-end half, through real processes.

Fast form: every attack against both commands through ``syncd.runtime.cli.main`` in this
process (the same code path after the interpreter start), and one of them and the baseline as real
processes.  Long form (``--long``): every attack against both commands as real processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from syncd.adapters.outbox import create_outbox_engine
from syncd.adapters.sample_ehr import SampleEhr
from syncd.runtime.cli import main

#: Canary secrets: any of them in the output is a leak.
API_SECRET = "Sekr1t-API-5ecret-canary"
URL_SECRET = "Pa55-in-URL-canary"


@dataclass(frozen=True)
class Attack:
    name: str
    env: dict[str, str]
    #: the setting the one line must name
    setting: str
    commands: tuple[str, ...] = ("once", "run")


ATTACKS = [
    Attack(
        "table-quote-breakout",
        {"SYNCD_OUTBOX__TABLE": 'appointment_outbox"; DROP TABLE appointment_outbox; --'},
        "SYNCD_OUTBOX__TABLE",
    ),
    Attack("table-semicolon", {"SYNCD_OUTBOX__TABLE": "outbox;SELECT 1"}, "SYNCD_OUTBOX__TABLE"),
    Attack("table-quoted", {"SYNCD_OUTBOX__TABLE": '"outbox"'}, "SYNCD_OUTBOX__TABLE"),
    Attack(
        "column-quote-breakout",
        {"SYNCD_OUTBOX__COLUMNS__STATUS": 'status" FROM x; --'},
        "SYNCD_OUTBOX__COLUMNS",
    ),
    Attack(
        "base-url-plain-http",
        {"SYNCD_SECUREVIDEO__BASE_URL": "http://api.securevideo.com"},
        "SYNCD_SECUREVIDEO__BASE_URL",
    ),
    Attack(
        "base-url-metadata-service",
        {"SYNCD_SECUREVIDEO__BASE_URL": "http://169.254.169.254/latest/meta-data"},
        "SYNCD_SECUREVIDEO__BASE_URL",
    ),
    Attack(
        "base-url-link-local-https",
        {"SYNCD_SECUREVIDEO__BASE_URL": "https://169.254.10.20"},
        "SYNCD_SECUREVIDEO__BASE_URL",
    ),
    Attack(
        "base-url-link-local-ipv6",
        {"SYNCD_SECUREVIDEO__BASE_URL": "https://[fe80::1]"},
        "SYNCD_SECUREVIDEO__BASE_URL",
    ),
    Attack(
        "base-url-with-credentials",
        {"SYNCD_SECUREVIDEO__BASE_URL": f"https://demo:{URL_SECRET}@api.securevideo.com"},
        "SYNCD_SECUREVIDEO__BASE_URL",
    ),
    Attack(
        "base-url-secret-in-query",
        {"SYNCD_SECUREVIDEO__BASE_URL": f"https://api.securevideo.com/?token={URL_SECRET}"},
        "SYNCD_SECUREVIDEO__BASE_URL",
    ),
    Attack(
        "ledger-url-malformed-with-password",
        {"SYNCD_LEDGER__URL": f"postgresql+psycopg://syncd:{URL_SECRET}@db:notaport/ledger"},
        "SYNCD_LEDGER__URL",
    ),
    Attack(
        "outbox-url-malformed-with-password",
        {"SYNCD_OUTBOX__URL": f"postgresql+psycopg://ehr:{URL_SECRET}@db:port/ehr"},
        "SYNCD_OUTBOX__URL",
    ),
    Attack(
        # A well-formed URL whose server is not there: `once` stops when the ledger cannot be
        # opened (`run` waits for it instead: see test_db_outages.py).
        "ledger-url-unreachable-with-password",
        {"SYNCD_LEDGER__URL": f"postgresql+psycopg://syncd:{URL_SECRET}@127.0.0.1:1/ledger"},
        "ledger database: the server cannot be reached",
        commands=("once",),
    ),
]


def base_env(tmp: Path) -> dict[str, str]:
    """A configuration that would start: only the attack makes it fail."""
    secrets = tmp / "secrets"
    secrets.mkdir(exist_ok=True)
    return {
        "SYNCD_CONFIG_FILE": "",
        "SYNCD_SECRETS_DIR": str(secrets),
        "SYNCD_OUTBOX__URL": f"sqlite:///{(tmp / 'ehr.sqlite3').as_posix()}",
        "SYNCD_LEDGER__URL": f"sqlite:///{(tmp / 'ledger.sqlite3').as_posix()}",
        "SYNCD_SECUREVIDEO__BASE_URL": "http://127.0.0.1:9",
        "SYNCD_SECUREVIDEO__API_KEY": "demo",
        "SYNCD_SECUREVIDEO__API_SECRET": API_SECRET,
        "SYNCD_LOG__FORMAT": "json",
        "SYNCD_LOG__LEVEL": "DEBUG",
    }


def make_outbox(tmp: Path) -> None:
    ehr = SampleEhr(create_outbox_engine(base_env(tmp)["SYNCD_OUTBOX__URL"], writable=True))
    ehr.dispose()


def attempt(tmp: Path, attack: Attack, command: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    return subprocess.run(
        [sys.executable, "-m", "syncd", command],
        env=env | base_env(tmp) | attack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


Key = tuple[str, str]
BASELINE = Attack("none", {}, "")

#: The attack run as a real process in the fast form too (with the baseline).
IN_FAST_FORM = {"base-url-with-credentials": "run"}


@pytest.fixture(scope="module")
def results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[Key, subprocess.CompletedProcess[str]]:
    """Every process of the module, started together (each one is mostly a Python start)."""
    long_run = bool(request.config.getoption("--long"))
    plan = [
        (attack, command)
        for attack in ATTACKS
        if long_run or attack.name in IN_FAST_FORM
        for command in (attack.commands if long_run else (IN_FAST_FORM[attack.name],))
    ] + [(BASELINE, "once")]
    tmp = tmp_path_factory.mktemp("attacks")
    make_outbox(tmp)
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = list(pool.map(lambda job: attempt(tmp, *job), plan))
    print(
        f"\nconfiguration attacks: {len(plan)} processes, "
        f"exit codes {dict(Counter(r.returncode for r in done))}"
    )
    return {(a.name, c): r for (a, c), r in zip(plan, done, strict=True)}


def check_refusal(attack: Attack, command: str, code: int, out: str, err: str) -> None:
    context = f"syncd {command}: {err!r}"
    assert code == 2, context
    lines = err.strip().splitlines()
    assert len(lines) == 1, context
    assert lines[0].startswith("syncd: "), context
    assert attack.setting in lines[0], context
    printed = out + err
    assert "Traceback" not in printed, context
    for secret in (API_SECRET, URL_SECRET):
        assert secret not in printed, context
    # Refused before anything started: no daemon, no pass.
    assert '"daemon_started"' not in out
    assert '"pass_finished"' not in out


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_refused_at_start_by_a_real_process(
    attack: Attack, results: dict[Key, subprocess.CompletedProcess[str]], long_run: bool
) -> None:
    runs = {c: r for (name, c), r in results.items() if name == attack.name}
    if not runs:
        assert not long_run
        pytest.skip("in-process only in the fast form; as a real process with --long")
    for command, result in runs.items():
        check_refusal(attack, command, result.returncode, result.stdout, result.stderr)


# The one attack left out opens the ledger and configures logging, which in-process would
# redirect this test process's log handler; it runs as a real process above.
SETTINGS_ATTACKS = [a for a in ATTACKS if a.setting.startswith("SYNCD_")]


@pytest.mark.parametrize("command", ["once", "run"])
@pytest.mark.parametrize("attack", SETTINGS_ATTACKS, ids=[a.name for a in SETTINGS_ATTACKS])
def test_refused_by_the_cli_entry_point(
    attack: Attack,
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in [k for k in os.environ if k.startswith("SYNCD_")]:
        monkeypatch.delenv(name)
    make_outbox(tmp_path)
    for name, value in (base_env(tmp_path) | attack.env).items():
        monkeypatch.setenv(name, value)
    code = main([command])
    captured = capsys.readouterr()
    check_refusal(attack, command, code, captured.out, captured.err)


def test_the_baseline_configuration_is_not_itself_refused(
    results: dict[Key, subprocess.CompletedProcess[str]],
) -> None:
    """Proves the attacks above are what stops the start: without one, `once` runs a pass over
    the empty outbox and exits 0."""
    result = results[(BASELINE.name, "once")]
    assert result.returncode == 0, result.stderr
    assert '"pass_finished"' not in result.stdout  # nothing to do, so not even a summary
    assert API_SECRET not in result.stdout + result.stderr
