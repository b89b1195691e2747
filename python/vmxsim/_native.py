"""Loads the C++ extension, with advice when it is missing or built for
another interpreter."""

import sys

try:
    from ._vmxsim import (ConfigError, Document, Session, SimulationError, build_info, format_time_ps,
                          parse_time_ps, stamp, version)
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"vmxsim: cannot load the C++ extension _vmxsim ({e}).\n"
        "Build it with `cmake -S . -B build && cmake --build build -j2` and run Debian's "
        "interpreter with PYTHONPATH=<repo>/build/python, e.g.\n"
        "  PYTHONPATH=build/python /usr/bin/python3 ...\n"
        f"(this interpreter is {sys.executable}; the extension is built for /usr/bin/python3)"
    ) from e

__all__ = ["ConfigError", "Document", "Session", "SimulationError", "build_info", "format_time_ps", "parse_time_ps",
           "stamp", "version"]
