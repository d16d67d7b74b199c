"""mpq's version, recorded in every result row (a module of its own: the rows' writers need it
without importing the package's API)."""

__version__ = "0.3.0"
