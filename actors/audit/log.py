"""The audit log: hash-chained JSON lines in ``data_dir/audit/``, and their verification.

Pure logic and files, no actors: the ``AuditActor`` (while the gateway runs) and the
CLI (while it does not) both write through ``AuditLog``, and whoever writes holds the
``AuditLock`` first, so there is only ever one writer and one chain.

Format: one JSON object per line, ``{"seq", "time", "event", "request_id"?, ...fields,
"prev", "hash"}``, in files ``audit-000001.jsonl``, ``audit-000002.jsonl``, ... (a new
file beyond ``audit.max_file_mb``; the chain runs on across files; at most
``audit.max_files`` are kept, the oldest removed on record: ``AuditLog.retire``, and
``verify`` accepts a chain starting mid-way only where such a record vouches for it,
so retention bounds the directory without making removal by hand undetectable). ``prev`` is the
``hash`` of the entry before (64 zeros for the first one) and ``hash`` is
``sha256(prev + canonical JSON of the entry without "hash")``, canonical meaning sorted
keys, no spaces, ASCII only. Editing, removing, reordering or inserting a line breaks
the chain at that line, and ``verify`` says where and which of these it looks like.
``verify`` checks the bytes as written, not just the values they parse to: a line must
be exactly what the writer writes for its values (``as_written``), so a repeated key or
a reformatted line is an edit even though its values still match the hash.

What the chain cannot show on its own: an attacker who rewrites the whole tail from
some line on (recomputing every hash) or cuts whole entries off the end leaves a
valid, shorter chain. Only a hash kept elsewhere finds that, so ``verify`` reports the
last hash for operators to ship off the machine and can check that a shipped hash is
still in the log (``expect_hash``).

Durability: every entry is written with one ``write()`` to a file opened ``O_APPEND``,
no userspace buffer, so a crash of the process (even SIGKILL) loses nothing that was
appended. There is no fsync per entry (it would cost milliseconds on every mutation):
a power cut or kernel crash can lose the entries of the last seconds (until the kernel
wrote them back) and leave a torn last line. Files are fsynced at rollover and close.

A torn last line (a crash in the middle of a write) is never chained over silently:
on open the writer completes it if it is a whole valid entry lacking only its newline;
otherwise it moves the fragment to ``torn-<file>-<offset>.bin``, cuts it off the log
and writes an ``audit.torn_tail`` entry naming the file, offset, size and SHA-256 of
the fragment. The chain then continues from the last complete entry.

Recipients (``audit.recipients``): ``full`` (``+14155552671``), ``masked`` (country code
and last two digits: ``+1********71``) or ``hashed`` (``hmac:`` + 32 hex digits of
HMAC-SHA256 with a per-installation secret, ``audit/recipient.key``: equal numbers hash
equal, and trying every number of the small phone number space needs the secret;
whoever has ``data_dir`` has the secret too). Message text is never written: fields
named ``text``, ``message`` or ``body`` are dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

from gateway.core.errors import WagateError
from gateway.core.files import fsync_dir
from gateway.core.times import Precision, iso_time

GENESIS = "0" * 64
# Every entry's time, and the times inside audit fields (gateway/core/times.py says why).
TIME_PRECISION: Precision = "microseconds"
DIR_NAME = "audit"
LOCK_NAME = "lock"
SECRET_NAME = "recipient.key"
# Six digits or more: with retention the numbers go on for as long as the log lives.
FILE_PATTERN = re.compile(r"^audit-(\d{6,})\.jsonl$")
TORN_PATTERN = re.compile(r"^torn-(\d{6,})-\d+(?:\.\d+)?\.bin$")
LIVE_RETRIES = 3  # a live verify that raced a retention removal looks again
RETENTION_EVENT = "audit.retention"
RETENTION_BLOCKED_EVENT = "audit.retention_blocked"
MIN_KEEP_FILES = 2  # the file being written and at least one before it
RECIPIENT_MODES = ("full", "masked", "hashed")

RESERVED = frozenset({"seq", "time", "event", "request_id", "prev", "hash"})
CONTENT_FIELDS = frozenset({"text", "message", "body"})  # message content: never recorded
RECIPIENT_FIELDS = frozenset({"recipient", "phone", "phoneNumber"})
REQUIRED = {"seq": int, "time": str, "event": str, "prev": str, "hash": str}

# Bounds, so that a caller-controlled value (an operation name, a reason) cannot blow
# up an entry: the log must stay readable and its files must roll over sensibly.
MAX_STRING = 512
MAX_KEY = 64
MAX_FIELDS = 40
MAX_ITEMS = 20
MAX_DEPTH = 2
SECRET_BYTES = 32
TAIL_BLOCK = 65536
MAX_LINE = 1 << 20  # far beyond any entry the bounds above allow

KINDS = ("edited", "removed", "reordered", "inserted", "truncated", "unreadable")


class AuditError(WagateError, RuntimeError):
    """The audit log cannot be opened or written; the message says what to do."""


class AuditRefused(AuditError):
    """An append to the chain in PostgreSQL (``actors.audit.pg``) was refused: the chain
    moved on from this writer's head (another writer appended after the same entry), or
    this leader no longer holds the leadership lock. Nothing was written; the writer is
    ``broken`` and must be reopened, which reads the head again."""


class AuditUnreachable(AuditError):
    """The audit database could not be asked (``actors.audit.pg``): nothing is known
    to be written; the writer must be reopened."""


class AuditNotLeader(AuditRefused):
    """This leader does not hold the leadership lock: only the active leader writes."""


# ---- files and the lock ----------------------------------------------------------------


def audit_dir(data_dir: Path) -> Path:
    return Path(data_dir) / DIR_NAME


def file_name(number: int) -> str:
    return f"audit-{number:06d}.jsonl"


def log_files(directory: Path) -> list[tuple[int, Path]]:
    """The log files in chain order (by their number)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), Path(directory) / n) for n in names
             if (m := FILE_PATTERN.match(n))]
    return sorted(found)


def ensure_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)


class AuditLock:
    """An exclusive ``flock`` on ``audit/lock``: its holder is the only writer.

    The holder writes a line of JSON into the file (pid, and for the gateway its actor
    system port) so that a CLI that finds the lock taken knows where to send its entry.
    The kernel drops the lock when the holding process dies, however it dies.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, info: Mapping[str, Any]) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        if self._fd is not None:
            return True
        ensure_dir(self.directory)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(dict(info)) + "\n").encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale holder information for the next reader
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def lock_holder(directory: Path) -> dict[str, Any] | None:
    """What the holder of the audit lock wrote about itself (possibly ``{}`` for a
    moment after it took the lock), or None when nobody holds it."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.pread(fd, 4096, 0)
            try:
                info = json.loads(raw.decode() or "{}")
            except ValueError:
                info = {}
            return info if isinstance(info, dict) else {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# ---- entries -------------------------------------------------------------------------------


def canonical(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def entry_hash(entry: Mapping[str, Any], prev: str) -> str:
    """The hash of ``entry`` (which must not contain ``hash``) chained to ``prev``."""
    return hashlib.sha256((prev + canonical(entry)).encode("ascii")).hexdigest()


def _self_consistent(entry: Mapping[str, Any]) -> bool:
    body = {k: v for k, v in entry.items() if k != "hash"}
    try:
        return entry_hash(body, str(entry.get("prev"))) == entry.get("hash")
    except ValueError:  # NaN/Infinity typed into a line by hand
        return False


def written_line(entry: Mapping[str, Any]) -> bytes:
    """The exact bytes the writer writes for ``entry`` (keys in the entry's order)."""
    return (json.dumps(entry, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
            + "\n").encode("ascii")


def as_written(raw: bytes, entry: Mapping[str, Any]) -> bool:
    """Whether ``raw`` (a line with its newline) is byte for byte what the writer wrote
    for the entry it parses to.

    The hash covers the parsed values, and parsing forgets things a reader still sees: a
    repeated key (the parser keeps one value, grep shows both), spaces, escapes, line
    endings, the order of keys. So a line only counts as intact when re-writing its
    values gives back its bytes and the chain's own keys are where the writer puts them
    (``seq, time, event[, request_id]`` first, ``prev, hash`` last). Only the order of
    the fields in between is not covered (the hash sorts them); moving one changes no
    value a reader sees.
    """
    keys = list(entry)
    head = ["seq", "time", "event"] + (["request_id"] if "request_id" in entry else [])
    if keys[:len(head)] != head or keys[-2:] != ["prev", "hash"]:
        return False
    try:
        return written_line(entry) == raw
    except ValueError:  # NaN/Infinity typed into a line by hand
        return False


def country_code(digits: str) -> str:
    """The calling code a number starts with (calling codes are prefix-free)."""
    for length in (1, 2, 3):
        head = digits[:length]
        if len(head) == length and int(head) in COUNTRY_CODE_TO_REGION_CODE:
            return head
    return ""


def render_recipient(value: Any, mode: str, secret: bytes = b"") -> str | None:
    """A phone number as ``audit.recipients`` wants it recorded (None: no digits)."""
    digits = re.sub(r"\D", "", str(value))
    if not digits:
        return None
    if mode == "full":
        return "+" + digits
    if mode == "hashed":
        if not secret:
            raise AuditError("hashed recipients need the audit secret")
        return "hmac:" + hmac.new(secret, digits.encode(), hashlib.sha256).hexdigest()[:32]
    code = country_code(digits)
    rest = digits[len(code):]
    keep = rest[-2:] if len(rest) > 2 else ""
    return "+" + code + "*" * (len(rest) - len(keep)) + keep


def load_secret(directory: Path, create: bool = True) -> bytes:
    """The per-installation secret for hashed recipients (created on first use)."""
    path = Path(directory) / SECRET_NAME
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        if not create:
            raise AuditError(f"no audit secret ({SECRET_NAME}) in the audit directory") from None
        ensure_dir(Path(directory))
        text = secrets.token_hex(SECRET_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 16:
        raise AuditError(f"the audit secret {SECRET_NAME} is damaged; restore it from a "
                         "backup (a new one would hash the same numbers differently)")
    return secret


def _clip(text: str, limit: int = MAX_STRING) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _jsonable(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _clip(value)
    if depth < MAX_DEPTH and isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    if depth < MAX_DEPTH and isinstance(value, Mapping):
        return {_clip(str(k), MAX_KEY): _jsonable(v, depth + 1)
                for k, v in list(value.items())[:MAX_ITEMS]}
    return _clip(str(value))


def clean_fields(fields: Mapping[str, Any], render: Callable[[Any], str | None]
                 ) -> dict[str, Any]:
    """The caller's fields made safe to record: None values and message content
    dropped, recipients rendered, reserved names prefixed, sizes bounded."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        name = _clip(str(key), MAX_KEY)
        if value is None or name in CONTENT_FIELDS:
            continue
        if len(out) >= MAX_FIELDS:
            out["fields_dropped"] = True
            break
        if name in RESERVED:
            name = "field_" + name
        if name in RECIPIENT_FIELDS:
            value = render(value)
            if value is None:
                continue
        out[name] = _jsonable(value)
    return out


def next_entry(seq: int, last_hash: str, now: float, event: str,
               fields: Mapping[str, Any] | None, request_id: str,
               render: Callable[[Any], str | None]) -> dict[str, Any]:
    """The entry that follows entry ``seq`` (whose hash is ``last_hash``): the one
    format every writer of the chain (files or a database) produces."""
    entry: dict[str, Any] = {"seq": seq + 1, "time": iso_time(now, TIME_PRECISION),
                             "event": _clip(str(event), MAX_KEY)}
    if request_id:
        entry["request_id"] = _clip(str(request_id), 128)
    entry.update(clean_fields(fields or {}, render))
    entry["prev"] = last_hash
    entry["hash"] = entry_hash(entry, last_hash)
    return entry


# ---- the writer ----------------------------------------------------------------------------


class ChainWriter(Protocol):
    """What the audit actor and the CLI use of a writer: ``AuditLog`` (files) and
    ``actors.audit.pg.PgAuditLog`` (PostgreSQL, multi-host mode)."""

    @property
    def torn(self) -> TornTail | None: ...
    @property
    def broken(self) -> bool: ...
    def append(self, event: str, fields: Mapping[str, Any] | None = None,
               request_id: str = "") -> dict[str, Any]: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TornTail:
    """A torn last line found (and set aside) when the log was opened."""

    file: str
    offset: int
    size: int
    sha256: str
    saved_as: str


class AuditLog:
    """Appends entries to the chain. The caller must hold the ``AuditLock``."""

    def __init__(self, directory: Path, max_bytes: int, recipients: str = "masked",
                 clock: Callable[[], float] = time.time, keep_files: int | None = None
                 ) -> None:
        """``keep_files``: how many files to keep (``audit.max_files``); the oldest
        beyond it are removed at rollover, on record. None keeps every file."""
        if recipients not in RECIPIENT_MODES:
            raise AuditError(f"audit.recipients = {recipients!r}; use one of "
                             f"{', '.join(RECIPIENT_MODES)}")
        if keep_files is not None and keep_files < MIN_KEEP_FILES:
            raise AuditError(f"audit.max_files = {keep_files!r}; keep at least "
                             f"{MIN_KEEP_FILES} files")
        self.directory = Path(directory)
        self.max_bytes = max(1, int(max_bytes))
        self.recipients = recipients
        self.keep_files = keep_files
        self._retiring = False
        self._clock = clock
        self._secret = b""
        self._fd: int | None = None
        self._closed = False
        self.number = 1
        self.size = 0
        self.seq = 0
        self.last_hash = GENESIS
        self.torn: TornTail | None = None
        self.broken = False  # a failed write could not be undone: reopen to recover

    @classmethod
    def open(cls, directory: Path, max_bytes: int, recipients: str = "masked",
             clock: Callable[[], float] = time.time, keep_files: int | None = None
             ) -> AuditLog:
        """Open the log (creating it), recover the chain's tail, set aside a torn line,
        and remove files beyond ``keep_files`` (left by a lower setting or a crash)."""
        log = cls(directory, max_bytes, recipients, clock, keep_files)
        ensure_dir(log.directory)
        if recipients == "hashed":
            log._secret = load_secret(log.directory)
        files = log_files(log.directory)
        if files:
            log._recover(files)
        if log.torn is not None:
            t = log.torn
            log.append("audit.torn_tail", {"file": t.file, "offset": t.offset, "bytes": t.size,
                                           "sha256": t.sha256, "saved_as": t.saved_as})
        log.retire()
        return log

    def append(self, event: str, fields: Mapping[str, Any] | None = None,
               request_id: str = "") -> dict[str, Any]:
        """Write one entry (flushed to the kernel before this returns) and return it."""
        if self._closed or self.broken:
            raise AuditError("the audit log is closed")
        if self._fd is None:
            self._create(self.number)
        entry, line = self._entry(event, fields, request_id)
        if self.size > 0 and self.size + len(line) > self.max_bytes:
            self._roll()  # may record a retention first: build the entry after it
            entry, line = self._entry(event, fields, request_id)
        self._write(line)
        self.seq, self.last_hash = entry["seq"], entry["hash"]
        return entry

    def retire(self) -> None:
        """Remove the oldest files beyond ``keep_files``, on record.

        The ``audit.retention`` entry comes first and is synced before any file goes, so
        that a crash can never leave files removed without a record: it names the first
        file kept and that file's first entry (``kept_seq``, ``kept_prev``), which is
        where ``verify`` then finds the chain starting. A crash after the record and
        before the removals only means the next rollover or open removes them. A
        first kept entry that is not intact blocks the removal (recorded once per try):
        the log then needs an operator, not a silent deletion.
        """
        if self.keep_files is None or self._retiring or self._closed or self.broken:
            return
        files = log_files(self.directory)
        excess = len(files) - self.keep_files
        if excess <= 0:
            return
        old, kept = files[:excess], files[excess][1]
        first = first_entry(kept)
        if first is None:
            event, fields = RETENTION_BLOCKED_EVENT, {
                "kept_file": kept.name, "max_files": self.keep_files,
                "reason": "its first line is not an intact entry; run `wagate audit verify`"}
        else:
            event, fields = RETENTION_EVENT, {
                "removed_files": len(old), "removed_first": old[0][1].name,
                "removed_last": old[-1][1].name, "kept_file": kept.name,
                "kept_seq": first["seq"], "kept_prev": first["prev"],
                "max_files": self.keep_files}
        _, line = self._entry(event, fields, "")
        if self.size > 0 and self.size + len(line) > self.max_bytes:
            self._roll()  # the record goes first into a new file: the rollover retires
            return
        self._retiring = True
        try:
            self.append(event, fields)
            assert self._fd is not None
            os.fsync(self._fd)
        finally:
            self._retiring = False
        if first is not None:
            self._remove([number for number, _ in old])

    def close(self) -> None:
        self._closed = True
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)

    # ---- internals ------------------------------------------------------------------------

    def _render(self, value: Any) -> str | None:
        return render_recipient(value, self.recipients, self._secret)

    def _entry(self, event: str, fields: Mapping[str, Any] | None, request_id: str
               ) -> tuple[dict[str, Any], bytes]:
        """The next entry of the chain and its line."""
        entry = next_entry(self.seq, self.last_hash, self._clock(), event, fields,
                           request_id, self._render)
        return entry, written_line(entry)

    def _remove(self, numbers: list[int]) -> None:
        """Unlink the log files ``numbers`` and the torn lines set aside from them."""
        doomed = set(numbers)
        names = [file_name(n) for n in sorted(doomed)]
        try:
            listing = os.listdir(self.directory)
        except OSError:
            listing = []
        names += sorted(n for n in listing
                        if (m := TORN_PATTERN.match(n)) and int(m.group(1)) in doomed)
        for name in names:  # a file that cannot go stays, recorded: never lose the entry
            with contextlib.suppress(OSError):
                (self.directory / name).unlink()
        with contextlib.suppress(OSError):
            fsync_dir(self.directory)

    def _write(self, line: bytes) -> None:
        assert self._fd is not None
        done = 0
        try:
            while done < len(line):
                done += os.write(self._fd, line[done:])
        except OSError as exc:
            try:  # undo a partial line, so the file ends on a whole entry again
                if done:
                    os.ftruncate(self._fd, self.size)
            except OSError:
                self.broken = True
            raise AuditError(f"could not write the audit log: {exc}; free disk space or "
                             "fix the permissions of the audit directory") from exc
        self.size += len(line)

    def _create(self, number: int) -> None:
        path = self.directory / file_name(number)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.fchmod(self._fd, 0o600)
        self.number = number
        self.size = os.fstat(self._fd).st_size
        fsync_dir(self.directory)

    def _roll(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        self._create(self.number + 1)
        self.retire()

    def _recover(self, files: list[tuple[int, Path]]) -> None:
        number, path = files[-1]
        line, end, size = _last_line(path)
        for _, earlier in reversed(files[:-1]):  # the last file may be empty (or all torn)
            if line is not None:
                break
            line, _, _ = _last_line(earlier)
        if line is not None:
            tail = _parse_tail(line, path)
            self.seq, self.last_hash = tail["seq"], tail["hash"]
        self._create(number)
        if size > end:
            self._set_aside_fragment(path, end, size)

    def _set_aside_fragment(self, path: Path, end: int, size: int) -> None:
        assert self._fd is not None
        with open(path, "rb") as f:
            f.seek(end)
            fragment = f.read(size - end)
        try:
            entry = json.loads(fragment)
        except ValueError:
            entry = None
        if (isinstance(entry, dict) and entry.get("seq") == self.seq + 1
                and entry.get("prev") == self.last_hash and _self_consistent(entry)
                and as_written(fragment + b"\n", entry)):
            # A whole entry that only lacks its newline: nothing was lost, complete it.
            os.write(self._fd, b"\n")
            self.size += 1
            self.seq, self.last_hash = entry["seq"], entry["hash"]
            return
        saved = self.directory / f"torn-{path.stem.split('-')[-1]}-{end}.bin"
        suffix = 0
        while saved.exists():
            suffix += 1
            saved = saved.with_name(f"torn-{path.stem.split('-')[-1]}-{end}.{suffix}.bin")
        fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(fragment)
            out.flush()
            os.fsync(out.fileno())
        os.ftruncate(self._fd, end)
        os.fsync(self._fd)
        self.size = end
        self.torn = TornTail(path.name, end, len(fragment),
                             hashlib.sha256(fragment).hexdigest(), saved.name)


def _last_line(path: Path) -> tuple[bytes | None, int, int]:
    """(the last complete line without its newline or None, the offset just after it,
    the file size). Reads backwards, so a large file costs no more than a small one."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        pos, buf = size, b""
        while pos > 0 and buf.count(b"\n") < 2:
            step = min(TAIL_BLOCK, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
    last_nl = buf.rfind(b"\n")
    if last_nl == -1:
        return None, 0, size
    start = buf.rfind(b"\n", 0, last_nl) + 1
    return buf[start:last_nl], pos + last_nl + 1, size


def first_entry(path: Path) -> dict[str, Any] | None:
    """The first entry of a log file when it is intact (as written, its hash right)."""
    try:
        with open(path, "rb") as f:
            raw = f.readline(MAX_LINE)
    except OSError:
        return None
    if not raw.endswith(b"\n"):
        return None
    entry, _ = _parse_line(raw)
    if entry is None or not _self_consistent(entry) or not as_written(raw, entry):
        return None
    return entry


def _parse_tail(line: bytes, path: Path) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if (not isinstance(entry, dict) or not isinstance(entry.get("seq"), int)
            or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("hash")))):
        raise AuditError(f"the last line of {path.name} is not an audit entry, so the chain "
                         "cannot be continued; run `wagate audit verify`, move the damaged "
                         "file out of the audit directory, and start again")
    return entry


# ---- verification --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    kind: str  # one of KINDS
    detail: str

    row: bool = False  # ``file`` names a database table and ``line`` a row's seq

    def __str__(self) -> str:
        where = (f"table {self.file} row {self.line}" if self.row
                 else f"file {self.file} line {self.line}")
        return f"{where}: {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Verification:
    entries: int  # entries verified (up to the problem, if any)
    files: int
    last_hash: str
    last_seq: int
    last_time: str | None
    problem: Problem | None = None
    # Where the chain starts: entry 1, or later when retention removed older files.
    first_seq: int = 0
    first_file: str = ""
    retention_seq: int = 0  # the audit.retention entry that removed the entries before

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(slots=True)
class _Start:
    """A chain that starts after entry 1: the oldest files are gone. Fine when an
    ``audit.retention`` entry later in the chain records removing them."""

    file: str
    seq: int
    prev: str
    missing: list[int]  # the file numbers before it
    explained_by: int = 0  # that entry's seq
    file_starts: dict[str, tuple[int, str]] = field(default_factory=dict)

    def passed(self, rec: _Record) -> None:
        """Note an entry that chained (from the start on)."""
        e = rec.entry
        assert e is not None
        if rec.first_in_file:
            self.file_starts[rec.file] = (e["seq"], e["prev"])
        if not self.explained_by and e["event"] == RETENTION_EVENT:
            # It explains the start when the first entry it says it kept is the one this
            # chain holds: the start is that file, or one it decided to remove (a crash
            # in the middle of the removals).
            kept = self.file_starts.get(str(e.get("kept_file")))
            if kept is not None and kept == (e.get("kept_seq"), e.get("kept_prev")):
                self.explained_by = e["seq"]

    def problem(self) -> Problem | None:
        if self.explained_by:
            return None
        one = len(self.missing) == 1
        names = (file_name(self.missing[0]) if one else
                 f"{file_name(self.missing[0])} to {file_name(self.missing[-1])}")
        return Problem(self.file, 1, "removed", f"{names} {'is' if one else 'are'} missing: "
                       f"{_gone(1, self.seq - 1)} gone, and no {RETENTION_EVENT} entry "
                       "records removing them (removed by hand?)")


@dataclass(slots=True)
class _Record:
    file: str
    number: int
    line: int
    size: int
    torn: bool
    first_in_file: bool
    last_file: bool
    entry: dict[str, Any] | None = None
    error: str = ""
    exact: bool = False  # the bytes are what the writer wrote for ``entry``
    row: bool = False  # a database row (``line`` is its seq), not a line of a file


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    try:
        entry = json.loads(raw)
    except ValueError as exc:
        return None, f"not a JSON object ({exc.__class__.__name__})"
    if not isinstance(entry, dict):
        return None, "not a JSON object"
    for key, kind in REQUIRED.items():
        value = entry.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return None, f"the entry has no valid {key!r}"
    return entry, ""


def _records(files: list[tuple[int, Path]]) -> Iterator[_Record]:
    for index, (number, path) in enumerate(files):
        last = index == len(files) - 1
        try:
            f: BinaryIO = open(path, "rb")  # noqa: SIM115 (closed below)
        except OSError as exc:
            yield _Record(path.name, number, 1, 0, False, True, last,
                          error=f"cannot be read: {exc.strerror or exc}")
            continue
        with f:
            for lineno, raw in enumerate(f, start=1):
                record = _Record(path.name, number, lineno, len(raw),
                                 not raw.endswith(b"\n"), lineno == 1, last)
                if not record.torn:
                    record.entry, record.error = _parse_line(raw)
                    record.exact = record.entry is not None and as_written(raw, record.entry)
                yield record


def row_record(table: str, seq: int, text: str, first: bool) -> _Record:
    """A database row (its ``seq`` column and entry text) as the chain check sees a
    line: the text must be byte for byte what the writer writes for its values."""
    raw = text.encode("utf-8", "surrogateescape") + b"\n"
    record = _Record(table, 1, seq, len(raw), False, first, True, row=True)
    record.entry, record.error = _parse_line(raw)
    record.exact = record.entry is not None and as_written(raw, record.entry)
    return record


class _Peekable:
    def __init__(self, source: Iterator[_Record]) -> None:
        self._source = source
        self._ahead: deque[_Record] = deque()

    def __iter__(self) -> _Peekable:
        return self

    def __next__(self) -> _Record:
        if self._ahead:
            return self._ahead.popleft()
        return next(self._source)

    def peek(self) -> _Record | None:
        if not self._ahead:
            try:
                self._ahead.append(next(self._source))
            except StopIteration:
                return None
        return self._ahead[0]


def verify(directory: Path, live: bool = False, expect_hash: str | None = None
           ) -> Verification:
    """Check the whole chain; stop at the first problem.

    ``live``: a writer holds the lock right now, so an incomplete last line is an entry
    being written, not damage, and files its retention removed while this read them
    are no damage either: when the listing changed under a problem, look again.
    ``expect_hash``: a hash kept elsewhere (printed by an earlier verify) that must
    still be in the chain.
    """
    directory = Path(directory)
    for _ in range(LIVE_RETRIES if live else 1):
        files = log_files(directory)
        result = _verify_files(directory, files, live, expect_hash)
        if result.ok or log_files(directory) == files:
            break
    return result


def _verify_files(directory: Path, files: list[tuple[int, Path]], live: bool,
                  expect_hash: str | None) -> Verification:
    if not files and (directory / LOCK_NAME).exists():
        return Verification(0, 0, GENESIS, 0, None, Problem(
            file_name(1), 1, "removed", "the audit directory was used by a writer but "
            "holds no log file: every file was removed"))
    return verify_records(_records(files), files, live, expect_hash)


def verify_records(records: Iterator[_Record], files: list[tuple[int, Path]], live: bool,
                   expect_hash: str | None) -> Verification:
    """The chain check over ``records`` (lines of ``files``, or a database's rows given
    as one file): every writer's entries are checked by this one function."""
    numbers = {n for n, _ in files}
    stream = _Peekable(records)
    prev1: _Record | None = None  # the last entry that chained
    prev2: _Record | None = None  # the one before it
    prev_number = 0
    entries = 0
    anchor_seen = expect_hash is None
    start: _Start | None = None
    first: _Record | None = None

    def result(problem: Problem | None) -> Verification:
        last = prev1.entry if prev1 is not None and prev1.entry is not None else None
        return Verification(entries, len(files), last["hash"] if last else GENESIS,
                            last["seq"] if last else 0, last["time"] if last else None, problem,
                            first.entry["seq"] if first and first.entry else 0,
                            first.file if first else "", start.explained_by if start else 0)

    def fail(at: _Record, kind: str, detail: str) -> Verification:
        return result(Problem(at.file, at.line, kind, detail, at.row))

    def chains_from(record: _Record | None, seq: int, prev: str) -> bool:
        return (record is not None and record.entry is not None
                and record.entry["seq"] == seq and record.entry["prev"] == prev)

    for rec in stream:
        if rec.torn:
            if live and rec.last_file:
                break  # the writer is in the middle of this line
            return fail(rec, "truncated", f"the line is incomplete ({rec.size} bytes, no end "
                        "of line): writing it was interrupted, or the file was cut; the "
                        "gateway sets such a line aside (torn-*.bin) when it next starts")
        if rec.entry is None:
            return fail(rec, "unreadable", rec.error)
        e = rec.entry
        exp_seq = prev1.entry["seq"] + 1 if prev1 is not None and prev1.entry else 1
        exp_prev = prev1.entry["hash"] if prev1 is not None and prev1.entry else GENESIS
        skipped = [n for n in range(prev_number + 1, rec.number) if n not in numbers]
        prev_number = rec.number
        consistent = _self_consistent(e)
        if not consistent or not rec.exact:
            if chains_from(stream.peek(), exp_seq, exp_prev):
                return fail(rec, "inserted", "this line is not part of the chain: the next "
                            "line continues from the line before it")
            if not consistent:
                return fail(rec, "edited", "the entry does not match its hash: it was "
                            "changed after it was written")
            return fail(rec, "edited", "the line is not as written: its values match its "
                        "hash, but its bytes were changed (a repeated key, spaces, escapes, "
                        "line ending or key order), so what a reader sees may be forged")
        if prev1 is None and rec.first_in_file and skipped and e["seq"] > 1:
            # The oldest files are gone; the chain starts here (checked at the end).
            start = _Start(rec.file, e["seq"], e["prev"], skipped)
            exp_seq, exp_prev = e["seq"], e["prev"]
        if e["seq"] == exp_seq and e["prev"] == exp_prev:
            prev2, prev1 = prev1, rec
            first = first or rec
            entries += 1
            if start is not None:
                start.passed(rec)
            if not anchor_seen and e["hash"] == expect_hash:
                anchor_seen = True
            continue
        if e["seq"] > exp_seq:
            gone = _gone(exp_seq, e["seq"] - 1)
            if rec.first_in_file and skipped:
                names = ", ".join(file_name(n) for n in skipped)
                return fail(rec, "removed", f"{names} {'is' if len(skipped) == 1 else 'are'} "
                            f"missing: {gone} gone")
            later = next((r for r in stream if r.entry is not None
                          and r.entry.get("seq") == exp_seq), None)
            if later is not None:
                return fail(rec, "reordered", f"entry {e['seq']} comes before entry {exp_seq} "
                            f"(which is at file {later.file} line {later.line})")
            if rec.first_in_file and prev1 is not None:
                return fail(rec, "truncated", f"{prev1.file} ends with entry {exp_seq - 1} but "
                            f"this file starts with entry {e['seq']}: the end of {prev1.file} "
                            f"was cut off ({gone} missing)")
            return fail(rec, "removed", f"{gone} missing before this line")
        if e["seq"] == exp_seq:
            if chains_from(stream.peek(), exp_seq, exp_prev):
                return fail(rec, "inserted", "this line is not part of the chain: the next "
                            "line continues from the line before it")
            if prev1 is not None:
                return fail(prev1, "edited", "the entry was changed and its hash recomputed: "
                            f"the next line (file {rec.file} line {rec.line}) still names "
                            "its original hash")
            return fail(rec, "edited", "the first entry does not start the chain")
        before = prev2.entry["hash"] if prev2 is not None and prev2.entry else GENESIS
        if (prev1 is not None and prev1.entry is not None  # a chained record has an entry
                and e["seq"] == prev1.entry["seq"] and e["prev"] == before):
            return fail(prev1, "inserted", "this line is not part of the chain: the next line "
                        "continues from the line before it")
        return fail(rec, "inserted", f"entry {e['seq']} appears again after entry "
                    f"{exp_seq - 1}: a copied or replayed line")
    if start is not None and (unexplained := start.problem()) is not None:
        return result(unexplained)
    if not anchor_seen:
        at = prev1 if prev1 is not None else None
        retired = (f", or that entry was in a file removed by retention (the log now starts "
                   f"at entry {start.seq})" if start is not None else "")
        return result(Problem(at.file if at else file_name(1), (at.line + 1) if at else 1,
                              "truncated", f"no entry has the expected hash {expect_hash}: "
                              f"the log was cut short, or rewritten, after that entry{retired}"))
    return result(None)


def _gone(first: int, last: int) -> str:
    return f"entry {first} is" if first == last else f"entries {first} to {last} are"


def read_tail(directory: Path, count: int) -> list[str]:
    """The last ``count`` lines of the log (across files), oldest first."""
    lines: deque[str] = deque(maxlen=max(0, count))
    wanted = max(0, count)
    collected: list[list[str]] = []
    have = 0
    for _, path in reversed(log_files(Path(directory))):
        if have >= wanted:
            break
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:  # removed by retention since it was listed: older still
            break
        with f:
            chunk = deque((raw.decode("utf-8", "replace").rstrip("\n") for raw in f),
                          maxlen=wanted - have)
        collected.append(list(chunk))
        have += len(chunk)
    for part in reversed(collected):
        lines.extend(part)
    return list(lines)
