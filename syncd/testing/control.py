"""``python -m syncd.testing.control [--no-lease] [--blind] ARGS...``: syncd's commands, as a test
needs them wired.

A test that proves a safety works must also show it can fail without it, or it could pass for
another reason.  This runs exactly the ``syncd`` command line (``syncd.runtime.cli.main``) through
the same composition root, wired without the safety asked for:

* ``--no-lease``: no leader lease, so two ``run`` daemons on one ledger both apply every change
  (``tests/test_two_instances.py``'s control run);
* ``--blind``: the engine never sees an existing session, so a lost answer to a create ends in a
  duplicate (the crash sweep's control run, ``tests/test_chaos_crash.py``).

The crash sweep's kill points (``syncd.testing.crashpoints``) are armed here, and only here, when
its variable is set.

It is not part of the ``syncd`` command and no setting reaches it: an operator cannot switch a
safety off by mistake.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from syncd.runtime.app import Wiring
from syncd.runtime.cli import main as syncd_main
from syncd.sync.execute import no_checkpoint
from syncd.testing import crashpoints
from syncd.testing.blind import BlindGateway


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m syncd.testing.control",
        description="Run a syncd command with a safety switched off, for a test's control run.",
    )
    parser.add_argument(
        "--no-lease", action="store_true", help="Wire the command without the leader lease."
    )
    parser.add_argument(
        "--blind", action="store_true", help="Wire the engine blind to existing sessions."
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="The syncd command and its args.")
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("give a syncd command, e.g. `run`")
    wiring = Wiring(
        lease=not args.no_lease,
        gateway=BlindGateway if args.blind else None,
        checkpoint=crashpoints.crashpoint if crashpoints.armed() else no_checkpoint,
    )
    return syncd_main(args.command, wiring=wiring)


if __name__ == "__main__":
    sys.exit(main())
