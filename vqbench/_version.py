"""The package version, in a module of its own so that provenance reads it without importing vqbench."""

__version__ = "0.1.0"
