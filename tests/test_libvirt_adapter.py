"""The libvirt adapter's translations, without a libvirtd: memoryStats, domain XML and
libvirt's errors into balloond's."""

from __future__ import annotations

import libvirt
import pytest

from balloond.adapters.libvirt import _domain_settings, _translate, stats_from_libvirt
from balloond.core.errors import DisconnectedError, QMPCommandError
from balloond.core.units import KiB


def test_memory_stats_become_balloon_stats_in_bytes() -> None:
    # What libvirt 9.0 returned for a lab domain (KiB; faults are counts).
    raw = {
        "actual": 524288, "swap_in": 0, "swap_out": 0, "major_fault": 3, "minor_fault": 823,
        "unused": 451496, "available": 481428, "usable": 451224, "last_update": 1796066154,
        "disk_caches": 3024, "hugetlb_pgalloc": 0, "hugetlb_pgfail": 0, "rss": 221588,
    }  # fmt: skip
    stats = stats_from_libvirt(raw)
    assert stats.valid
    assert stats.total_bytes == 481428 * KiB  # libvirt's "available" is MemTotal
    assert stats.available_bytes == 451224 * KiB  # and "usable" is MemAvailable
    assert stats.free_bytes == 451496 * KiB
    assert stats.disk_caches_bytes == 3024 * KiB
    assert (stats.major_faults, stats.minor_faults) == (3, 823)
    # Without the guest's driver: only actual, rss and last_update 0.
    assert not stats_from_libvirt({"actual": 524288, "rss": 1000, "last_update": 0}).valid


@pytest.mark.parametrize("raw", [[1, 2], {"usable": -1, "last_update": 1}, {"last_update": "soon"}])
def test_odd_memory_stats_are_refused_clearly(raw: object) -> None:
    with pytest.raises(ValueError, match="memoryStats"):
        stats_from_libvirt(raw)  # type: ignore[arg-type]


def test_domain_xml_gives_metadata_and_balloon_settings() -> None:
    xml = """<domain type='qemu'><name>db</name>
      <metadata>
        <balloond:guest xmlns:balloond="https://balloond.org/xmlns/libvirt/1">
          <balloond:policy>database</balloond:policy><balloond:min> 1GiB </balloond:min>
        </balloond:guest>
        <other:thing xmlns:other="https://example.org/x"><other:policy>no</other:policy></other:thing>
      </metadata>
      <devices><memballoon model='virtio' autodeflate='on' freePageReporting='off'/></devices>
    </domain>"""
    settings, has_balloon, deflate, reporting = _domain_settings(xml)
    assert settings == {"policy": "database", "min": "1GiB"}
    assert (has_balloon, deflate, reporting) == (True, True, False)
    none = "<domain><devices><memballoon model='none'/></devices></domain>"
    assert _domain_settings(none)[1:] == (False, None, None)
    assert _domain_settings("<domain><devices/></domain>")[1] is False


def test_libvirt_errors_are_translated_once() -> None:
    def error(code: int) -> libvirt.libvirtError:
        exc = libvirt.libvirtError("boom")
        exc.err = (code, 0, "boom", 0, "", "", "", 0, 0)
        return exc

    assert isinstance(
        _translate("g", "memory stats", error(libvirt.VIR_ERR_NO_DOMAIN)), DisconnectedError
    )
    assert isinstance(
        _translate("g", "open", error(libvirt.VIR_ERR_SYSTEM_ERROR)), DisconnectedError
    )
    refused = _translate("g", "set memory", error(libvirt.VIR_ERR_INVALID_ARG))
    assert isinstance(refused, QMPCommandError)
    assert "g: set memory: boom" in str(refused)
