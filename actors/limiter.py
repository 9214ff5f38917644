"""LimiterActor: the per-recipient and global send windows, persisted on disk.

The windows (actors/windows.py) decide; this actor keeps them, writes every change
through to diskcache before letting a send pass (so limits survive a restart or a
crash of this process), and passes admitted sends on to the outbox. A rejected
send consumes no quota and is answered here, directly to the caller.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import diskcache
import structlog
from thespian.actors import ActorExitRequest, ActorTypeDispatcher

from actors.messages import Admit, CollectHealth, Enqueue, Failed, Rejected, StartWorker
from actors.windows import SlidingWindow, WindowSpec, admit
from gateway.config import LimitsConfig
from gateway.observability import setup_logging

log = structlog.get_logger("wagate.limiter")

HOT_NUMBERS = 10_000  # recipients whose windows stay in memory (the rest are on disk)
GLOBAL_KEY = "global"


def window_specs(limits: LimitsConfig) -> tuple[tuple[WindowSpec, ...], WindowSpec]:
    per_number = (
        WindowSpec("recipient_minute", limits.per_number_per_minute, 60.0),
        WindowSpec("recipient_hour", limits.per_number_per_hour, 3600.0),
    )
    return per_number, WindowSpec("global_day", limits.global_per_day, 86400.0)


class Limits:
    """The windows of every recipient plus the global one, written through to disk."""

    def __init__(self, directory: str, limits: LimitsConfig) -> None:
        self.cache = diskcache.Cache(directory)
        self.per_number_specs, self.global_spec = window_specs(limits)
        state = self.cache.get(GLOBAL_KEY)
        self.global_window = (SlidingWindow.from_state(self.global_spec, state)
                              if state is not None else SlidingWindow(self.global_spec))
        self.hot: OrderedDict[str, list[SlidingWindow]] = OrderedDict()

    def check(self, phone: str, now: float) -> tuple[bool, float, str | None]:
        windows = self._windows(phone)
        allowed, retry_after, scope = admit([*windows, self.global_window], now)
        if allowed:
            with self.cache.transact():
                self.cache.set(_number_key(phone), [w.to_state() for w in windows],
                               expire=max(s.period for s in self.per_number_specs) * 1.1)
                self.cache.set(GLOBAL_KEY, self.global_window.to_state())
        return allowed, retry_after, scope

    def usage(self, now: float) -> dict[str, float]:
        return {
            "global_day_used": float(self.global_window.count(now)),
            "global_day_limit": float(self.global_spec.limit),
            "global_day_ratio": self.global_window.usage_ratio(now),
        }

    def close(self) -> None:
        self.cache.close()

    def _windows(self, phone: str) -> list[SlidingWindow]:
        windows = self.hot.get(phone)
        if windows is not None:
            self.hot.move_to_end(phone)
            return windows
        states = self.cache.get(_number_key(phone))
        if states is None:
            windows = [SlidingWindow(spec) for spec in self.per_number_specs]
        else:
            windows = [SlidingWindow.from_state(spec, st)
                       for spec, st in zip(self.per_number_specs, states, strict=True)]
        self.hot[phone] = windows
        if len(self.hot) > HOT_NUMBERS:
            self.hot.popitem(last=False)
        return windows


def _number_key(phone: str) -> str:
    return f"n:{phone}"


class LimiterActor(ActorTypeDispatcher):
    """A thin shell around ``Limits`` (which is tested without an actor system)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits: Limits | None = None

    def receiveMsg_StartWorker(self, msg: StartWorker, sender: Any) -> None:
        if self.limits is None:
            setup_logging(msg.config.logging)  # actor logs go to data_dir/logs
            directory = msg.config.data_path / "limits"
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.limits = Limits(str(directory), msg.config.limits)

    def receiveMsg_Admit(self, msg: Admit, sender: Any) -> None:
        assert self.limits is not None
        allowed, retry_after, scope = self.limits.check(msg.send.phone, time.time())
        if allowed:
            self.send(msg.outbox, Enqueue(msg.send, msg.reply_to))
            return
        seconds = max(1, int(retry_after + 0.999))
        what = "this recipient" if scope and scope.startswith("recipient") else "this gateway"
        log.info("send rate limited", scope=scope, retry_after=seconds)
        self.send(msg.outbox, Rejected(msg.send, msg.reply_to, Failed(
            "RATE_LIMITED",
            f"rate limit for {what} reached ({scope}); retry in {seconds} s",
            {"retryAfterSeconds": seconds, "scope": scope},
            request_id=msg.send.request_id)))

    def receiveMsg_CollectHealth(self, msg: CollectHealth, sender: Any) -> None:
        usage = self.limits.usage(time.time()) if self.limits is not None else {}
        pids = {**msg.report.worker_pids, "limiter": os.getpid()}
        self.send(msg.outbox, replace(msg, report=replace(msg.report, limiter=usage,
                                                          worker_pids=pids)))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self.limits is not None:
            self.limits.close()
