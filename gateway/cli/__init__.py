"""The ``wagate`` command line: ``wagate`` itself and the simulator's commands
(``wagate``), one module per further command group (``tokens``, ``keys``, ``status``,
``audit``, ``schema``), the launcher (``serve``) and progress lines (``progress``).

``main`` is here because the installed ``wagate`` script and ``python -m gateway.cli``
name this package (pyproject.toml ``[project.scripts]``; ``__main__``).
"""

from gateway.cli.wagate import main

__all__ = ["main"]
