"""Workload traces: interpolation, the JSON format, the generators and the shipped examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from balloond.core.units import GiB, MiB
from balloond.replay.traces import EXAMPLES_DIR, FORMAT, GENERATORS, Trace, bursty, by_name


def tri() -> Trace:
    return Trace(
        times_s=(0.0, 10.0, 20.0),
        anon_bytes=(0, 100, 0),
        cache_bytes=(50, 50, 150),
        repeat=True,
    )


def test_linear_interpolation_and_repeat() -> None:
    t = tri()
    assert t.at(0) == (0, 50)
    assert t.at(5) == (50, 50)
    assert t.at(15) == (50, 100)
    assert t.at(25) == t.at(5)
    assert t.duration_s == 20.0


def test_without_repeat_the_last_values_hold() -> None:
    t = Trace(times_s=(0.0, 10.0), anon_bytes=(0, 100), cache_bytes=(0, 0))
    assert t.at(1_000) == (100, 0)
    assert t.next_point_after(10.0) is None
    assert t.next_point_after(3.0) == 10.0


def test_next_point_wraps_around_a_repeating_trace() -> None:
    t = tri()
    assert t.next_point_after(0.0) == 10.0
    assert t.next_point_after(10.0) == 20.0
    assert t.next_point_after(20.0) == 30.0
    assert t.next_point_after(39.5) == 40.0


def test_json_round_trip_and_size_strings(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    tri().dump(path)
    assert Trace.load(path) == tri()
    doc = {
        "format": FORMAT,
        "points": [
            {"t_s": 0, "anon_bytes": "256MiB", "cache_bytes": 0},
            {"t_s": 1.5, "anon_bytes": 1024, "cache_bytes": "1GiB"},
        ],
    }
    t = Trace.from_json(doc)
    assert t.anon_bytes == (256 * MiB, 1024)
    assert t.cache_bytes == (0, GiB)
    assert not t.repeat


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"points": []}, "non-empty"),
        ({"format": "other", "points": [{"t_s": 0}]}, "unknown trace format"),
        ({"points": [{"t_s": 1}]}, "starts at t_s=0"),
        ({"points": [{"t_s": 0}, {"t_s": 0}]}, "increase strictly"),
        ({"points": [{"t_s": 0, "anon_bytes": -1}]}, "non-negative"),
        ({"points": [{"t_s": 0, "anon_bytes": "lots"}]}, "not a size"),
        ({"points": [{"t_s": "0"}]}, "not a number"),
    ],
)
def test_bad_documents_are_refused_with_a_reason(doc: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Trace.from_json(doc)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_fit_the_guest(name: str) -> None:
    t = by_name(name, ram_bytes=GiB, seed=3)
    assert t.ram_bytes == GiB
    for i in range(200):
        anon, cache = t.at(i * max(t.duration_s, 1.0) / 200)
        assert 0 <= anon < GiB
        assert 0 <= cache < GiB
    assert Trace.from_json(json.loads(json.dumps(t.to_json()))) == t


def test_bursty_is_seeded() -> None:
    assert by_name("bursty", ram_bytes=GiB, seed=1) == by_name("bursty", ram_bytes=GiB, seed=1)
    assert by_name("bursty", ram_bytes=GiB, seed=1) != by_name("bursty", ram_bytes=GiB, seed=2)


@pytest.mark.parametrize("path", sorted(EXAMPLES_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_shipped_examples_load_and_scale(path: Path) -> None:
    t = Trace.load(path)
    assert t.ram_bytes == GiB
    small = by_name(str(path), ram_bytes=512 * MiB)
    assert small.anon_bytes == tuple(int(a / 2) for a in t.anon_bytes)


def test_examples_are_few_and_small() -> None:
    files = list(EXAMPLES_DIR.glob("*.json"))
    assert {"bursty.json", "diurnal.json"} <= {f.name for f in files}
    assert all(f.stat().st_size < 16_384 for f in files)


def test_shifted_trace_is_the_same_loop_started_later() -> None:
    t = tri()
    s = t.shifted(7.0)
    assert s.duration_s == t.duration_s
    for x in (0.0, 2.5, 3.0, 12.9, 13.0, 19.0, 33.0):
        assert s.at(x) == t.at(x + 7.0)
    assert s.next_point_after(0.0) == 3.0
    assert Trace.from_json(s.to_json()) == s


def test_stretched_changes_only_time() -> None:
    t = tri().stretched(0.5)
    assert t.duration_s == 10.0
    assert t.at(2.5) == tri().at(5)


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="bursty"):
        by_name("nope", ram_bytes=GiB)


def test_bursty_builds_for_any_seed_even_with_dense_bursts() -> None:
    for seed in range(300):
        t = by_name("bursty", ram_bytes=GiB, seed=seed)
        assert t.duration_s == 3_600.0
    for seed in range(300):
        dense = bursty(GiB, duration_s=120.0, mean_gap_s=0.5, seed=seed)
        assert all(b > a for a, b in zip(dense.times_s, dense.times_s[1:], strict=False))
