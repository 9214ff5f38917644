"""One question to the lease database at a time, waited for at most a bound.

An actor must not hang on a database that does not answer: a frozen server's kernel
still acknowledges packets, so neither ``statement_timeout`` (the server is stopped)
nor ``tcp_user_timeout`` (the sends are acknowledged) ends the call. The question runs
on a thread of its own; the caller waits at most ``timeout_seconds``. While a question
still hangs, no second one is sent (the caller hears so at once), and its late answer
is thrown away.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from actors.leases.store import LeaseStoreUnavailable

T = TypeVar("T")


class BoundedQuestion(Generic[T]):
    def __init__(self, timeout_seconds: float, name: str) -> None:
        self.timeout_seconds = timeout_seconds
        self.name = name
        self._asking: threading.Thread | None = None

    @property
    def hanging(self) -> bool:
        return self._asking is not None and self._asking.is_alive()

    def ask(self, question: Callable[[], T]) -> T | str:
        """``question()``'s answer, or why there is none (a short sentence)."""
        if self.hanging:
            return "an earlier question is still unanswered"
        answer: list[T | str] = []

        def run() -> None:
            try:
                answer.append(question())
            except LeaseStoreUnavailable as exc:
                answer.append((str(exc).splitlines() or [""])[0][:200])

        self._asking = threading.Thread(target=run, daemon=True, name=self.name)
        self._asking.start()
        self._asking.join(self.timeout_seconds)
        if self._asking.is_alive():
            return f"no answer within {self.timeout_seconds:g} s"
        self._asking = None
        return answer[0]
