"""The one rule for a session's name, as the API documents it (README: error codes,
``INVALID_SESSION``): 1 to 64 characters from A-Z, a-z, 0-9, ``_`` and ``-``.

A session's name becomes a directory under ``data_dir/sessions`` (and under a shared
``storage.sessions_dir`` on a cluster), a part of the names of its working copies and
a key in the token file's ``sessions`` lists. The alphabet is deliberately tiny: no
``/``, no ``.`` (so no ``..``, no hidden files, no absolute paths), no whitespace or
Unicode look-alikes; the length cap keeps every path well below file-system limits.
The API, the token file, the command line and the stores all ask this module, so a
name one of them accepts is never refused (or worse, mis-filed) by another.
"""

from __future__ import annotations

import re

SESSION_NAME_MAX_LENGTH = 64
SESSION_NAME_RULE = (f"1 to {SESSION_NAME_MAX_LENGTH} characters from A-Z, a-z, 0-9, "
                     "'_' and '-'")

_SESSION_NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{SESSION_NAME_MAX_LENGTH}}}")


def is_session_name(name: object) -> bool:
    """True when ``name`` is a string that follows the rule, whole: ``fullmatch``, so
    a trailing newline (which ``$`` would let through) is refused too."""
    return isinstance(name, str) and _SESSION_NAME.fullmatch(name) is not None
