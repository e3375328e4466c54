"""Only for the optional C accelerators (the ingest hot path, the sockets' reader thread); everything else is in
pyproject.toml.

`optional=True`: without a C compiler the build goes on and the relay uses the same code in pure Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("relay._speedups", ["relay/_speedups.c"], optional=True),
        # The sockets' reader thread: Linux only (recvmmsg, eventfd); elsewhere the event loop reads them.
        Extension("relay._reader", ["relay/_reader.c"], optional=True),
    ]
)
