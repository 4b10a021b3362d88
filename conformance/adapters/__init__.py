"""Bundled adapters, registered under the entry-point group ``rlconform.adapters``."""
