"""The config file: the reference file loads and documents every key, defaults are what it
says, and every kind of mistake comes back as a ConfigError with a key path."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from balloond.core.errors import ConfigError
from balloond.core.policy import Reclaim
from balloond.core.units import GiB, MiB, parse_percent, parse_size
from balloond.runtime.config import (
    Amount,
    Config,
    DaemonConfig,
    DiscoveryConfig,
    HostConfig,
    LibvirtConfig,
    Policy,
    ProxmoxConfig,
    StaticGuest,
    config_schema,
    load_config,
    parse_config,
    valid_guest_name,
)

REFERENCE = Path(__file__).resolve().parent.parent / "config" / "balloond.toml"


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return dict(info.value.problems)


# --- the reference file --------------------------------------------------------------------


def test_reference_file_loads_and_equals_the_defaults() -> None:
    assert load_config(REFERENCE) == parse_config({})


def test_reference_file_documents_every_key_with_its_default() -> None:
    text = REFERENCE.read_text()
    sections: list[tuple[str, type[BaseModel]]] = [
        ("daemon", DaemonConfig),
        ("guests", StaticGuest),
        ("discovery", DiscoveryConfig),
        ("proxmox", ProxmoxConfig),
        ("libvirt", LibvirtConfig),
        ("host", HostConfig),
        ("policies.default", Policy),
    ]
    for _, model in sections:
        for key in model.model_fields:
            # Set (or shown commented out) as `key = ...`, with a comment block above it.
            match = re.search(rf"((?:^#.*\n)+)^#? ?{key} = ", text, re.MULTILINE)
            assert match, f"{model.__name__}.{key} is not in {REFERENCE.name}"
            if model is not StaticGuest:
                assert "Default" in match.group(1), f"{key}: no default stated"
    for key in Config.model_fields:
        assert re.search(rf"^#? ?\[+{key}", text, re.MULTILINE), f"section [{key}] missing"


def test_reference_file_examples_are_valid_when_uncommented() -> None:
    text = REFERENCE.read_text()
    uncommented = re.sub(
        r"^# (\[\[guests\]\]|\[policies\.database\]|name = |qmp = |min_size = |free_low = "
        r"|free_high = |weight = |reclaim = |\"db-\*\" = |\"1\?\?\" = )",
        r"\1",
        text,
        flags=re.MULTILINE,
    )
    config = parse_config(tomllib.loads(uncommented))
    assert config.guests[0].name == "web-01"
    assert config.policy_name_for("db-7") == "database"
    assert config.policy_name_for("101") == "database"
    assert config.policy_name_for("web-01") == "default"
    assert config.policies["database"].reclaim is Reclaim.HOST_PRESSURE


# --- defaults and derived values -----------------------------------------------------------


def test_defaults() -> None:
    config = Config()
    assert config.daemon.poll_interval_s == 1.0
    assert config.daemon.state_dir == Path("/var/lib/balloond")
    assert config.daemon.runtime_dir == Path("/run/balloond")
    assert config.daemon.audit_log == Path("/var/lib/balloond/audit.jsonl")
    assert config.daemon.log_format == "auto"
    assert config.daemon.dry_run is False
    assert config.daemon.history_s is None
    assert config.daemon.history_window_s == 15.0
    assert config.daemon.history_len == 15
    slow = Config.model_validate({"daemon": {"poll_interval_s": 10}})
    assert slow.daemon.history_window_s == 3 * 10 + 1 + 10
    assert config.discovery.globs == ()
    assert config.host.reserve_bytes(10 * GiB) == GiB
    assert list(config.policies) == ["default"]
    assert config.policy_name_for("anything") == "default"


def test_default_policy_resolves_for_a_1gib_guest() -> None:
    p = Policy().resolve(GiB)
    assert (p.min_bytes, p.max_bytes) == (256 * MiB, GiB)
    assert (p.free_low_bytes, p.free_high_bytes) == (int(0.15 * GiB), int(0.25 * GiB))
    assert (p.cache_floor_bytes, p.max_inflate_step_bytes, p.max_deflate_step_bytes) == (
        64 * MiB,
        128 * MiB,
        None,
    )
    assert (p.min_change_bytes, p.cooldown_s, p.weight, p.reclaim) == (
        16 * MiB,
        30.0,
        100,
        Reclaim.IDLE,
    )


def test_resolve_makes_mixed_units_consistent() -> None:
    p = Policy(
        min_size="2GiB",
        max_size="50%",
        free_low="300MiB",
        free_high="10%",
        max_inflate_step="1MiB",
        min_change="32MiB",
    ).resolve(GiB)
    assert p.max_bytes == 512 * MiB
    assert p.min_bytes == p.max_bytes  # min_size never above max_size
    assert p.free_high_bytes == p.free_low_bytes + 32 * MiB  # the band keeps a width
    assert p.max_inflate_step_bytes == 32 * MiB  # never below min_change


def test_max_size_is_never_above_boot_memory() -> None:
    assert Policy(max_size="64GiB").resolve(GiB).max_bytes == GiB


def test_audit_log_follows_state_dir_and_can_be_disabled() -> None:
    assert DaemonConfig(state_dir=Path("/srv/b")).audit_log == Path("/srv/b/audit.jsonl")
    assert parse_config({"daemon": {"audit_log": False}}).daemon.audit_log is None
    assert parse_config({"daemon": {"audit_log": ""}}).daemon.audit_log is None
    assert parse_config({"daemon": {"audit_log": "/x/a.jsonl"}}).daemon.audit_log == Path(
        "/x/a.jsonl"
    )


def test_named_policies_inherit_from_default() -> None:
    config = parse_config(
        {
            "policies": {
                "default": {"free_low": "20%", "free_high": "40%", "weight": 50},
                "web": {"weight": 300},
            }
        }
    )
    web = config.policies["web"]
    assert (web.free_low, web.free_high, web.weight) == (
        Amount(percent=20),
        Amount(percent=40),
        300,
    )
    assert web.cooldown_s == 30.0  # built-in default, through default


def test_assign_first_match_wins() -> None:
    config = parse_config(
        {
            "policies": {"db": {"reclaim": "host-pressure"}, "web": {}},
            "assign": {"db-*": "db", "*-01": "web", "web-*": "web"},
        }
    )
    assert config.policy_name_for("db-01") == "db"
    assert config.policy_name_for("web-01") == "web"
    assert config.policy_name_for("mail") == "default"
    resolved = config.resolve_policy(guest_name="db-2", boot_bytes=2 * GiB)
    assert (resolved.name, resolved.reclaim) == ("db", Reclaim.HOST_PRESSURE)


def test_models_are_frozen() -> None:
    config = Config()
    with pytest.raises(ValidationError):
        config.daemon.dry_run = True  # type: ignore[misc]


def test_schema_is_json_for_editors() -> None:
    schema = config_schema()
    json.dumps(schema)
    assert set(schema["properties"]) == set(Config.model_fields)
    policy = schema["$defs"]["Policy"]
    assert policy["additionalProperties"] is False
    assert policy["properties"]["free_low"]["default"] == "15%"
    assert policy["properties"]["min_size"]["default"] == "256MiB"
    assert policy["properties"]["max_deflate_step"]["default"] == "none"


def test_config_round_trips_through_its_dump() -> None:
    config = parse_config(
        {
            "policies": {"default": {"min_size": 300 * MiB + 1, "max_deflate_step": "10%"}},
            "host": {"reserve": "1.5GiB"},
        }
    )
    assert parse_config(config.model_dump(mode="json")) == config


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 1 << 44), st.sampled_from(["", "B", "KiB", "MiB", "GiB"]))
def test_amount_text_round_trips(n: int, unit: str) -> None:
    factor = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
    amount = Policy(min_change=f"{n // factor}{unit}").min_change
    assert Policy(min_change=str(amount)).min_change == amount


def test_guest_names() -> None:
    assert valid_guest_name("101")
    assert valid_guest_name("web-01.prod_a")
    for bad in ("", "-x", "a b", "a/b", "x" * 65, "*"):
        assert not valid_guest_name(bad)


# --- errors ----------------------------------------------------------------------------------


def test_bad_size_names_key_and_format() -> None:
    assert problems({"policies": {"web": {"free_low": "lots"}}}) == {
        "policies.web.free_low": "not a size: 'lots' (expected e.g. '512MiB', '2GiB')"
    }


def test_unknown_keys_and_sections() -> None:
    assert problems({"policies": {"web": {"free_lo": "1%"}}, "mqttt": {}}) == {
        "policies.web.free_lo": "unknown key",
        "mqttt": "unknown key",
    }


def test_all_problems_are_reported_at_once() -> None:
    found = problems(
        {
            "daemon": {"poll_interval_s": 0, "state_dir": "relative", "log_format": "xml"},
            "host": {"reserve": "120%"},
            "guests": [{"name": "bad name", "qmp": "/run/a.qmp"}, {"qmp": "/run/b.qmp"}],
            "discovery": {"globs": ["*.qmp"]},
        }
    )
    assert found == {
        "daemon.poll_interval_s": "Input should be greater than 0 (got 0)",
        "daemon.state_dir": "must be an absolute path, got 'relative'",
        "daemon.log_format": "Input should be 'text', 'json', 'journal' or 'auto' (got 'xml')",
        "host.reserve": "percentage '120%' is above 100%",
        "guests[0].name": (
            "not a valid name: 'bad name' (letters, digits, '.', '_', '-'; up to 64; "
            "starting with a letter or digit)"
        ),
        "guests[1].name": "required key missing",
        "discovery.globs[0]": "must be an absolute path pattern, got '*.qmp'",
    }


def test_band_order_is_checked_when_units_match() -> None:
    assert problems({"policies": {"web": {"free_low": "30%", "free_high": "20%"}}}) == {
        "policies.web": "free_low (30%) must be below free_high (20%)"
    }
    assert problems({"policies": {"default": {"min_size": "2GiB", "max_size": "1GiB"}}}) == {
        "policies.default": "min_size (2GiB) must be at most max_size (1GiB)"
    }
    # Mixed units cannot be checked here; resolve() keeps them consistent per guest.
    parse_config({"policies": {"web": {"free_low": "300MiB", "free_high": "10%"}}})


def test_inherited_problems_are_reported_once_at_the_default() -> None:
    found = problems(
        {
            "policies": {
                "default": {"free_low": "lots", "bogus": 1},
                "web": {"weight": 5},
                "db": {"free_low": "much"},
            }
        }
    )
    assert set(found) == {
        "policies.default.free_low",
        "policies.default.bogus",
        "policies.db.free_low",
    }


def test_an_inherited_key_that_clashes_is_the_named_policys_problem() -> None:
    found = problems({"policies": {"default": {"free_high": "20%"}, "web": {"free_low": "25%"}}})
    assert found == {"policies.web": "free_low (25%) must be below free_high (20%)"}


def test_zero_sizes_and_bad_numbers() -> None:
    found = problems(
        {
            "policies": {
                "default": {
                    "min_size": 0,
                    "max_inflate_step": "0MiB",
                    "min_change": -1,
                    "weight": 0,
                    "max_deflate_step": True,
                    "reclaim": "sometimes",
                }
            }
        }
    )
    assert found == {
        "policies.default.min_size": "must be above zero",
        "policies.default.max_inflate_step": (
            'must be above zero (use reclaim = "off" to stop inflating)'
        ),
        "policies.default.min_change": "a size cannot be negative: -1",
        "policies.default.weight": "Input should be greater than or equal to 1 (got 0)",
        "policies.default.max_deflate_step": (
            "not a size: True (expected e.g. '512MiB', '2GiB' or '10%')"
        ),
        "policies.default.reclaim": (
            "Input should be 'idle', 'host-pressure' or 'off' (got 'sometimes')"
        ),
    }


def test_cross_section_problems() -> None:
    found = problems(
        {
            "guests": [
                {"name": "a", "qmp": "/run/a.qmp"},
                {"name": "a", "qmp": "/run/a.qmp"},
            ],
            "assign": {"web-*": "webb"},
        }
    )
    assert found == {
        "guests[1].name": "duplicate guest name 'a' (also guests[0])",
        "guests[1].qmp": "socket '/run/a.qmp' already used by guests[0]",
        'assign."web-*"': "unknown policy 'webb' (defined: default)",
    }


def test_history_must_cover_the_staleness_window() -> None:
    assert problems({"daemon": {"poll_interval_s": 2, "history_s": 5}}) == {
        "daemon.history_s": (
            "must be at least 7s: the engine needs that much history to tell stale stats "
            "(poll_interval_s = 2)"
        )
    }


def test_toml_syntax_error_has_the_line(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text("[daemon]\npoll_interval_s = 1\ndry_run = yes\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    (line,) = info.value.lines()
    assert line.startswith(f"{path}: TOML syntax error: ")
    assert "line 3" in line


def test_problems_carry_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text('[host]\nreserve = "lots"\n[assign]\n"x" = "nope"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.lines() == [
        f"{path}: host.reserve: not a size: 'lots' (expected e.g. '512MiB', '2GiB')"
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


SIZE_CORPUS = [
    "512MiB", "512 MiB", " 2GiB ", "1.5GiB", "5Mi", "5M", "5m", "5MB", "5mb", "5Mib", "5MIB",
    "1048576", "0", "10%", "15.5 %", "100%", "%", "MiB", "5 M i B", "5MiB%", "5%MiB", "-5MiB",
    "5.MiB", ".5MiB", "5e3MiB", "5KiB", "5kib", "5TB", "5PiB", "5 bytes", "5B", "5b", "", " ",
    "5\tGiB", "1,5GiB", "٣MiB", "5MiB\n", "0x10MiB", "5GiBB",
]  # fmt: skip


def _loader_accepts(text: str) -> bool:
    """What the config loader takes (range limits aside: the schema states no range)."""
    try:
        if text.strip().endswith("%"):
            parse_percent(text)
        else:
            parse_size(text)
    except ValueError as exc:
        return "implausibly large" in str(exc) or "above 100%" in str(exc)
    return True


def _schema_accepts(text: str) -> bool:
    patterns = [s["pattern"] for s in Amount.__get_pydantic_json_schema__(None, None)["anyOf"]
                if "pattern" in s]  # fmt: skip
    return any(re.search(p, text) for p in patterns)


@pytest.mark.parametrize("text", SIZE_CORPUS)
def test_the_schema_accepts_exactly_the_sizes_the_loader_accepts(text: str) -> None:
    assert _schema_accepts(text) == _loader_accepts(text), text


@given(st.text(alphabet="0123456789.%kKmMgGtTiIbBpP \t-e", max_size=12))
def test_schema_and_loader_agree_on_any_string(text: str) -> None:
    assert _schema_accepts(text) == _loader_accepts(text), repr(text)
