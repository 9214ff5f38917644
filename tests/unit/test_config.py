"""Unit tests for gateway.core.config (the loader is read-only here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.config import Config, ConfigError, config_from_dict, config_to_dict, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_embedded_defaults_match_the_specification() -> None:
    config = load_config()
    assert config == Config()
    assert config.limits.per_number_per_minute == 10
    assert config.limits.per_number_per_hour == 100
    assert config.limits.global_per_day == 1000
    assert config.sessions.max_sessions == 5
    assert config.reconnect.attempts == 5
    assert config.reconnect.delay_seconds == 30.0
    assert config.qr.first_seconds == 60.0
    assert config.qr.next_seconds == 20.0
    assert config.qr.codes == 6
    assert config.messages.max_length == 4096
    assert config.transport.engine == "neonize"
    assert config.logging.log_message_text is False


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


def test_file_values_apply(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [limits]
        per_number_per_minute = 3
        [reconnect]
        delay_seconds = 2   # an int is accepted for a float
        [transport]
        engine = "simulator"
        [supervisor]
        restart_backoff_seconds = [0.1, 1]
        """,
    )
    config = load_config(str(path))
    assert config.limits.per_number_per_minute == 3
    assert config.limits.per_number_per_hour == 100  # untouched keys keep defaults
    assert config.reconnect.delay_seconds == 2.0
    assert isinstance(config.reconnect.delay_seconds, float)
    assert config.transport.engine == "simulator"
    assert config.supervisor.restart_backoff_seconds == (0.1, 1.0)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nper_number_per_minut = 3\n")
    with pytest.raises(ConfigError, match=r"limits\.per_number_per_minut"):
        load_config(path)


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="limitz"):
        load_config(write(tmp_path, "[limitz]\nx = 1\n"))


def test_section_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[limits\] must be a table"):
        load_config(write(tmp_path, "limits = 3\n"))


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[limits]\nper_number_per_hour = "100"\n', "limits.per_number_per_hour"),
        ("[limits]\nper_number_per_hour = 1.5\n", "limits.per_number_per_hour"),
        ("[sessions]\nmax_sessions = true\n", "sessions.max_sessions"),
        ('[reconnect]\ndelay_seconds = "30"\n', "reconnect.delay_seconds"),
        ("[http]\ndev = 1\n", "http.dev"),
        ("[http]\nhost = 8080\n", "http.host"),
        ('[supervisor]\nrestart_backoff_seconds = ["1"]\n', "supervisor.restart_backoff_seconds"),
        ("[supervisor]\nrestart_backoff_seconds = []\n", "supervisor.restart_backoff_seconds"),
    ],
)
def test_bad_type_names_the_dotted_key(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, toml))
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[limits]\nper_number_per_minute = 0\n", "limits.per_number_per_minute"),
        ("[limits]\nglobal_per_day = -5\n", "limits.global_per_day"),
        ("[sessions]\nmax_sessions = 0\n", "sessions.max_sessions"),
        ("[reconnect]\nattempts = 0\n", "reconnect.attempts"),
        ("[reconnect]\ndelay_seconds = 0\n", "reconnect.delay_seconds"),
        ("[reconnect]\ndelay_seconds = -1.5\n", "reconnect.delay_seconds"),
        ("[qr]\nnext_seconds = 0.0\n", "qr.next_seconds"),
        ("[messages]\nmax_length = 0\n", "messages.max_length"),
        ("[http]\nport = 0\n", "http.port"),
        ("[http]\nport = 70000\n", "http.port"),
        ("[supervisor]\nrestart_backoff_seconds = [1, -2]\n", "supervisor.restart_backoff_seconds"),
    ],
)
def test_non_positive_values_are_rejected(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, toml))
    assert key in str(info.value)


def test_literal_choices_are_enforced(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[transport]\nengine = "foo"\n'))
    message = str(info.value)
    assert "transport.engine" in message
    assert "'neonize'" in message and "'simulator'" in message


def test_literal_choices_are_case_sensitive() -> None:
    with pytest.raises(ConfigError, match=r"logging\.level"):
        load_config(overrides={"logging.level": "info"})


def test_overrides_with_dotted_keys_apply(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 9000\nworkers = 4\n")
    config = load_config(path, overrides={"http.port": 9100, "transport.engine": "simulator"})
    assert config.http.port == 9100  # the override beats the file
    assert config.http.workers == 4  # the rest of the file still applies
    assert config.transport.engine == "simulator"


def test_overrides_without_file() -> None:
    config = load_config(overrides={"limits.global_per_day": 5})
    assert config.limits.global_per_day == 5


def test_overrides_are_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"limits\.global_per_day"):
        load_config(overrides={"limits.global_per_day": 0})
    with pytest.raises(ConfigError, match=r"limits\.nope"):
        load_config(overrides={"limits.nope": 1})


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits\nper_number_per_minute = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_config_is_frozen() -> None:
    config = load_config()
    with pytest.raises(AttributeError):
        config.http.port = 1  # type: ignore[misc]


def test_config_to_dict_round_trips_through_overrides() -> None:
    config = load_config(overrides={"qr.codes": 2, "messages.max_length": 100})
    data = config_to_dict(config)
    assert data["qr"]["codes"] == 2
    assert data["limits"]["per_number_per_minute"] == 10
    flat = {
        f"{section}.{key}": value for section, keys in data.items() for key, value in keys.items()
    }
    assert load_config(overrides=flat) == config


@pytest.mark.parametrize("key", ["auth.allowed_networks", "auth.trusted_proxies",
                                 "cluster.allow_networks"])
def test_a_bad_network_is_refused_at_load_naming_the_key(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}: '10.0.0.300/8' is not an IPv4 or IPv6"):
        load_config(None, {key: ["10.0.0.0/8", "10.0.0.300/8"]})


@pytest.mark.parametrize(("key", "value"), [
    ("audit.max_file_mb", "nan"), ("audit.max_file_mb", "inf"), ("audit.max_file_mb", "0.001"),
    ("audit.max_file_mb", "5000"), ("audit.max_files", "1"), ("audit.max_files", "0"),
    ("audit.max_files", "-3"), ("audit.max_files", "1000000"), ("audit.max_files", "2.5"),
    ("audit.burst_seconds", "nan"), ("audit.burst_seconds", "inf"),
    ("audit.burst_seconds", "-inf"), ("audit.burst_seconds", "0.001"),
    ("audit.burst_seconds", "86400"),
])
def test_audit_bounds_are_finite_and_in_range_naming_the_key(
        tmp_path: Path, key: str, value: str) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"[{section}]\n{name} = {value}\n"))
    assert key in str(info.value)


def test_audit_bounds_at_their_limits_load() -> None:
    config = load_config(None, {"audit.max_file_mb": 0.01, "audit.max_files": 2,
                                "audit.burst_seconds": 3600})
    assert (config.audit.max_file_mb, config.audit.max_files) == (0.01, 2)
    assert config.audit.max_files == 2 and Config().audit.max_files == 16


@pytest.mark.parametrize(("overrides", "named"), [
    ({}, "transport.engine = 'neonize'"),  # the real engine: never without tokens
    ({"transport.engine": "simulator", "http.host": "0.0.0.0"}, "http.host = '0.0.0.0'"),
    ({"transport.engine": "simulator", "http.host": "192.0.2.1"}, "loopback"),
    ({"transport.engine": "simulator", "cluster.role": "leader",
      "cluster.allow_networks": ["10.0.0.0/8"]}, "cluster.role = 'leader'"),
])
def test_running_without_tokens_is_refused_outside_the_demo(
        tmp_path: Path, overrides: dict[str, object], named: str) -> None:
    """Only the demo (simulator, one host, loopback) runs without API tokens: a config
    file saying ``auth.required = false`` cannot open the real engine or a reachable
    API to everyone, whichever way the setting arrives."""
    path = write(tmp_path, "[auth]\nrequired = false\n")
    with pytest.raises(ConfigError, match=r"auth\.required = false") as caught:
        load_config(path, overrides)
    assert named in str(caught.value)
    # The web tier's copy of the config is checked the same way.
    handed_over = config_to_dict(load_config(None, {"transport.engine": "simulator"}))
    handed_over["auth"]["required"] = False
    handed_over["transport"]["engine"] = "neonize"
    with pytest.raises(ConfigError, match=r"auth\.required = false"):
        config_from_dict(handed_over)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_the_demo_runs_without_tokens_on_loopback(tmp_path: Path, host: str) -> None:
    path = write(tmp_path, "[auth]\nrequired = false\n[transport]\nengine = \"simulator\"\n")
    assert load_config(path, {"http.host": host}).auth.required is False


# ---- every number: finite and inside its documented range ----------------------------------

NUMERIC_KINDS = (int, float)


def numeric_keys() -> dict[str, type]:
    """Every number in the configuration by dotted key, with its type (a list of numbers
    counts as its item type)."""
    import dataclasses
    import typing

    found = {}
    sections = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        hints = typing.get_type_hints(sections[section.name])
        for name, hint in hints.items():
            kind = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
            if kind in NUMERIC_KINDS:
                found[f"{section.name}.{name}"] = kind
    return found


def test_every_number_in_the_config_has_a_range_that_the_example_documents() -> None:
    import re

    from gateway.core.config import RANGES

    example = (Path(__file__).resolve().parents[2] / "configs" / "gateway.example.toml"
               ).read_text(encoding="utf-8")
    keys = numeric_keys()
    assert set(keys) == set(RANGES), "a number without a range, or a range without a key"
    section = ""
    documented = {}
    for line in example.splitlines():
        if header := re.match(r"^\[(\w+)\]", line):
            section = header.group(1)
        if (key := re.match(r"^(\w+) = ", line)) and f"{section}.{key.group(1)}" in RANGES:
            documented[f"{section}.{key.group(1)}"] = line
    defaults = config_to_dict(Config())
    for key, allowed in RANGES.items():
        assert f"[{allowed.describe()}]" in documented[key], (key, documented[key])
        section, name = key.split(".")
        default = defaults[section][name]
        assert all(allowed.contains(v) for v in
                   (default if isinstance(default, tuple) else (default,))), key


@pytest.mark.parametrize("key", sorted(numeric_keys()))
def test_nan_infinity_and_huge_numbers_are_refused_naming_the_key(key: str) -> None:
    """``nan`` passed the old ``value <= 0`` checks (an idempotency window of nan hours
    matched nothing, a send timeout of nan failed every send) and ``inf`` or a huge value
    crashed actors with OverflowError: every number must be finite and in its range."""
    for bad in (float("nan"), float("inf"), float("-inf"), 1e308, -1e9):
        value: object = bad
        if numeric_keys()[key] is int and bad.is_integer():
            value = int(bad)
        if key == "supervisor.restart_backoff_seconds":
            value = [1.0, value]
        with pytest.raises(ConfigError) as info:
            load_config(overrides={key: value})
        assert key in str(info.value), (key, bad, str(info.value))


def test_just_outside_every_range_is_refused() -> None:
    from gateway.core.config import RANGES

    for key, allowed in RANGES.items():
        kind = numeric_keys()[key]
        below = allowed.low if allowed.above else allowed.low - 1
        for bad in (kind(below), kind(allowed.high + 1)):
            value: object = [bad] if key.endswith("backoff_seconds") else bad
            with pytest.raises(ConfigError) as info:
                load_config(overrides={key: value})
            assert allowed.describe() in str(info.value), key


@pytest.mark.parametrize("literal", ["nan", "+nan", "inf", "-inf"])
def test_toml_nan_and_inf_literals_stop_the_start_naming_the_key(
        tmp_path: Path, literal: str, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli.wagate import main

    path = write(tmp_path, f"[delivery]\nidempotency_hours = {literal}\n")
    assert main(["serve", "--config", str(path), "--data-dir", str(tmp_path / "data")]) == 2
    error = capsys.readouterr().err
    assert "configuration error: delivery.idempotency_hours must be a finite number" in error
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_range_edges_are_accepted() -> None:
    from gateway.core.config import RANGES

    for key, allowed in RANGES.items():
        kind = numeric_keys()[key]
        for edge in (allowed.high, allowed.low + (1 if kind is int else 0.001)
                     if allowed.above else allowed.low):
            value = kind(edge)
            overrides: dict[str, object] = {key: [value] if key.endswith("backoff_seconds")
                                            else value}
            if key == "messages.max_length" and value < len(Config().messages.test_message):
                overrides["messages.test_message"] = "x"
            if key == "delivery.idempotency_hours" and value > 168:
                overrides["messages.retention_hours"] = value
            if key == "messages.retention_hours" and value < 24:
                overrides["delivery.idempotency_hours"] = value
            if key == "pacing.typing_seconds":
                overrides["messages.send_timeout_seconds"] = value + 1
            if key == "messages.send_timeout_seconds" and value <= Config().pacing.typing_seconds:
                overrides["pacing.typing_seconds"] = 0.0
            if key == "cluster.lease_seconds":
                overrides |= {"cluster.lease_renew_seconds": min(value / 4, 600),
                              "cluster.lease_margin_seconds": min(value / 4, 600)}
            if key in ("cluster.lease_renew_seconds", "cluster.lease_margin_seconds"):
                overrides["cluster.lease_seconds"] = 3600.0
            load_config(overrides=overrides)


@pytest.mark.parametrize("text", ["", "   ", "a\x00b", "x" * 30])
def test_a_test_message_the_api_would_refuse_is_refused_at_load(text: str) -> None:
    with pytest.raises(ConfigError, match=r"messages\.test_message"):
        load_config(overrides={"messages.test_message": text, "messages.max_length": 20})


# ---- the engine's badge and pacing --------------------------------------------------


def test_messages_are_not_marked_as_sent_by_a_bot_unless_configured() -> None:
    assert Config().transport.mark_as_bot is False
    assert load_config(overrides={"transport.mark_as_bot": True}).transport.mark_as_bot is True


def test_the_real_engine_is_paced_by_default_and_the_simulator_is_not(tmp_path: Path) -> None:
    real = load_config().pacing
    assert (real.min_interval_seconds, real.jitter_seconds, real.warmup_days) == (1.0, 0.5, 3.0)
    simulated = load_config(write(tmp_path, '[transport]\nengine = "simulator"\n')).pacing
    assert (simulated.min_interval_seconds, simulated.jitter_seconds, simulated.typing_seconds,
            simulated.warmup_days) == (0.0, 0.0, 0.0, 0.0)
    # What the file says wins over the simulator's zeros, key by key.
    chosen = load_config(write(tmp_path, '[transport]\nengine = "simulator"\n'
                                         '[pacing]\nmin_interval_seconds = 2\n')).pacing
    assert (chosen.min_interval_seconds, chosen.jitter_seconds) == (2.0, 0.0)
    demo = load_config(overrides={"transport.engine": "simulator"})
    assert demo.pacing.min_interval_seconds == 0.0
    # Handing a config to another process keeps it exactly.
    from gateway.core.config import config_from_dict
    assert config_from_dict(config_to_dict(Config())) == Config()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.5", "3601", "1e300"])
@pytest.mark.parametrize("key", ["min_interval_seconds", "jitter_seconds", "warmup_days"])
def test_pacing_numbers_must_be_finite_and_in_range(tmp_path: Path, key: str,
                                                    value: str) -> None:
    if key == "warmup_days" and value == "3601":
        value = "366"
    with pytest.raises(ConfigError, match=f"pacing.{key}"):
        load_config(write(tmp_path, f"[pacing]\n{key} = {value}\n"))


@pytest.mark.parametrize("value", ["0", "-1", "1000001"])
def test_the_warmup_cap_must_allow_a_send(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"pacing\.warmup_daily_cap"):
        load_config(write(tmp_path, f"[pacing]\nwarmup_daily_cap = {value}\n"))


def test_typing_must_end_before_a_waiting_caller_times_out(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pacing\.typing_seconds.*send_timeout_seconds"):
        load_config(write(tmp_path, "[pacing]\ntyping_seconds = 5\n"
                                    "[messages]\nsend_timeout_seconds = 5\n"))
    with pytest.raises(ConfigError, match=r"pacing\.typing_seconds"):
        load_config(write(tmp_path, "[pacing]\ntyping_seconds = 31\n"))
    assert load_config(write(tmp_path, "[pacing]\ntyping_seconds = 2.5\n")
                       ).pacing.typing_seconds == 2.5


@pytest.mark.parametrize("name", ["", " wagate", "wa\ngate", "x" * 51])
def test_the_device_name_must_be_something_a_phone_can_list(name: str) -> None:
    with pytest.raises(ConfigError, match=r"transport\.device_name"):
        config_from_dict({"transport": {"device_name": name}})


def test_the_device_name_defaults_to_wagate() -> None:
    assert Config().transport.device_name == "wagate"
    assert config_from_dict({"transport": {"device_name": "Acme alerts"}}
                            ).transport.device_name == "Acme alerts"


def test_lease_defaults_leave_a_renewal_to_spare() -> None:
    cluster = Config().cluster
    assert (cluster.lease_seconds, cluster.lease_renew_seconds,
            cluster.lease_margin_seconds) == (10.0, 3.0, 2.0)


@pytest.mark.parametrize(("lease", "renew", "margin"), [
    (5.0, 3.0, 2.0),    # equal: no renewal to spare
    (4.0, 3.0, 2.0),
    (10.0, 9.5, 0.5),
    (1.0, 600.0, 1.0),
])
def test_a_lease_not_longer_than_renew_plus_margin_is_refused(lease: float, renew: float,
                                                             margin: float) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"cluster.lease_seconds": lease,
                               "cluster.lease_renew_seconds": renew,
                               "cluster.lease_margin_seconds": margin})
    message = str(info.value)
    assert "cluster.lease_seconds" in message and "lease_renew_seconds" in message
    assert "lease_margin_seconds" in message


@pytest.mark.parametrize("key", ["cluster.lease_seconds", "cluster.lease_renew_seconds",
                                 "cluster.lease_margin_seconds"])
@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("nan"), float("inf"), 1e12])
def test_lease_timings_must_be_finite_and_over_zero(key: str, bad: float) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides={key: bad})


def test_lease_timing_problem_refuses_what_the_loader_cannot_see() -> None:
    """``LeaseTiming`` is built from numbers that skip the loader (tests shrink them):
    the shared rule refuses nan, inf, 0 and negatives by itself."""
    from gateway.core.config import lease_timing_problem

    assert lease_timing_problem(10, 3, 2) is None
    assert lease_timing_problem(0.5, 0.1, 0.2) is None
    for bad in ((float("nan"), 3, 2), (float("inf"), 3, 2), (10, 0, 2), (10, 3, -1)):
        assert "finite numbers over 0" in (lease_timing_problem(*bad) or "")


MEMBER = {"cluster.role": "member", "cluster.advertise_address": "10.0.0.2",
          "cluster.leaders": ["10.0.0.1:19500"], "cluster.allow_networks": ["10.0.0.1/32"]}


def test_the_lease_database_is_a_postgresql_url_whose_value_is_never_shown() -> None:
    from gateway.core.config import lease_mode

    url = "postgresql://wagate:s3cret@10.0.0.5/wagate"
    assert lease_mode(load_config(overrides={**MEMBER, "cluster.database_url": url}))
    assert not lease_mode(load_config(overrides=MEMBER))
    assert not lease_mode(load_config())
    with pytest.raises(ConfigError,
                       match=r"cluster\.database_url must be a PostgreSQL URL") as info:
        load_config(overrides={**MEMBER, "cluster.database_url": "mysql://u:s3cret@h/db"})
    assert "s3cret" not in str(info.value)


def test_a_single_host_refuses_a_lease_database() -> None:
    with pytest.raises(ConfigError, match="single host keeps all its state"):
        load_config(overrides={"cluster.database_url": "postgresql://h/db"})


def _storage(tmp_path: Path, **storage: str) -> Config:
    return config_from_dict({"storage": {"data_dir": str(tmp_path / "data"), **storage}})


def test_media_dir_defaults_to_data_dir_media_and_may_be_a_shared_directory(
        tmp_path: Path) -> None:
    assert _storage(tmp_path).media_path == tmp_path / "data" / "media"
    shared = tmp_path / "shared" / "media"
    config = _storage(tmp_path, media_dir=str(shared),
                      sessions_dir=str(tmp_path / "shared" / "sessions"))
    assert config.media_path == shared


@pytest.mark.parametrize(("media_dir", "why"), [
    ("media", "absolute"),
    ("./shared/media", "absolute"),
    ("{data}", "data_dir"),
    ("{tmp}", "data_dir"),
    ("{sessions}", "sessions"),
    ("{sessions}/media", "sessions"),
    ("{tmp}/shared", "sessions"),  # holds the sessions' directory
])
def test_a_media_dir_that_is_relative_or_overlaps_other_stores_is_refused(
        tmp_path: Path, media_dir: str, why: str) -> None:
    sessions = tmp_path / "shared" / "sessions"
    value = media_dir.format(data=tmp_path / "data", tmp=tmp_path, sessions=sessions)
    with pytest.raises(ConfigError, match=r"storage\.media_dir") as info:
        _storage(tmp_path, media_dir=value, sessions_dir=str(sessions))
    assert why in str(info.value)


def test_the_host_label_is_a_safe_file_name(tmp_path: Path) -> None:
    config = config_from_dict({"cluster": {"host_name": "../eu west/1"}})
    assert config.host_label == "___eu_west_1"
