"""The slice of QEMU's object tree (QOM) a balloon controller looks at.

balloond finds a guest's balloon device with ``qom-list /machine/peripheral`` (and
``/machine/peripheral-anon`` for a device added without an id), then reads and writes its
``guest-stats`` properties with ``qom-get``/``qom-set``. This module builds that tree for a
simulated guest and resolves paths the way QEMU's object_resolve_path() does: absolute
paths ignore empty components, a relative path matches any unique suffix.

Listings of the balloon device were copied from QEMU 7.2 (``-device virtio-balloon-pci``);
``/machine`` lists only its containers and ``/machine/unattached`` only the vCPU, not the
dozens of other objects QEMU has there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

# qom-list of a virtio-balloon-pci device in QEMU 7.2, in QEMU's order: one "name:type" a line.
_BALLOON_PCI_LISTING = """
    type:string
    parent_bus:link<bus>
    realized:bool
    hotplugged:bool
    hotpluggable:bool
    failover_pair_id:str
    romfile:str
    addr:int32
    romsize:uint32
    x-pcie-lnksta-dllla:bool
    rombar:uint32
    x-pcie-extcap-init:bool
    acpi-index:uint32
    multifunction:bool
    legacy-addr:str
    migrate-extra:bool
    ats:bool
    x-ignore-backend-features:bool
    x-pcie-pm-init:bool
    aer:bool
    x-pcie-flr-init:bool
    x-pcie-lnkctl-init:bool
    x-ats-page-aligned:bool
    page-per-vq:bool
    x-pcie-deverr-init:bool
    virtio-pci-bus-master-bug-migration:bool
    modern-pio-notify:bool
    x-disable-pcie:bool
    disable-legacy:OnOffAuto
    disable-modern:bool
    free-page-reporting:bool
    indirect_desc:bool
    virtio-pci-device-virtio-balloon[0]:child<memory-region>
    iommu_platform:bool
    deflate-on-oom:bool
    use-disabled-flag:bool
    event_idx:bool
    bus master container[0]:child<memory-region>
    page-poison:bool
    guest-stats-polling-interval:int
    guest-stats:guest statistics
    x-disable-legacy-check:bool
    any_layout:bool
    iothread:link<iothread>
    notify_on_empty:bool
    virtio-pci-notify-virtio-balloon[0]:child<memory-region>
    queue_reset:bool
    qemu-4-0-config-size:bool
    packed:bool
    use-started:bool
    free-page-hint:bool
    virtio-pci[1]:child<memory-region>
    virtio-pci-notify-pio-virtio-balloon[0]:child<memory-region>
    virtio-pci-common-virtio-balloon[0]:child<memory-region>
    virtio-pci[0]:child<memory-region>
    virtio-pci-isr-virtio-balloon[0]:child<memory-region>
    bus master[0]:child<memory-region>
    virtio-bus:child<virtio-pci-bus>
    virtio-backend:child<virtio-balloon-device>
"""
# qom-list of its virtio-backend child (a virtio-balloon-device).
_BALLOON_BACKEND_LISTING = """
    type:string
    parent_bus:link<bus>
    realized:bool
    hotplugged:bool
    hotpluggable:bool
    queue_reset:bool
    use-disabled-flag:bool
    packed:bool
    iommu_platform:bool
    event_idx:bool
    x-disable-legacy-check:bool
    notify_on_empty:bool
    any_layout:bool
    use-started:bool
    indirect_desc:bool
    legacy-iothread:str
    iothread:link<iothread>
    deflate-on-oom:bool
    free-page-hint:bool
    page-poison:bool
    qemu-4-0-config-size:bool
    free-page-reporting:bool
    guest-stats-polling-interval:int
    guest-stats:guest statistics
"""


def _listing(text: str) -> list[tuple[str, str]]:
    pairs = (line.strip().split(":", 1) for line in text.strip().splitlines())
    return [(name, kind) for name, kind in pairs]


#: Backend properties fixed once the device is realized (qom-set names them in its error).
BACKEND_STATIC_PROPS = frozenset(
    name
    for name, _ in _listing(_BALLOON_BACKEND_LISTING)
    if name
    not in {
        "type",
        "parent_bus",
        "realized",
        "hotplugged",
        "hotpluggable",
        "guest-stats",
        "guest-stats-polling-interval",
    }
)
BALLOON_PCI_TYPE = "virtio-balloon-pci"
BALLOON_BACKEND_TYPE = "virtio-balloon-device"


@dataclass(slots=True)
class QomObject:
    """One object: its QOM type, its qom-list entries and its children by name."""

    path: str
    type_name: str
    props: list[tuple[str, str]]
    children: dict[str, QomObject] = field(default_factory=dict)

    def add(self, name: str, child_type: str, props: list[tuple[str, str]]) -> QomObject:
        child = QomObject(path=f"{self.path.rstrip('/')}/{name}", type_name=child_type, props=props)
        self.children[name] = child
        self.props.append((name, f"child<{child_type}>"))
        return child

    def walk(self) -> Iterator[QomObject]:
        yield self
        for child in self.children.values():
            yield from child.walk()


def _container() -> list[tuple[str, str]]:
    return [("type", "string")]


@dataclass(slots=True)
class QomTree:
    """A simulated guest's QOM tree; ``balloon`` is the balloon device or None."""

    root: QomObject
    balloon: QomObject | None
    machine_type: str

    def resolve(self, path: str) -> tuple[QomObject | None, bool]:
        """``(object, ambiguous)`` as object_resolve_path() returns them."""
        parts = [p for p in path.split("/") if p]
        if path.startswith("/"):
            obj: QomObject | None = self.root
            for part in parts:
                obj = obj.children.get(part) if obj is not None else None
            return obj, False
        matches = (
            [o for o in self.root.walk() if o.path.strip("/").split("/")[-len(parts) :] == parts]
            if parts
            else list(self.root.walk())
        )
        if len(matches) == 1:
            return matches[0], False
        return None, len(matches) > 1


def build_tree(
    *, qemu_version: tuple[int, int, int], balloon_id: str | None, balloon: bool
) -> QomTree:
    """The tree of an i440fx machine with one virtio-balloon-pci device.

    ``balloon_id`` None puts the device under ``/machine/peripheral-anon/device[0]``;
    ``balloon`` False leaves it out altogether.
    """
    machine_type = f"pc-i440fx-{qemu_version[0]}.{qemu_version[1]}-machine"
    root = QomObject(path="/", type_name="container", props=_container())
    root.add("objects", "container", _container())
    machine = root.add("machine", machine_type, _container())
    root.add("chardevs", "container", _container())
    unattached = machine.add("unattached", "container", _container())
    # The vCPU; it also makes a relative "device[0]" ambiguous, as in QEMU.
    unattached.add("device[0]", "qemu64-x86_64-cpu", _container())
    peripheral = machine.add("peripheral", "container", _container())
    anon = machine.add("peripheral-anon", "container", _container())
    device: QomObject | None = None
    if balloon:
        parent, name = (peripheral, balloon_id) if balloon_id else (anon, "device[0]")
        props = [p for p in _listing(_BALLOON_PCI_LISTING) if p[0] != "virtio-backend"]
        device = parent.add(name, BALLOON_PCI_TYPE, props)
        device.add("virtio-backend", BALLOON_BACKEND_TYPE, _listing(_BALLOON_BACKEND_LISTING))
    return QomTree(root=root, balloon=device, machine_type=machine_type)
