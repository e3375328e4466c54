"""dogstatsd-relay: a DogStatsD-compatible metrics relay."""

# The one place the version is written: pyproject.toml reads it from here (dynamic), so an installed relay and a
# source tree agree, and nothing imports importlib.metadata to learn it.
__version__ = "0.1.0"
