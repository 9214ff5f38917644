"""The ``wagate`` command: serve the gateway, and drive the simulated WhatsApp service.

Every subcommand takes ``--config`` and ``--data-dir``; without ``--config`` the file
``configs/gateway.toml`` is used when it exists, otherwise the embedded defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.core.config import DEFAULT_CONFIG_PATH, RANGES, Config, ConfigError, load_config
from gateway.core.ranges import Range, flag

# The demo runs on the simulator and, bound to loopback, without API tokens; it logs for a
# person at a terminal: readable lines, and the dashboard's polling only at DEBUG. It lets
# a webhook receiver on this machine through (plain http to loopback), so the README's
# "Webhooks in two minutes" works as written; the production defaults allow none.
DEMO_OVERRIDES: dict[str, Any] = {"transport.engine": "simulator", "auth.required": False,
                                  "logging.format": "console", "logging.reads_at_debug": True,
                                  "webhooks.allow_insecure": ["127.0.0.0/8", "localhost"]}
# Ranges of the simulator commands' numbers (the README lists them with the commands).
SCAN_WAIT = Range(0, 3600)
DOWN_FOR = Range(0, 86400)
FAIL_COUNT = Range(0, 1_000_000)
STALL = Range(0, 3600)


DESCRIPTION = ("Serve the WhatsApp gateway, manage its tokens, keys and audit log, and drive "
               "the simulated WhatsApp service. Every command takes --config and --data-dir; "
               f"without --config the file {DEFAULT_CONFIG_PATH} is used when it exists, "
               "otherwise the embedded defaults.")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        # A command group alone (`wagate sim`) shows its own commands, not the top list.
        getattr(args, "help_parser", parser).print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"wagate: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    from gateway import __version__

    parser = argparse.ArgumentParser(prog="wagate", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"wagate {__version__}",
                        help="print the installed wagate's version and exit")
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="run the gateway in the foreground")
    _common(serve)
    serve.add_argument("--demo", action="store_true",
                       help="use the simulated WhatsApp service (no phone needed)")
    serve.add_argument("--dev", action="store_true",
                       help="Flask's development server and readable console logs")
    serve.add_argument("--host", help="HTTP bind address (http.host)")
    serve.add_argument("--port", type=flag(int, RANGES["http.port"]),
                       help="HTTP port (http.port)")
    serve.add_argument("--admin-port", type=flag(int, RANGES["actors.admin_port"]),
                       help="actor system port (actors.admin_port)")
    serve.set_defaults(handler=cmd_serve)

    sim = commands.add_parser("sim", help="control the simulated WhatsApp service")
    sim.set_defaults(help_parser=sim)
    sim_commands = sim.add_subparsers(title="simulator commands")

    scan = sim_commands.add_parser("scan", help="link the pending QR code, as a phone would")
    _common(scan)
    scan.add_argument("--session", default="default",
                      help="the session whose code to scan (default: default)")
    scan.add_argument("--phone", help="the simulated phone's number with its country code, "
                      "e.g. +15551234567 (default: one made from the session's name, "
                      "+15557297149 for default)")
    scan.add_argument("--code", help="type this pairing code (from whatsAppRequestPairingCode) "
                      "instead of scanning the QR code")
    scan.add_argument("--wait", type=flag(float, SCAN_WAIT), default=10.0,
                      help="seconds to wait for a QR code to appear, then for the session "
                      f"to link ({SCAN_WAIT.describe()}; default 10)")
    scan.set_defaults(handler=cmd_sim_scan)

    drop = sim_commands.add_parser("drop", help="drop connections (the session must reconnect)")
    _common(drop)
    drop.add_argument("--session", help="only this session (default: all)")
    drop.add_argument("--down-for", type=flag(float, DOWN_FOR), default=0.0,
                      help="keep the service unreachable this many seconds "
                      f"({DOWN_FOR.describe()})")
    drop.set_defaults(handler=cmd_sim_drop)

    restore = sim_commands.add_parser("restore", help="end an outage started with --down-for")
    _common(restore)
    restore.set_defaults(handler=cmd_sim_restore)

    logout = sim_commands.add_parser("logout", help="unlink a session's device from the phone")
    _common(logout)
    logout.add_argument("--session", default="default",
                        help="the session whose device to unlink (default: default)")
    logout.set_defaults(handler=cmd_sim_logout)

    fail = sim_commands.add_parser("fail-next", help="make the next N sends fail")
    _common(fail)
    fail.add_argument("count", type=flag(int, FAIL_COUNT), help=FAIL_COUNT.describe())
    fail.add_argument("--session", help="only sends of this session (default: any)")
    kind = fail.add_mutually_exclusive_group()
    kind.add_argument("--transient", action="store_true",
                      help="a temporary server error (retried) instead of a rejection")
    kind.add_argument("--ambiguous", action="store_true",
                      help="delivered, but the ack never comes (the outcome is unknown)")
    kind.add_argument("--rate-overlimit", action="store_true",
                      help="WhatsApp answers the recipient lookup 429 rate-overlimit (the "
                      "session pauses its sends)")
    kind.add_argument("--no-account", action="store_true",
                      help="WhatsApp finds no account for the recipient (NOT_ON_WHATSAPP)")
    fail.set_defaults(handler=cmd_sim_fail_next)

    stall = sim_commands.add_parser(
        "stall-after-send", help="every send reaches its recipient, then its answer waits "
        "SECONDS (a process stopped meanwhile never hears it); 0 ends the stall and answers "
        "the sends waiting")
    _common(stall)
    stall.add_argument("seconds", type=flag(float, STALL), help=STALL.describe())
    stall.set_defaults(handler=cmd_sim_stall_after_send)

    receipt = sim_commands.add_parser(
        "receipt", help="the recipient's device confirms a message (delivered or read)")
    _common(receipt)
    receipt.add_argument("message_id", help="the message's WhatsApp id (see `wagate sim inbox`, "
                         "or whatsAppMessage's whatsAppMessageId)")
    receipt.add_argument("kind", nargs="?", choices=["delivered", "read"], default=None,
                         help="delivered (the default) or read")
    receipt.add_argument("--read", action="store_true", help="the same as the kind read")
    receipt.add_argument("--lid", action="store_true",
                         help="name the sender by LID instead of its number, as WhatsApp "
                         "increasingly does")
    receipt.add_argument("--from", dest="from_phone",
                         help="from another number than the message's recipient")
    receipt.add_argument("--session", help="to another session than the message's")
    receipt.add_argument("--at", type=float, default=None,
                         help="when the device wrote it (unix seconds; default now)")
    receipt.set_defaults(handler=cmd_sim_receipt)

    reply = sim_commands.add_parser(
        "reply", help="someone writes to a session's account (a reply to a notification)")
    _common(reply)
    reply.add_argument("--to-session", default="default", metavar="NAME",
                       help="the session whose account receives it (default: default)")
    reply.add_argument("--from", dest="from_phone", required=True, metavar="NUMBER",
                       help="the sender's number, digits with the country code")
    text = reply.add_mutually_exclusive_group()
    text.add_argument("--text", help="what they write (with --file: the file's caption)")
    text.add_argument("--text-file", metavar="PATH",
                      help="what they write, read from a UTF-8 file (- for stdin): for a text "
                           "longer than a command line may be")
    reply.add_argument("--quote", metavar="MESSAGE_ID",
                       help="the WhatsApp id of the message it replies to")
    reply.add_argument("--name", default="", help="the sender's push name")
    reply.add_argument("--file", metavar="PATH",
                       help="they send this file (a picture, a voice note, a document ...); "
                            "its kind is read from its bytes")
    reply.set_defaults(handler=cmd_sim_reply)

    auto = sim_commands.add_parser(
        "auto-receipt", help="every later message gets a receipt at once, before its ack")
    _common(auto)
    auto.add_argument("kind", choices=["delivered", "read", "off"],
                      help="the receipt every later message gets, or off to stop")
    auto.add_argument("--lid", action="store_true", help="receipts name the sender by LID")
    auto.set_defaults(handler=cmd_sim_auto_receipt)

    unregister = sim_commands.add_parser(
        "unregister", help="a number has no WhatsApp account: lookups say so, sends to it "
        "are acked but never delivered")
    _common(unregister)
    unregister.add_argument("number", help="digits with the country code, e.g. 15551234567")
    unregister.set_defaults(handler=cmd_sim_unregister)

    register = sim_commands.add_parser(
        "register", help="a number has a WhatsApp account again (every number has by default)")
    _common(register)
    register.add_argument("number", help="digits with the country code, e.g. 15551234567")
    register.set_defaults(handler=cmd_sim_register)

    inbox = sim_commands.add_parser("inbox", help="every message that reached a recipient")
    _common(inbox)
    inbox.add_argument("--json", action="store_true", help="one JSON document")
    inbox.set_defaults(handler=cmd_sim_inbox)

    media = sim_commands.add_parser(
        "media", help="write the file a media message in the inbox carried")
    _common(media)
    media.add_argument("message_id", metavar="MESSAGE_ID", help="its id, as `inbox` lists it")
    media.add_argument("--out", required=True, metavar="FILE",
                       help="where to write the bytes (- for stdout)")
    media.set_defaults(handler=cmd_sim_media)

    from gateway.cli import audit, backup, keys, schema, status, tokens

    tokens.register(commands, _common)
    keys.register(commands, _common)
    status.register(commands, _common)
    audit.register(commands, _common)
    schema.register(commands, _common)
    backup.register(commands, _common)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path,
                        help=f"TOML config file (default: {DEFAULT_CONFIG_PATH} if present)")
    parser.add_argument("--data-dir", help="where durable state lives (storage.data_dir)")


def config_file_of(args: argparse.Namespace) -> Path | None:
    """The config file a command reads: ``--config``, else the default one if present."""
    if args.config is None and DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_CONFIG_PATH
    return args.config


def resolve_config(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Config:
    path = config_file_of(args)
    overrides = dict(extra or {})
    if args.data_dir:
        overrides["storage.data_dir"] = args.data_dir
    return load_config(path, overrides)


# ---- serve ------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.cli.serve import StartupError, serve

    overrides: dict[str, Any] = dict(DEMO_OVERRIDES) if args.demo else {}
    for key, value in (("http.host", args.host), ("http.port", args.port),
                       ("actors.admin_port", args.admin_port)):
        if value is not None:
            overrides[key] = value
    if args.dev:
        overrides["http.dev"] = True
    config = resolve_config(args, overrides)
    from gateway.auth.sign_in import CONFIG_FILE_ENV

    # The dashboard's token command names it (gateway/auth/sign_in.py). Without a file, one
    # named by this process's own environment (inherited) is none of this gateway's.
    config_file = config_file_of(args)
    if config_file is not None:
        os.environ[CONFIG_FILE_ENV] = str(config_file.resolve())
    else:
        os.environ.pop(CONFIG_FILE_ENV, None)
    try:
        if config.transport.engine != "simulator":  # no Go library is ever loaded then
            start_with_engine_environment(config.transport.mark_as_bot)
        return serve(config)
    except StartupError as exc:
        print(f"wagate: cannot start: {exc}", file=sys.stderr)
        return 1


def start_with_engine_environment(mark_as_bot: bool) -> None:
    """Make sure this launcher runs with the environment the engine must see, by
    running itself again (same pid, same arguments) with it when it does not.

    The engine is a Go library, and Go reads the environment block a process was
    exec'd with: a variable set from Python, even before the library loads or before
    a fork, never reaches it. Every actor process is forked from this launcher and
    inherits its block, so setting it here, by exec, is what the sessions' engine sees.
    Called before anything is started: nothing (threads, files, children) is lost.
    """
    from actors.transport.engine import (
        INSTALL_STAMP_ENV,
        REEXEC_MARKER,
        engine_environment,
        environment_mismatch,
        exec_environment,
        install_stamp,
    )
    from gateway.cli.serve import StartupError

    # What was installed when this gateway started, for every process it starts (kept
    # over the re-exec below): a session that cannot load its engine later compares.
    if os.environ.get(REEXEC_MARKER) != str(os.getpid()):
        os.environ[INSTALL_STAMP_ENV] = install_stamp()
    wanted = engine_environment(mark_as_bot)
    missing = environment_mismatch(wanted, exec_environment())
    if not missing:
        return
    if os.environ.get(REEXEC_MARKER) == str(os.getpid()) or not sys.executable:
        raise StartupError(f"cannot start the engine with {missing} in its environment; "
                           "start wagate with these variables set")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv,
                  {**os.environ, **wanted, REEXEC_MARKER: str(os.getpid())})
    except OSError as exc:
        raise StartupError(f"cannot run {sys.executable} again with {missing} in its "
                           f"environment ({exc}); start wagate with these variables set"
                           ) from None


# ---- simulator ----------------------------------------------------------------------------


def _server(args: argparse.Namespace) -> Any:
    from actors.transport.simulator import SimulatorServer

    config = resolve_config(args)
    return SimulatorServer(config.data_path, simulator_dir(args, config))


def simulator_dir(args: argparse.Namespace, config: Config) -> Path:
    """The simulated service of the gateway the command means, found as `wagate status`
    finds a gateway: the one running on the data_dir; else, when neither --config nor
    --data-dir named one, the one answering on actors.admin_port (a `wagate sim` typed
    in another directory than the gateway's would otherwise see an empty ./data); else
    the data_dir's own service, kept on disk while its gateway is stopped. Never creates
    a data_dir: a control command on one that does not exist is a mistake, said so."""
    from actors.transport.simulator import SimulatorError
    from gateway.cli.status import (
        GatewayNotYours,
        GatewayUnreachable,
        HealthClient,
        running_admin_port,
    )

    if running_admin_port(config.data_path) is not None:
        return config.simulator_path
    named = args.config is not None or args.data_dir is not None
    if not named:
        client = HealthClient(config)
        try:
            report = client.report()
        except GatewayNotYours as exc:
            raise SimulatorError(str(exc)) from None
        except GatewayUnreachable:
            report = None
        if report is not None:
            if not report.simulator_dir:
                raise SimulatorError(
                    f"the gateway running on 127.0.0.1:{client.port} does not use the "
                    "simulated service (its transport.engine is not \"simulator\"); `wagate "
                    "sim` controls only a gateway started with --demo or the simulator")
            found = Path(report.simulator_dir)
            problem = foreign_simulator_problem(found, os.geteuid())
            if problem is not None:
                raise SimulatorError(
                    f"the gateway running on 127.0.0.1:{client.port} is not yours: {problem}; "
                    "run `wagate sim` as the user that runs it, or name your own gateway's "
                    "data_dir with --data-dir (or its config with --config)")
            if found != config.simulator_path:
                print(f"wagate sim: using the simulated service of the gateway running on "
                      f"127.0.0.1:{client.port} ({found})", file=sys.stderr)
            return found
    if config.data_path.is_dir():
        return config.simulator_path
    nobody = "" if named else f", and none answers on 127.0.0.1:{config.actors.admin_port}"
    raise SimulatorError(
        f"no gateway runs on data_dir {config.data_path} (it does not exist){nobody}; "
        "start one with `wagate serve --demo`, or name the running one's data_dir with "
        "--data-dir (or its config with --config)")


def foreign_simulator_problem(path: Path, uid: int) -> str | None:
    """Why the simulated service at ``path`` (named by a gateway found on the admin
    port, which any user of the machine may run) is not ``uid``'s to drive, or None.
    Judged by the owner of ``path``, or of its nearest existing parent while no session
    has made it yet: writing there would re-mode another user's directory and leave
    files that user's gateway cannot write."""
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        owner = existing.stat().st_uid
    except OSError as exc:
        return f"its simulated service {path} cannot be looked at ({exc.strerror})"
    if owner != uid:
        return f"its simulated service {path} belongs to another user (uid {owner})"
    return None


def _run_sim(args: argparse.Namespace, action: Any) -> int:
    from actors.transport.simulator import SimulatorError

    try:
        server = _server(args)
    except SimulatorError as exc:
        print(f"wagate sim: {exc}", file=sys.stderr)
        return 1
    try:
        return int(action(server) or 0)
    except SimulatorError as exc:
        print(f"wagate sim: {exc}", file=sys.stderr)
        return 1
    finally:
        server.close()


def cmd_sim_scan(args: argparse.Namespace) -> int:
    """Wait for a code to scan, scan it, then wait until the session took it: the result
    line means the device is linked, not merely that a scan was recorded."""
    from actors.transport.simulator import SimulatorError
    from gateway.cli.progress import Progress

    session = args.session

    def scan(server: Any) -> int:
        linked = already_linked(server, session)
        if linked is not None:  # nothing will show a code: say so now, not after --wait
            if args.phone is None and args.code is None:
                print(linked)
                return 0
            raise SimulatorError(linked)
        progress = Progress()
        deadline = time.monotonic() + max(0.0, args.wait)
        while server.pending_qr(session) is None and (left := deadline - time.monotonic()) > 0:
            progress.update(f"waiting for session '{session}' to show a QR code",
                            f"{left:.0f} s left")
            time.sleep(min(0.1, left))
        progress.done()
        if server.pending_qr(session) is None:
            raise SimulatorError(f"no QR code appeared for session '{session}' within "
                                 f"{args.wait:g} s; call whatsAppConnect for it first (a "
                                 "linked session shows none: see `wagate status`)")
        before = device_of(server.devices(), session)
        phone = server.scan(session, args.phone, args.code)
        deadline = time.monotonic() + max(1.0, args.wait)
        while not newly_linked(before, server.devices(), session, phone):
            left = deadline - time.monotonic()
            if left <= 0:
                progress.done()
                raise SimulatorError(f"scanned the code of session '{session}', but the "
                                     f"gateway did not link it within {max(1.0, args.wait):g} "
                                     "s; see `wagate status` and data_dir/logs/actors.log")
            progress.update(f"scanned; waiting for session '{session}' to link",
                            f"{left:.0f} s left")
            time.sleep(min(0.05, left))
        progress.done()
        print(f"linked session '{session}' to phone +{phone}")
        return 0

    return _run_sim(args, scan)


def device_of(devices: list[dict[str, Any]], session: str) -> dict[str, Any] | None:
    """The session's linked device among ``devices`` (SimulatorServer.devices), or None."""
    return next((d for d in devices if d["session"] == session), None)


def newly_linked(before: dict[str, Any] | None, devices: list[dict[str, Any]], session: str,
                 phone: str) -> bool:
    """Whether ``devices`` show ``session`` linked to ``phone`` by a device other than
    ``before`` (its device when the code was scanned). Not by comparing the device's
    ``linked_at`` with the time of the scan: the session process writes that date on
    its own wall clock, which an NTP step or a resumed VM may have moved an hour from
    this process's, and the scan then never seemed to link."""
    device = device_of(devices, session)
    return device is not None and device["phone"] == phone and device != before


def already_linked(server: Any, session: str) -> str | None:
    """What to say when the session has a linked device and no code to scan (None when
    it has a code, or no device): a linked session never shows a QR code."""
    if server.pending_qr(session) is not None:
        return None
    device = next((d for d in server.devices() if d["session"] == session), None)
    if device is None:
        return None
    return (f"session '{session}' is already linked to phone +{device['phone']}: there is "
            "nothing to scan (to link it anew, log it out with whatsAppDisconnect, then "
            "call whatsAppConnect)")


def cmd_sim_drop(args: argparse.Namespace) -> int:
    def drop(server: Any) -> None:
        server.drop(args.session, args.down_for)
        target = f"session '{args.session}'" if args.session else "all sessions"
        if args.down_for:
            after = (f"; service unreachable for {args.down_for:g} s: sends queue while "
                     "the session retries (see `wagate status`), and it is FAILED if the "
                     "outage outlasts its reconnect attempts (reconnect.*)")
        else:
            after = ("; the first reconnect attempt is immediate, so it is back at once: "
                     "`wagate status` shows its UPTIME starting again")
        print(f"dropped the connection of {target}{after}")

    return _run_sim(args, drop)


def cmd_sim_restore(args: argparse.Namespace) -> int:
    def restore(server: Any) -> None:
        server.restore()
        print("the simulated service is reachable again")

    return _run_sim(args, restore)


def cmd_sim_logout(args: argparse.Namespace) -> int:
    def logout(server: Any) -> None:
        server.logout(args.session)
        print(f"unlinked the device of session '{args.session}'")

    return _run_sim(args, logout)


def cmd_sim_fail_next(args: argparse.Namespace) -> int:
    def fail_next(server: Any) -> None:
        server.fail_next(args.count, args.session, args.transient, args.ambiguous,
                         rate_overlimit=args.rate_overlimit, no_account=args.no_account)
        kind = ("fail temporarily" if args.transient
                else "arrive without an ack" if args.ambiguous
                else "be rate-limited (429)" if args.rate_overlimit
                else "find no account" if args.no_account else "be rejected")
        print(f"the next {args.count} sends will {kind}")

    return _run_sim(args, fail_next)


def cmd_sim_stall_after_send(args: argparse.Namespace) -> int:
    def stall(server: Any) -> None:
        server.stall_after_send(args.seconds)
        print(f"every send now waits {args.seconds:g} s for its answer after reaching its "
              "recipient" if args.seconds else "sends are answered at once again")

    return _run_sim(args, stall)


def cmd_sim_receipt(args: argparse.Namespace) -> int:
    def receipt(server: Any) -> None:
        kind = args.kind or ("read" if args.read else "delivered")
        entry = server.receipt(args.message_id, kind, args.lid, args.from_phone, args.session,
                               args.at)
        print(f"{kind} receipt for {args.message_id} from {entry['user']}@{entry['server']}")

    return _run_sim(args, receipt)


def _reply_text(args: argparse.Namespace) -> str | None:
    """The reply's text: ``--text``, or ``--text-file`` read whole (stdin for ``-``);
    None, said on stderr, when the file cannot be read or is not UTF-8."""
    if args.text_file is None:
        if args.text is None and args.file is None:
            print("wagate sim: reply needs --text, --text-file or --file", file=sys.stderr)
            return None
        return "" if args.text is None else str(args.text)
    try:
        raw = (sys.stdin.buffer.read() if args.text_file == "-"
               else Path(args.text_file).read_bytes())
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"wagate sim: --text-file {args.text_file}: {exc}", file=sys.stderr)
        return None


def cmd_sim_reply(args: argparse.Namespace) -> int:
    text = _reply_text(args)
    if text is None:
        return 2
    data: bytes | None = None
    if args.file is not None:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            print(f"wagate sim: --file {args.file}: {exc.strerror or exc}", file=sys.stderr)
            return 2

    def reply(server: Any) -> None:
        entry = server.reply(args.to_session, args.from_phone, text, args.quote, args.name,
                             media=data, file_name=Path(args.file).name if args.file else "")
        what = f"file of {len(data)} bytes" if data is not None else "message"
        print(f"{what} {entry['id']} from {entry['from']} to session {args.to_session} "
              "(its client reports it within one poll interval)")

    return _run_sim(args, reply)


def cmd_sim_auto_receipt(args: argparse.Namespace) -> int:
    def auto_receipt(server: Any) -> None:
        kind = None if args.kind == "off" else args.kind
        server.auto_receipt(kind, args.lid)
        print("no automatic receipts" if kind is None else
              f"every later message gets a {kind} receipt at once"
              + (" (sender named by LID)" if args.lid else ""))

    return _run_sim(args, auto_receipt)


def _number_refused(number: str) -> bool:
    """A malformed number is refused before any gateway is looked for: the mistake is
    in the command, whatever runs."""
    from actors.transport.simulator import SimulatorError, checked_phone

    try:
        checked_phone(number)
    except SimulatorError as exc:
        print(f"wagate sim: {exc}", file=sys.stderr)
        return True
    return False


def cmd_sim_unregister(args: argparse.Namespace) -> int:
    if _number_refused(args.number):
        return 2

    def unregister(server: Any) -> None:
        print(f"+{server.unregister(args.number)} is no longer on the simulated WhatsApp")

    return _run_sim(args, unregister)


def cmd_sim_register(args: argparse.Namespace) -> int:
    if _number_refused(args.number):
        return 2

    def register(server: Any) -> None:
        print(f"+{server.register(args.number)} is on the simulated WhatsApp")

    return _run_sim(args, register)


def cmd_sim_inbox(args: argparse.Namespace) -> int:
    def inbox(server: Any) -> None:
        messages = server.inbox()
        if args.json:
            print(json.dumps(messages, ensure_ascii=False))
            return
        if not messages:
            print("(no messages)")
        for m in messages:
            when = datetime.fromtimestamp(m["time"], UTC).strftime("%Y-%m-%d %H:%M:%S")
            line = f"{when}  {m['session']:<10} -> +{m['to']:<15} {m['id']}  {m['text']!r}"
            if m.get("kind"):
                line += (f"  [{m['kind']} {m['mime']} {m['size']} bytes sha256 {m['sha256']}"
                         + (f" {m['file_name']!r}" if m.get("file_name") else "") + "]")
            print(line)

    return _run_sim(args, inbox)


def cmd_sim_media(args: argparse.Namespace) -> int:
    def media(server: Any) -> None:
        data = server.media_bytes(args.message_id)
        if args.out == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            return
        Path(args.out).write_bytes(data)
        print(f"wrote {len(data)} bytes to {args.out}")

    return _run_sim(args, media)


if __name__ == "__main__":
    sys.exit(main())
