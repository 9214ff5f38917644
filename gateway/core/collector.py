"""The cyclic garbage collector in long-lived processes: freeze what lives as long as
the process, so that the collector keeps freeing the cycles made after it.

Two reasons to freeze (``gc.freeze``), both measured:

* *Shared pages.* A process forked from another shares its heap copy-on-write until
  it writes to it, and the collector writes to every object it examines. Frozen
  objects are never examined (issue 17, ``tests/perf/bench_memory.py``).
* *Garbage that piles up.* CPython runs a full collection only when the objects
  promoted to the oldest generation since the last one exceed a quarter of what that
  generation held after it (``long_lived_total``). A web worker holds about 80 000
  tracked objects (its modules, the GraphQL schema, Flask), so it needed some 20 000
  promotions first: in the soak (``tests/perf/soak.py``) no full collection ran in 45
  minutes, and the reference cycles that requests leave stayed in memory, some
  hundreds of objects and thousands of their blocks by minute 43. That was part of
  the web workers' slow creep (issue 16: Python's share of the busier worker's growth
  went from +0.41 to +0.15 MiB/h; ``tests/perf/README.md``).

``gc.freeze`` moves every tracked object out of the generations but leaves
``long_lived_total`` as the last full collection set it; only the next full
collection resets it. So after freezing, one collection of what is left (nothing, or
little) resets it to that, and full collections come due again as often as the
younger generations' thresholds allow (every ten collections of the middle one), each
examining only the process's own unfrozen objects, which costs little.

Objects frozen and later dropped in a cycle are never freed: freeze only what lives as
long as the process (modules, the app, configuration).

Plain module: no actor or Flask import.
"""

from __future__ import annotations

import gc


def freeze_long_lived(collect_first: bool = True) -> None:
    """Freeze every object this process holds now, and reset the collector's measure
    of the oldest generation to what is left.

    ``collect_first``: free what is garbage now instead of freezing it; False in a
    process just forked, where that collection would examine, and so copy, every
    inherited page."""
    if collect_first:
        gc.collect()
    gc.freeze()
    gc.collect()  # sets long_lived_total to the unfrozen rest (see the module's docstring)
