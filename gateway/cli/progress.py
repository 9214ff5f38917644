"""Progress lines for long CLI operations, on standard error.

On a terminal the line is rewritten in place with a spinner and a live detail
(seconds left ...); anywhere else (a log file, a CI job, a pipe) there is no
animation: a line is written only when the text itself changes, so the output
reads as a short history of what happened. Results go to standard output, so
``wagate drain > result.txt`` captures the outcome without the progress.
"""

from __future__ import annotations

import sys
from typing import TextIO

SPINNER = "|/-\\"


class Progress:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._last = ""
        self._frame = 0
        self._width = 0  # of the line on screen (tty), to blank what a shorter one leaves

    def update(self, text: str, detail: str = "") -> None:
        """Show ``text``; ``detail`` (a countdown, say) only where it can be animated."""
        if self.tty:
            self._frame += 1
            line = f"{SPINNER[self._frame % len(SPINNER)]} {text}"
            if detail:
                line += f" ({detail})"
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self.stream.flush()
        elif text != self._last:
            self.stream.write(text + "\n")
            self.stream.flush()
        self._last = text

    def done(self) -> None:
        """End the progress line, so that the result starts on a clean line."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
