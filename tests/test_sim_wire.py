"""QMP encoding and request checks against bytes captured from QEMU 7.2."""

from __future__ import annotations

from typing import Any

import pytest

from testkit.sim.wire import (
    NO_ID,
    JsonStreamSplitter,
    Param,
    QMPError,
    check_request,
    encode,
    error_response,
    parse_arguments,
    parse_text,
    response,
)

# Captured from qemu-system-x86_64 7.2 (Debian 1:7.2+dfsg-7+deb12u18+b3).
QEMU_GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
    b'"package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}\r\n'
)
QEMU_STATS_NOT_REPORTED = (
    b'{"return": {"stats": {"stat-htlb-pgalloc": 18446744073709551615, '
    b'"stat-swap-out": 18446744073709551615, "stat-available-memory": 18446744073709551615, '
    b'"stat-htlb-pgfail": 18446744073709551615, "stat-free-memory": 18446744073709551615, '
    b'"stat-minor-faults": 18446744073709551615, "stat-major-faults": 18446744073709551615, '
    b'"stat-total-memory": 18446744073709551615, "stat-swap-in": 18446744073709551615, '
    b'"stat-disk-caches": 18446744073709551615}, "last-update": 0}}\r\n'
)


def test_greeting_bytes_match_qemu() -> None:
    version = {
        "qemu": {"major": 7, "minor": 2, "micro": 22},
        "package": "Debian 1:7.2+dfsg-7+deb12u18+b3",
    }
    assert encode({"QMP": {"version": version, "capabilities": ["oob"]}}) == QEMU_GREETING


def test_guest_stats_key_order_matches_qemu() -> None:
    names = [
        "stat-swap-in", "stat-swap-out", "stat-major-faults", "stat-minor-faults",
        "stat-free-memory", "stat-total-memory", "stat-available-memory",
        "stat-disk-caches", "stat-htlb-pgalloc", "stat-htlb-pgfail",
    ]  # fmt: skip
    reply = {"last-update": 0, "stats": dict.fromkeys(names, 2**64 - 1)}
    assert encode(response(reply)) == QEMU_STATS_NOT_REPORTED


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (response({}, 7), b'{"return": {}, "id": 7}\r\n'),
        (
            error_response(QMPError("x", error_class="CommandNotFound"), [1, 2]),
            b'{"id": [1, 2], "error": {"class": "CommandNotFound", "desc": "x"}}\r\n',
        ),
        (
            response({"running": True, "singlestep": False, "status": "running"}),
            b'{"return": {"status": "running", "singlestep": false, "running": true}}\r\n',
        ),
        (
            response({"base-memory": 536870912, "plugged-memory": 0}),
            b'{"return": {"base-memory": 536870912, "plugged-memory": 0}}\r\n',
        ),
    ],
)
def test_replies_in_qemu_order(message: dict[str, Any], wire: bytes) -> None:
    assert encode(message) == wire


def test_splitter_handles_pipelining_and_split_reads() -> None:
    s = JsonStreamSplitter()
    assert s.feed(b'{"execute": "a"}{"execute"') == [b'{"execute": "a"}']
    assert s.feed(b': "b}{", "id": [1]}\n garbage {') == [
        b'{"execute": "b}{", "id": [1]}',
        b"garbage",
    ]
    assert s.feed(b'"x": "\\"}"}') == [b'{"x": "\\"}"}']


@pytest.mark.parametrize(
    ("obj", "desc"),
    [
        ([1], "QMP input must be a JSON object"),
        ({}, "QMP input lacks member 'execute'"),
        ({"foo": 1, "id": 3}, "QMP input member 'foo' is unexpected"),
        ({"execute": 1}, "QMP input member 'execute' must be a string"),
        ({"execute": "x", "arguments": []}, "QMP input member 'arguments' must be an object"),
        ({"exec-oob": "x"}, "QMP input member 'exec-oob' is unexpected"),
    ],
)
def test_request_checks_use_qemu_messages(obj: Any, desc: str) -> None:
    with pytest.raises(QMPError) as info:
        check_request(obj, oob_enabled=False)
    assert info.value.desc == desc
    assert info.value.error_class == "GenericError"


def test_exec_oob_is_a_request_once_oob_is_enabled() -> None:
    req = check_request({"exec-oob": "x", "id": None}, oob_enabled=True)
    assert req.oob
    assert req.id is None
    assert check_request({"execute": "x"}, oob_enabled=True).id is NO_ID


@pytest.mark.parametrize(
    ("args", "desc"),
    [
        ({}, "Parameter 'value' is missing"),
        ({"value": "x"}, "Invalid parameter type for 'value', expected: integer"),
        ({"value": 1.5}, "Invalid parameter type for 'value', expected: integer"),
        ({"value": True}, "Invalid parameter type for 'value', expected: integer"),
        ({"value": 2**63}, "Invalid parameter type for 'value', expected: integer"),
        ({"value": 1, "extra": 2}, "Parameter 'extra' is unexpected"),
    ],
)
def test_argument_errors_use_qemu_messages(args: dict[str, Any], desc: str) -> None:
    with pytest.raises(QMPError, match="^" + desc.replace("(", r"\(") + "$"):
        parse_arguments(args, [Param("value", "int")])


def test_parse_errors_carry_qemu_prefix() -> None:
    with pytest.raises(QMPError, match=r"^JSON parse error, invalid keyword 'garbage'$"):
        parse_text(b"garbage")
    with pytest.raises(QMPError, match=r"^JSON parse error, "):
        parse_text(b'{"execute":}')
