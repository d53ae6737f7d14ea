"""The sandboxed child's channel, read by the grader: events, checked for shape and for sequence.

The runner (``qlearn.grading.runner``) reports every step on its channel as one JSON line:
``ready``, ``cell_start``, ``cell_end``, ``alarm``, ``task_start``, ``task_result``, ``done``. The child is
untrusted: ``Stream`` parses lines strictly (``wire``), ``valid_event`` and ``in_sequence`` drop
anything malformed or out of turn, ``watch`` collects the events until the child ends or must be
killed, and ``decode_report`` turns a ``task_result``'s report back into outcomes for the judge.
"""
from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from typing import Any

from qlearn.grading import wire
from qlearn.grading.limits import Limits
from qlearn.grading.spec import GROUPS

__all__ = ["EVENT_KEYS", "Stream", "valid_event", "in_sequence", "watch", "decode_report"]


EVENT_KEYS = {"ready": (), "done": (), "alarm": (), "cell_start": ("cell",), "cell_end": ("cell", "status", "error"),
               "task_start": ("task",), "task_result": ("task", "report")}


def valid_event(ev: Any, task_ids: set[str]) -> bool:
    """The shape of an event from the (untrusted) child; anything else is ignored."""
    if not isinstance(ev, dict) or ev.get("event") not in EVENT_KEYS:
        return False
    kind = ev["event"]
    if any(k not in ev for k in EVENT_KEYS[kind]):
        return False
    if "cell" in ev and (type(ev["cell"]) is not int):
        return False
    if kind == "cell_end" and not (isinstance(ev["status"], str) and (ev["error"] is None or isinstance(ev["error"], str))):
        return False
    if "task" in ev and ev["task"] not in task_ids:
        return False
    return True


class Stream:
    """Reads the child's channel (its stdout pipe) without blocking: complete JSON lines, each parsed
    strictly; a line over ``wire.MAX_MESSAGE_BYTES`` marks the stream as broken."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.eof = False
        self.broken = False
        self.garbage = 0

    def read(self, timeout: float) -> list[Any]:
        if self.eof:
            time.sleep(timeout)
            return []
        ready, _, _ = select.select([self.fd], [], [], timeout)
        out: list[Any] = []
        if not ready:
            return out
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            self.eof = True
        self.buf += chunk
        while b"\n" in self.buf:
            line, _, rest = bytes(self.buf).partition(b"\n")
            self.buf = bytearray(rest)
            try:
                out.append(wire.loads(line))
            except wire.WireError:
                self.garbage += 1
        if len(self.buf) > wire.MAX_MESSAGE_BYTES:
            self.broken = True
            self.buf.clear()
        return out


def in_sequence(ev: dict, running: tuple[str, Any] | None) -> bool:
    """Whether ``ev`` can come next from the runner, given the step that is ``running``: a cell or a
    task only starts when nothing runs, and only the running one can end. A learner's forged event out
    of turn is ignored (and one in turn can only say what a learner's own code could do anyway)."""
    kind = ev["event"]
    if kind in ("ready", "alarm"):
        return True
    if kind in ("cell_start", "task_start", "done"):
        return running is None
    if kind == "cell_end":
        return running == ("cell", ev["cell"])
    return running == ("task", ev["task"])  # task_result


def watch(proc: subprocess.Popen, stream: Stream, limits: Limits, task_ids: set[str],
           cancel: threading.Event | None) -> tuple[list[dict], str | None]:
    """Collect the child's events until it ends; kill it at the wall-clock limit, or ``limits.grace``
    seconds after a time limit fired inside it without the cell or task ending (code that swallows
    the timeout), or when its channel breaks, or when the batch is cancelled. Returns the valid events,
    in sequence, and why it was killed (None: it ended by itself)."""
    start = time.monotonic()
    alarm_at: float | None = None
    events: list[dict] = []
    running: tuple[str, Any] | None = None
    while True:
        for ev in stream.read(0.1):
            if not valid_event(ev, task_ids) or not in_sequence(ev, running):
                stream.garbage += 1
                continue
            kind = ev["event"]
            if kind in ("cell_start", "task_start"):
                running = (kind[:4], ev["cell" if kind == "cell_start" else "task"])
            elif kind in ("cell_end", "task_result"):
                running = None
            events.append(ev)
            alarm_at = (alarm_at or time.monotonic()) if kind == "alarm" else None  # progress resets
            if kind == "done":
                return events, None
        if stream.eof and proc.poll() is not None:
            return events, None
        now = time.monotonic()
        if cancel is not None and cancel.is_set():
            return events, "cancel"
        if stream.broken:
            return events, "channel"
        if now - start > limits.time_limit:
            return events, "time"
        if alarm_at is not None and now - alarm_at > limits.grace:
            return events, "alarm"


def decode_report(report: Any) -> Any:
    """A task_result's report, decoded from plain data; a malformed piece becomes a missing answer."""
    if not isinstance(report, dict):
        return None
    if "error" in report:
        return {"error": str(report["error"])[:2000], "status": report.get("status")}
    groups = report.get("groups") if isinstance(report.get("groups"), dict) else {}
    out: dict[str, Any] = {}
    for name in GROUPS:
        g = groups.get(name)
        if g == "timeout":
            out[name] = "timeout"
        elif isinstance(g, list):
            decoded = []
            for item in g[: 100_000]:
                try:
                    decoded.append(wire.decode_outcome(item))
                except (wire.WireError, RecursionError, ValueError, TypeError):
                    decoded.append(None)  # judged as "no answer for this case"
            out[name] = decoded
    return {"first": report.get("first"), "groups": out}
