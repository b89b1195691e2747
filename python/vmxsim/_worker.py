"""The process that holds one simulation: ``python -m vmxsim._worker``.

SystemC elaborates one design per process and cannot restart, so every
simulation runs in a fresh process of its own. The parent (vmxsim.Simulation)
sends requests on this process's stdin and reads replies from the stdout it
was started with; fd 1 itself is pointed at stderr so that anything the
simulator prints cannot corrupt the replies.

Frames are an 8-byte little-endian length and a pickle (_protocol.py).
Requests are tuples ("open", resolved_yaml, name, command), ("run_until", ps), ("reset",), ("migrate", options),
("snapshot",), ("close",); replies are ("ok", value) or ("error", kind, message, attrs).
Snapshots carry stats.json (and the event trace) with their provenance: the
build's version and commit, ``command`` (what the parent ran), the seed, the
host and the date.
"""

import os
import signal
import sys
import traceback

from ._protocol import read_frame, write_frame


def _state(session):
    return {"now_ps": session.now_ps, "finished": session.finished}


def _serve(requests, replies):
    from . import _native

    session = None
    command = ""
    while True:
        try:
            req = read_frame(requests)
        except EOFError:
            return  # the parent went away
        op = req[0]
        try:
            if op == "close":
                write_frame(replies, ("ok", None))
                return
            if op == "open":
                doc = _native.Document.from_string(req[1], req[2])
                session = _native.Session(doc)
                command = req[3] if len(req) > 3 else ""
                value = {"resolved_yaml": session.resolved_yaml, "duration_ps": session.duration_ps,
                         "warmup_ps": session.warmup_ps, "stop_when_done": session.stop_when_done,
                         **_state(session)}
            elif op == "run_until":
                session.run_until(req[1])
                value = _state(session)
            elif op == "migrate":
                session.migrate(req[1])
                value = _state(session)
            elif op == "reset":
                session.reset_stats()
                value = _state(session)
            elif op == "snapshot":
                events = session.events_json()
                value = {"stats_json": _native.stamp(session.stats_json(), command, session.seed),
                         "summary": session.summary(), "notes": list(session.notes()),
                         "units_json": session.units_json(),
                         "events_json": _native.stamp(events, command, session.seed, events=True) if events else None,
                         **_state(session)}
            else:
                raise ValueError(f"unknown request {op!r}")
            reply = ("ok", value)
        except _native.ConfigError as e:
            attrs = {k: getattr(e, k, None) for k in ("file", "line", "path", "expected", "found")}
            reply = ("error", "ConfigError", str(e), attrs)
        except _native.SimulationError as e:
            reply = ("error", "SimulationError", str(e), {})
        except Exception:  # noqa: BLE001 - reported to the parent, which raises it
            reply = ("error", "RuntimeError", traceback.format_exc(), {})
        write_frame(replies, reply)


def main():
    # The parent handles Ctrl-C (it stops this process); a terminal's SIGINT
    # reaches the whole process group, so this process ignores it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _serve(sys.stdin.buffer, replies)
    replies.close()
    # The simulated system is deliberately never destroyed (SystemC); skip
    # teardown of what is left.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
