"""The gateway's kernel: what every process needs (configuration, networks, times,
logging, numeric ranges, the environment of helper processes, recipient rules).

A leaf: nothing here imports any other module of ours, so the actors, the web tier and
the command line can all depend on it without depending on each other
(docs/architecture.md; enforced by the import contracts in pyproject.toml).
"""
