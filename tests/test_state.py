"""Operator intents on disk: written whole, read back validated, a damaged file set aside."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from balloond.core.units import MiB
from balloond.service.guest import Intent, Mode
from balloond.service.state import StateStore


def test_round_trip_keeps_only_what_an_operator_set(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    intents = {
        "db": Intent(mode=Mode.MANUAL, manual_target_bytes=300 * MiB, hold_until=1.8e9),
        "web": Intent(mode=Mode.PAUSED, policy_override="gentle"),
        "idle": Intent(),
    }
    store.save(intents)
    assert store.load() == {"db": intents["db"], "web": intents["web"]}
    assert not list(tmp_path.glob(".intents.*"))  # no temporary file left behind


def test_a_newer_files_extra_keys_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "intents.json").write_text(
        json.dumps({"version": 2, "future": 1, "guests": {"db": {"mode": "paused", "x": 1}}})
    )
    assert StateStore(tmp_path).load() == {"db": Intent(mode=Mode.PAUSED)}


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"guests": []}',
        '{"guests": {"db": {"mode": "sleeping"}}}',
        '{"guests": {"db": {"manual_target_bytes": -5}}}',
        '{"guests": {"db": {"manual_target_bytes": "300MiB"}}}',
        '{"guests": {"db": {"hold_until": "tomorrow"}}}',
        '{"guests": {"db": {"hold_until": NaN}}}',
        '{"guests": {"db": {"policy_override": 7}}}',
    ],
)
def test_a_damaged_file_is_set_aside_and_named(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "intents.json").write_text(content)
    with caplog.at_level(logging.ERROR, logger="balloond.service.state"):
        assert StateStore(tmp_path).load() == {}
    assert (tmp_path / "intents.bad").read_text() == content
    assert not (tmp_path / "intents.json").exists()
    assert "is damaged" in caplog.text
