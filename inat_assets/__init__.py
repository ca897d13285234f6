"""inat-assets: iNaturalist's research-grade Darwin Core Archive as Dagster assets."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inat-assets")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
