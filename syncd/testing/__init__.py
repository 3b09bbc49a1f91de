"""Helpers for testing syncd and what runs beside it: fakes of its ports, crash points, the
control entry point, waiting.

Shipped with the package (as structlog and stamina ship theirs) so that tests of a deployment can
use them too.  Nothing in the rest of ``syncd`` imports this package (import-linter checks it): a
test seam cannot reach production by accident.
"""
