"""The sync layer: one pass (``passes``), its work queue, the reconciler that decides one
appointment's calls and the executor that makes each one; the lease, visit outcomes and billing.
It talks to the world only through ``syncd.ports``."""
