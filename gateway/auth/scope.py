"""What of the gateway a caller may see: the health report cut to its sessions.

Pure logic, no Flask. A token limited to some sessions (``--sessions a,b``) belongs to
someone who shares the gateway with others: it may see its sessions and figures
computed from them alone, never the others' (their names, queues, traffic) nor the
gateway's internals. Every reader of the health report (``/admin/health``,
``/metrics``, ``whatsAppGateway``) cuts it here, so none can forget a field:

- per session (states, queues, counters, the host a session runs on): only the
  caller's sessions, and sums over them only;
- gateway-wide (process ids, the uncertain count, the daily usage, message and
  refusal counters, the web tier's request counters): only for callers that see
  every session (``sessions`` None); the readers leave them out otherwise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from actors.messages import HealthReport

Scope = frozenset[str] | None  # the sessions a caller may see; None: the whole gateway


def sees(scope: Scope, session: str) -> bool:
    return scope is None or session in scope


def scoped_report(report: HealthReport, scope: Scope) -> HealthReport:
    """``report`` with only what a caller limited to ``scope`` may see of each session.

    The queue depth becomes the sum over the caller's sessions; a host is listed only
    when one of them runs there, counting only them; process ids are dropped (of the
    supervisor and outbox, and of the sessions). Gateway-wide figures that cannot be
    split by session (limiter, uncertain total, outbox counters) are left in place
    for the reader's own "is it up" checks: the reader must not show them unless
    ``scope`` is None.
    """
    if scope is None:
        return report
    sessions = tuple(replace(s, pid=None) for s in report.sessions if s.session in scope)
    by_session = {name: depth for name, depth in report.queue_by_session.items()
                  if name in scope}
    return replace(report, sessions=sessions, queue_by_session=by_session,
                   queue_depth=sum(by_session.values()),
                   unconfirmed_by_session={name: count for name, count
                                           in report.unconfirmed_by_session.items()
                                           if name in scope},
                   session_metrics={name: counts for name, counts
                                    in report.session_metrics.items() if name in scope},
                   hosts=_hosts(report.hosts, sessions))


def _hosts(hosts: tuple[dict[str, Any], ...], sessions: tuple[Any, ...]
           ) -> tuple[dict[str, Any], ...]:
    """The hosts that run one of ``sessions``, with only those counted."""
    placed = Counter(s.host for s in sessions if s.host is not None)
    return tuple({**host, "sessions": placed[host["name"]]} for host in hosts
                 if placed.get(host.get("name"), 0))
