"""Only for the optional C accelerator of the ingest hot path; everything else is in pyproject.toml.

`optional=True`: without a C compiler the build goes on and the relay uses the same code in pure Python.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("relay._speedups", ["relay/_speedups.c"], optional=True)])
