"""The package version, in one place: ``sa_clip.__version__``, the result files' metadata and
``pyproject.toml`` (``[tool.setuptools.dynamic]``) all read it from here."""

__version__ = "0.1.0"
