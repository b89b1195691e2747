"""Turning what users pass (a YAML path, YAML text, a dict, overrides) into
a validated configuration, with the C++ reader doing all the validating."""

import json
import math
import os

from . import _native

ConfigError = _native.ConfigError


def config_error(file, line, path, expected, found=""):
    """A ConfigError raised from Python, worded exactly like the C++ ones:
    ``file:line: path: expected (got found)``."""
    msg = file
    if line:
        msg += f":{line}"
    if path:
        msg += (" " if file == "--set" else ": ") + path
    msg += ": " + expected
    if found:
        msg += f" (got {found})"
    e = ConfigError(msg)
    e.file, e.line, e.path, e.expected, e.found = file, line, path, expected, found
    return e


def yaml_value(value):
    """A Python value as the YAML text an override (``--set path=value``)
    reads. Strings are taken as YAML text, like on the command line, so
    ``"2GHz"`` and ``"{size: 64KiB}"`` mean what they would there."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "__index__"):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot express a {type(value).__name__} as a configuration value")


def _flow(value):
    # Inside a flow collection a string must not be misread (", " or ": ").
    if isinstance(value, str):
        return json.dumps(value)
    return yaml_value(value)


def override_texts(overrides):
    """Overrides as ``path=value`` strings. Accepts a dict {path: value}, a
    list of ``path=value`` strings or of (path, value) pairs, or None."""
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        overrides = overrides.items()
    elif isinstance(overrides, str):
        overrides = [overrides]
    out = []
    for o in overrides:
        if isinstance(o, str):
            out.append(o)
        else:
            path, value = o
            out.append(f"{path}={yaml_value(value)}")
    return out


def looks_like_path(config):
    if isinstance(config, os.PathLike):
        return True
    return isinstance(config, str) and "\n" not in config and (
        config.endswith((".yaml", ".yml")) or os.path.isfile(config))


def document(config, overrides=None):
    """A _vmxsim.Document from a YAML path, YAML text or dict, with overrides
    applied exactly as the command line's --set applies them."""
    if isinstance(config, _native.Document):
        doc = config
    elif isinstance(config, dict):
        doc = _native.Document.from_dict(config, "dict")
    elif looks_like_path(config):
        doc = _native.Document.from_file(os.fspath(config))
    elif isinstance(config, str):
        doc = _native.Document.from_string(config, "<string>")
    else:
        raise TypeError("config must be a YAML file path, YAML text or a dict, not "
                        + type(config).__name__)
    for o in override_texts(overrides):
        doc.apply_override(o)
    return doc


def resolve(config, overrides=None):
    """Validates a configuration and returns it fully resolved, as YAML text
    (every parameter with the value a run would use). Raises ConfigError."""
    return document(config, overrides).resolve()


def parse_time(t):
    """Simulated time in picoseconds from '10ms' (a string with a unit) or a
    number of seconds."""
    if isinstance(t, str):
        try:
            return _native.parse_time_ps(t)
        except ValueError as e:
            raise ValueError(str(e)) from None
    if isinstance(t, (int, float)) and t >= 0:
        return int(round(t * 1e12))
    raise ValueError(f"expected a time such as '10ms' or a number of seconds (got {t!r})")
