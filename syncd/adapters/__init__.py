"""Adapters: the concrete implementations of ``syncd.ports`` (SecureVideo over HTTP, databases)."""
