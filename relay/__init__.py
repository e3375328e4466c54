"""dogstatsd-relay: a DogStatsD-compatible metrics relay."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dogstatsd-relay")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
