"""Helpers for testing syncd and what runs beside it: fakes of its ports, crash points, waiting.

Shipped with the package (as structlog and stamina ship theirs) so that tests of a deployment can
use them too.  Nothing in ``syncd`` outside this package imports it, except the composition root
wiring a crash point from the environment.
"""
