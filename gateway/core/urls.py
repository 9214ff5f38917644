"""A url as it may appear in a log line or an error message.

A webhook url may carry a credential: a token in its query string (many receivers
authenticate that way) or a user name and password. Log lines and messages that can
end up in logs name the url by scheme, host, port and path only.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def loggable_url(url: str) -> str:
    """``url`` without its userinfo, query and fragment (``?...`` marks that a query
    was dropped); text that does not parse as a url is cut to its scheme and host part
    or, failing that, replaced by a placeholder."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<malformed url>"
    if not parts.scheme or not host:
        return "<malformed url>"
    if ":" in host:
        host = f"[{host}]"
    where = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    return where + parts.path + ("?..." if parts.query else "")
