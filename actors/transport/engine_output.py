"""The engine's own prints: captured from file descriptor 1, redacted, logged.

goneonize writes some errors straight to the process's standard output with
``fmt.Println``, bypassing every logger: ``SendMessage: Error sending message: <error>``
on every failed send (whatsmeow's errors name the recipient, e.g. ``failed to get user
info for 4917...@s.whatsapp.net``), ``Pair Code:`` with the pairing code, ``Login
event:``. In a session process standard output is the actor log, so recipients'
numbers and pairing codes would land there in clear text. wagate points descriptor 1
at a pipe before the engine is loaded; a daemon thread reads it line by line, redacts
phone numbers, JIDs and pairing codes, and hands each line to a sink (the session's
logger). Python's own ``sys.stdout`` keeps writing where it wrote before. The Go
side's log, which neonize hands to Python loggers named ``whatsmeow...``, is redacted
the same way (``redact_engine_log_records``).

The reader must never stop reading while the process lives: a full pipe would block
the Go thread that prints (and with it a send or the event pump). It swallows every
error of the sink, and drops lines beyond ``MAX_LINE`` characters' worth of a line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

MAX_LINE = 4096  # characters kept of one printed line

# A WhatsApp address: user (digits, or a LID), optional agent/device, then a server.
_JID = re.compile(r"\b[0-9A-Za-z.:_-]*\d[0-9A-Za-z.:_-]*@(s\.whatsapp\.net|c\.us|lid|g\.us|"
                  r"broadcast|newsletter|bot|hosted|hosted\.lid)\b")
_NUMBER = re.compile(r"\+?\d[\d ()-]{5,}\d")  # 7+ digits, maybe with separators
_PAIR_CODE = re.compile(r"(Pair Code:\s*)\S+")


def redact(line: str) -> str:
    """``line`` without phone numbers, WhatsApp addresses or pairing codes."""
    line = _PAIR_CODE.sub(r"\1<redacted>", line)
    line = _JID.sub(lambda m: f"<redacted>@{m.group(1)}", line)
    return _NUMBER.sub("<number>", line)


class EngineOutput:
    """Descriptor ``fd`` (1) redirected into a pipe read by a daemon thread."""

    def __init__(self, sink: Callable[[str], None], fd: int = 1) -> None:
        self.sink = sink
        self.fd = fd
        self.lines = 0  # lines handed to the sink (for tests)
        self._cond = threading.Condition()
        with contextlib.suppress(ValueError, OSError, AttributeError):  # None: closed
            sys.stdout.flush()
        _occupy(fd)
        self._saved = os.dup(fd)
        read_end, write_end = os.pipe()
        os.set_inheritable(read_end, False)
        os.dup2(write_end, fd)  # the engine's (and C's) writes to fd now go to the pipe
        os.close(write_end)
        self._read_end = read_end
        if fd == 1:
            # Python's own prints keep their old destination (and never reach the pipe).
            sys.stdout = open(os.dup(self._saved), "w", buffering=1,  # noqa: SIM115
                              encoding="utf-8", errors="replace", closefd=True)
        self._thread = threading.Thread(target=self._read, daemon=True, name="engine-output")
        self._thread.start()

    def wait_for(self, lines: int, timeout: float) -> bool:
        """Wait until ``lines`` lines have been handed on (tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.lines >= lines, timeout)

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._read_end, 65536)
            except InterruptedError:
                continue
            except OSError:
                return
            if not chunk:
                return
            pending += chunk
            *complete, pending = pending.split(b"\n")
            if len(pending) > MAX_LINE * 4:
                complete.append(pending[:MAX_LINE * 4])
                pending = b""
            for raw in complete:
                self._hand_on(raw)

    def _hand_on(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")[:MAX_LINE]
        if not text.strip():
            return
        with contextlib.suppress(Exception):  # the reader must go on whatever the sink does
            self.sink(redact(text))
        with self._cond:
            self.lines += 1
            self._cond.notify_all()


def _occupy(fd: int) -> None:
    """Open ``fd`` on /dev/null if it is closed (a process started with its standard
    output closed): the redirect needs a descriptor to save, and the pipe must not be
    given the free number itself."""
    try:
        os.fstat(fd)
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)


def is_engine_logger(name: str) -> bool:
    """The loggers neonize feeds the Go side's log into: ``whatsmeow.Client``,
    ``Whatsmeow.Database`` (capital W), ``whatsmeow.<Go module>``."""
    return name.lower().startswith("whatsmeow")


def redact_engine_log_records(observer: Callable[[str], None] | None = None) -> None:
    """From now on every log record of the engine's loggers carries its message
    redacted: whatsmeow's own log lines name recipients (``Failed to encrypt <id> for
    <jid>``, usync and LID lookups) just as its printed errors do. Installed once per
    process, as a record factory so that no handler, ours or neonize's, sees the clear
    text.

    ``observer`` (added once, kept for the process) reads each engine record's message
    *before* it is redacted: a number in it may be no phone number (a ban's ``expire``
    of 14 days is seven digits) and only the clear text says what it is. It must not
    log the text, nor raise (what it raises is swallowed)."""
    global _RECORDS_REDACTED
    with _INSTALL_LOCK:
        if observer is not None and observer not in _OBSERVERS:
            _OBSERVERS.append(observer)
        if _RECORDS_REDACTED:
            return
        _RECORDS_REDACTED = True
        previous = logging.getLogRecordFactory()

        def factory(name: str, *args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(name, *args, **kwargs)
            if is_engine_logger(name):
                with contextlib.suppress(Exception):  # a record must always be made
                    message = record.getMessage()
                    for observe in tuple(_OBSERVERS):
                        with contextlib.suppress(Exception):
                            observe(message)
                    record.msg, record.args = redact(message), ()
            return record

        logging.setLogRecordFactory(factory)


_RECORDS_REDACTED = False
_OBSERVERS: list[Callable[[str], None]] = []
_INSTALLED: EngineOutput | None = None
_INSTALL_LOCK = threading.Lock()


def capture_engine_output(sink: Callable[[str], None]) -> EngineOutput:
    """Install the capture once per process (later calls return the first one)."""
    global _INSTALLED
    with _INSTALL_LOCK:
        if _INSTALLED is None:
            _INSTALLED = EngineOutput(sink)
        return _INSTALLED
