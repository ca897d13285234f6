"""inat-assets: iNaturalist's research-grade Darwin Core Archive as Dagster assets."""

# The package's version, also pyproject.toml's (setuptools reads it from here).
__version__ = "0.1.0"
