"""Session ownership leases and leadership in PostgreSQL (issue 22, multi-host mode).

``timing`` is pure (the rule of the three durations and the holder's own deadlines),
``store`` keeps one lease row per session and the fenced writes, ``leader`` is the
leadership lock. Only these modules talk to PostgreSQL.
"""
