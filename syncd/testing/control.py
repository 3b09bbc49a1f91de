"""``python -m syncd.testing.control [--no-lease] ARGS...``: syncd's own commands with a safety off.

A test that proves a safety works must also show it can fail without it, or it could pass for
another reason.  This runs exactly the ``syncd`` command line (``syncd.runtime.cli.main``) through
the same composition root, wired without the safety asked for:

* ``--no-lease``: no leader lease, so two ``run`` daemons on one ledger both apply every change
  (``tests/test_two_instances.py``'s control run).

It is not part of the ``syncd`` command and no setting reaches it: an operator cannot switch a
safety off by mistake.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from syncd.runtime.app import Wiring
from syncd.runtime.cli import main as syncd_main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m syncd.testing.control",
        description="Run a syncd command with a safety switched off, for a test's control run.",
    )
    parser.add_argument(
        "--no-lease", action="store_true", help="Wire the command without the leader lease."
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="The syncd command and its args.")
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("give a syncd command, e.g. `run`")
    return syncd_main(args.command, wiring=Wiring(lease=not args.no_lease))


if __name__ == "__main__":
    sys.exit(main())
