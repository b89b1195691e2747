"""Framing of the pipe between a Simulation and its worker process: an
8-byte little-endian length, then a pickle."""

import pickle
import struct

_HEADER = struct.Struct("<Q")


def write_frame(f, obj):
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_HEADER.pack(len(data)) + data)
    f.flush()


def read_frame(f):
    """The next object, or raises EOFError if the other side has gone."""
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (n,) = _HEADER.unpack(header)
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)
