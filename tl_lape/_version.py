"""The version of tl_lape, in one place (the package root and the statistics files read it)."""

__version__ = "0.1.0"
