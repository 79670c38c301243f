"""The per-guest series a scrape writes as text: parseable by Prometheus, whatever a guest
is called (a libvirt domain's name may hold quotes, backslashes, spaces)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from balloond.adapters.metrics import GuestLines
from balloond.adapters.port import GuestReading
from balloond.core.link import LinkState


def test_odd_guest_names_are_escaped_and_values_parse() -> None:
    lines = GuestLines(now_wall=1000.0)
    odd = 'db "primary" \\ east\nzone'
    lines.add(
        odd,
        GuestReading(
            state=LinkState.ACTIVE, mode="auto", policy="default", boot_bytes=4 << 30,
            actual_bytes=3 << 30, target_bytes=3 << 30, available_bytes=1 << 30,
            stats_time=990.0, deflate_on_oom=True, free_page_reporting=None,
            decisions={"idle": 3, "at-floor": 7}, errors_total=1, timeouts_total=0,
            under_pressure=False, oom_kills=None, floor_bytes=2 << 30,
        ),
    )  # fmt: skip
    families = {f.name: f for f in text_string_to_metric_families(lines.text())}
    (info,) = families["balloond_guest_info"].samples
    assert info.labels == {"guest": odd, "mode": "auto", "policy": "default", "state": "active"}
    (actual,) = families["balloond_guest_actual_bytes"].samples
    assert actual.value == 3 << 30
    (age,) = families["balloond_guest_stats_age_seconds"].samples
    assert age.value == 10.0
    decisions = {s.labels["reason"]: s.value for s in families["balloond_guest_decisions"].samples}
    assert decisions == {"idle": 3.0, "at-floor": 7.0}
    (feature,) = families["balloond_guest_balloon_feature"].samples
    assert feature.labels == {"guest": odd, "feature": "deflate-on-oom"}
    assert feature.value == 1.0
    assert "balloond_guest_oom_kills" in families  # declared, with no sample
    assert families["balloond_guest_oom_kills"].samples == []
    assert (lines.reclaimed, lines.under_pressure, lines.by_state["active"]) == (1 << 30, 0, 1)
