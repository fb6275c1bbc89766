"""The one place the version is written: the package, model files and pyproject read it here."""

__version__ = "0.1.0"
