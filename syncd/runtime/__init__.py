"""The imperative shell's outer edge: settings, logging, the composition root (``app``), the
daemon, the CLI and the health views.  The only layer that knows which adapter serves which port."""
