"""Diagnostics: computations return small JSON-able results; plotting lives in ``plots``."""
