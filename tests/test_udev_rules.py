"""units/66-azure-storage.rules, evaluated over recorded device properties.

`udevadm test` cannot run here: it reads rules only from the system's rule
directories and devices only from the real /sys (systemd 252 refuses a path
outside the sysfs mount), and `udevadm verify` needs systemd >= 254. So this
file holds a small evaluator of the udev rule language, strict about what it
accepts: a key, operator or substitution it does not model is a test failure,
never ignored. Its semantics are udev's (udev(7)):

* a rule's match keys must all hold, then its assignments run in order;
* KERNELS, SUBSYSTEMS, DRIVERS and ATTRS of one rule must all match the same
  device, the event device or one of its parents, searched upwards;
* values are shell-style glob patterns with ``|`` alternatives; an attribute's
  trailing whitespace is ignored; ``!=`` holds when no alternative matches;
* ``GOTO`` jumps forward to its ``LABEL``; ``ENV{.NAME}`` is event-local;
  ``SYMLINK+=``/``ENV{...}+=`` append (space-separated);
* ``$env{NAME}``, ``%n`` (kernel number) and ``%k`` (kernel name) are substituted.

The devices below are recorded the way udev sees them after
60-persistent-storage.rules (ID_VENDOR, ID_MODEL, ID_PATH, ID_SERIAL_SHORT,
DEVTYPE) with their sysfs parents (kernel name, subsystem, attributes): Hyper-V
Gen1 and Gen2 layouts as lsscsi and sysfs show them on Azure, and the qemu
devices of VM-TESTING.md.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

import pytest
from conftest import REPO

RULES = REPO / "units/66-azure-storage.rules"

MATCH_KEYS = {"ACTION", "SUBSYSTEM", "KERNEL", "ENV", "KERNELS", "SUBSYSTEMS", "DRIVERS", "ATTRS"}
PARENT_KEYS = {"KERNELS", "SUBSYSTEMS", "DRIVERS", "ATTRS"}
ASSIGN_KEYS = {"ENV", "SYMLINK"}
KEYS_WITH_ATTRIBUTE = {"ENV", "ATTRS"}


@dataclass(frozen=True)
class Token:
    key: str
    attribute: str | None
    op: str
    value: str


@dataclass
class Rule:
    line: int
    tokens: list[Token]


TOKEN = re.compile(
    r'\s*(?P<key>[A-Z_]+)(?:\{(?P<attr>[^}]*)\})?\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>[^"]*)"\s*(,|$)'
)


def parse(text: str) -> list[Rule]:
    rules = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.endswith("\\"), f"line {number}: continuation lines are not used here"
        tokens = []
        position = 0
        while position < len(line):
            found = TOKEN.match(line, position)
            assert found, f"line {number}: cannot parse {line[position:]!r}"
            tokens.append(Token(found["key"], found["attr"], found["op"], found["value"]))
            position = found.end()
        for token in tokens:
            known = MATCH_KEYS | ASSIGN_KEYS | {"GOTO", "LABEL"}
            assert token.key in known, f"line {number}: {token.key} is not modelled"
            assert (token.attribute is not None) == (token.key in KEYS_WITH_ATTRIBUTE), (
                f"line {number}: {token.key} and its {{attribute}}"
            )
            if token.op in ("==", "!="):
                assert token.key in MATCH_KEYS, f"line {number}: {token.key} cannot be matched"
            else:
                assert token.op in ("=", "+="), f"line {number}: operator {token.op} not modelled"
                assert token.key in ASSIGN_KEYS | {"GOTO", "LABEL"}, f"line {number}: {token.key}"
        rules.append(Rule(number, tokens))
    return rules


@dataclass
class Device:
    """One sysfs device: its kernel name, subsystem, driver and attributes."""

    kernel: str
    subsystem: str
    attributes: dict[str, str] = field(default_factory=dict)
    driver: str = ""


@dataclass
class Event:
    action: str
    chain: list[Device]  # the event device first, then its parents upwards
    env: dict[str, str]


@dataclass
class Outcome:
    symlinks: list[str]
    env: dict[str, str]  # exported properties (not the .NAME ones)


def glob(pattern: str, value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, alternative) for alternative in pattern.split("|"))


def matches(token: Token, value: str | None) -> bool:
    found = glob(token.value, value or "") if value is not None else token.value == ""
    return found if token.op == "==" else not found


def substitute(value: str, event: Event, env: dict[str, str]) -> str:
    kernel = event.chain[0].kernel

    def one(m: re.Match[str]) -> str:
        if m["env"] is not None:
            return env.get(m["env"], "")
        if m["fmt"] == "n":
            digits = re.search(r"[0-9]+$", kernel)
            return digits.group() if digits else ""
        if m["fmt"] == "k":
            return kernel
        raise AssertionError(f"substitution {m.group()} not modelled")

    result = re.sub(r"\$env\{(?P<env>[^}]+)\}|%(?P<fmt>.)|\$(?P<other>[a-z]+)", one, value)
    assert "$" not in result, value
    return result


def evaluate(rules: list[Rule], event: Event) -> Outcome:
    env = dict(event.env)
    symlinks: list[str] = []
    labels = {
        token.value: index
        for index, rule in enumerate(rules)
        for token in rule.tokens
        if token.key == "LABEL"
    }
    device = event.chain[0]
    index = 0
    while index < len(rules):
        rule = rules[index]
        index += 1
        plain = [t for t in rule.tokens if t.op in ("==", "!=") and t.key not in PARENT_KEYS]
        parents = [t for t in rule.tokens if t.op in ("==", "!=") and t.key in PARENT_KEYS]
        ok = True
        for token in plain:
            if token.key == "ACTION":
                ok = matches(token, event.action)
            elif token.key == "SUBSYSTEM":
                ok = matches(token, device.subsystem)
            elif token.key == "KERNEL":
                ok = matches(token, device.kernel)
            elif token.key == "ENV":
                assert token.attribute is not None
                ok = matches(token, env.get(token.attribute))
            if not ok:
                break
        if ok and parents:
            ok = any(all(_parent_match(t, candidate) for t in parents) for candidate in event.chain)
        if not ok:
            continue
        for token in rule.tokens:
            if token.op in ("==", "!=") or token.key == "LABEL":
                continue
            if token.key == "GOTO":
                assert token.value in labels, f"line {rule.line}: no LABEL {token.value}"
                assert labels[token.value] >= index, f"line {rule.line}: GOTO backwards"
                index = labels[token.value]
                break
            value = substitute(token.value, event, env)
            if token.key == "SYMLINK":
                if token.op == "=":
                    symlinks = []
                symlinks.append(value)
            else:
                assert token.attribute is not None
                old = env.get(token.attribute)
                if token.op == "+=" and old:
                    env[token.attribute] = f"{old} {value}"
                else:
                    env[token.attribute] = value
    exported = {k: v for k, v in env.items() if not k.startswith(".") and k not in event.env}
    return Outcome(symlinks, exported)


def _parent_match(token: Token, device: Device) -> bool:
    if token.key == "KERNELS":
        return matches(token, device.kernel)
    if token.key == "SUBSYSTEMS":
        return matches(token, device.subsystem)
    if token.key == "DRIVERS":
        return matches(token, device.driver)
    assert token.key == "ATTRS"
    assert token.attribute is not None
    value = device.attributes.get(token.attribute)
    if value is not None and not token.value.endswith((" ", "\t", "\n")):
        value = value.rstrip()
    if value is None:
        # udev: a missing attribute never matches, with == or with !=.
        return False
    return matches(token, value)


# --- recorded devices ----------------------------------------------------------

ACPI = [Device("VMBUS:00", "acpi"), Device("LNXSYBUS:00", "acpi"), Device("LNXSYSTM:00", "acpi")]
MSFT = {"vendor": "Msft    ", "model": "Virtual Disk    ", "rev": "1.0 "}
HYPERV_ENV = {"ID_VENDOR": "Msft", "ID_MODEL": "Virtual_Disk", "ID_BUS": "scsi"}
GEN2_CONTROLLER = "{f8b3781a-1e82-4818-a1c3-63d806ec15bb}"
DATA_CONTROLLER = "{f8b3781b-1e82-4818-a1c3-63d806ec15bb}"


def vmbus_disk(name: str, address: str, device_id: str, *, partition: int | None = None) -> Event:
    """A Hyper-V SCSI disk (or its partition) under the VMBus device ``device_id``."""
    host, _, target, _ = address.split(":")
    guid = device_id.strip("{}")
    chain = [
        Device(name, "block", {"size": "266338304"}),
        Device(address, "scsi", MSFT, driver="sd"),
        Device(f"target{host}:0:{target}", "scsi"),
        Device(f"host{host}", "scsi"),
        Device(
            guid,
            "vmbus",
            {"device_id": device_id, "class_id": "{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f}"},
            driver="hv_storvsc",
        ),
        *ACPI,
    ]
    lun = address.rsplit(":", 1)[1]
    env = dict(HYPERV_ENV, DEVTYPE="disk")
    env["ID_PATH"] = f"acpi-VMBUS:00-vmbus-{guid.replace('-', '')}-lun-{lun}"
    if partition is not None:
        chain.insert(0, Device(f"{name}{partition}", "block", {"partition": str(partition)}))
        env["DEVTYPE"] = "partition"
    return Event("add", chain, env)


def qemu_disk(
    name: str,
    address: str,
    *,
    vendor: str = "Msft",
    model: str = "Virtual Disk",
    partition: int | None = None,
) -> Event:
    """virtio-scsi under qemu (VM-TESTING.md): scsi-hd with the Hyper-V identity."""
    chain = [
        Device(name, "block"),
        Device(f"0:{address}", "scsi", {"vendor": vendor.ljust(8), "model": model.ljust(16)}),
        Device("target0:0:" + address.split(":")[1], "scsi"),
        Device("host0", "scsi"),
        Device("virtio2", "virtio", {"device": "0x0008", "vendor": "0x1af4"}),
        Device("0000:00:04.0", "pci", {"vendor": "0x1af4", "device": "0x1004"}),
        Device("pci0000:00", ""),
    ]
    env = {
        "ID_VENDOR": vendor,
        "ID_MODEL": model.replace(" ", "_"),
        "ID_SCSI": "1",
        "ID_PATH": f"pci-0000:00:04.0-scsi-0:{address}",
        "DEVTYPE": "disk",
    }
    if partition is not None:
        chain.insert(0, Device(f"{name}{partition}", "block", {"partition": str(partition)}))
        env["DEVTYPE"] = "partition"
    return Event("add", chain, env)


def nvme_disk(name: str, model: str, serial: str, *, partition: int | None = None) -> Event:
    chain = [
        Device(name, "block", {"nsid": "1"}),
        Device("nvme0", "nvme", {"model": model.ljust(40), "serial": serial}),
        Device("0000:c1:00.0", "pci"),
    ]
    env = {"ID_MODEL": model, "ID_SERIAL_SHORT": serial, "DEVTYPE": "disk"}
    if partition is not None:
        chain.insert(0, Device(f"{name}p{partition}", "block", {"partition": str(partition)}))
        env["DEVTYPE"] = "partition"
    return Event("add", chain, env)


GEN1_ROOT_ID = "{00000000-0000-8899-0000-000000000000}"
GEN1_RESOURCE_ID = "{00000000-0001-8899-0000-000000000000}"
WANTS = {"SYSTEMD_WANTS": "azure-resource-disk.service"}

CASES: list[tuple[str, Event, list[str], dict[str, str]]] = [
    # Gen1: OS and resource disks on their own VMBus devices (lsscsi [0:0:0:0], [1:0:1:0]).
    ("gen1 os disk", vmbus_disk("sda", "0:0:0:0", GEN1_ROOT_ID), ["disk/azure/root"], {}),
    (
        "gen1 os partition",
        vmbus_disk("sda", "0:0:0:0", GEN1_ROOT_ID, partition=1),
        ["disk/azure/root-part1"],
        {},
    ),
    (
        "gen1 resource disk",
        vmbus_disk("sdb", "1:0:1:0", GEN1_RESOURCE_ID),
        ["disk/azure/resource"],
        WANTS,
    ),
    (
        "gen1 resource partition",
        vmbus_disk("sdb", "1:0:1:0", GEN1_RESOURCE_ID, partition=1),
        ["disk/azure/resource-part1"],
        {},
    ),
    # Gen2: both on controller f8b3781a, LUN 0 and LUN 1.
    ("gen2 os disk", vmbus_disk("sda", "0:0:0:0", GEN2_CONTROLLER), ["disk/azure/root"], {}),
    (
        "gen2 resource disk",
        vmbus_disk("sdb", "0:0:0:1", GEN2_CONTROLLER),
        ["disk/azure/resource"],
        WANTS,
    ),
    (
        "gen2 resource partition 2",
        vmbus_disk("sdb", "0:0:0:1", GEN2_CONTROLLER, partition=2),
        ["disk/azure/resource-part2"],
        {},
    ),
    ("gen2 unknown lun on scsi0", vmbus_disk("sdx", "0:0:0:5", GEN2_CONTROLLER), [], {}),
    # Data disks (lsscsi [3:0:0:0], [3:0:0:1], ...).
    ("data lun 0", vmbus_disk("sdc", "3:0:0:0", DATA_CONTROLLER), ["disk/azure/scsi1/lun0"], {}),
    (
        "data lun 12 partition",
        vmbus_disk("sdd", "3:0:0:12", DATA_CONTROLLER, partition=1),
        ["disk/azure/scsi1/lun12-part1"],
        {},
    ),
    (
        "data on scsi3",
        vmbus_disk("sde", "5:0:0:7", "{f8b3781d-1e82-4818-a1c3-63d806ec15bb}"),
        ["disk/azure/scsi3/lun7"],
        {},
    ),
    (
        "unknown vmbus device",
        vmbus_disk("sdf", "0:0:1:0", "{12345678-1e82-4818-a1c3-63d806ec15bb}"),
        [],
        {},
    ),
    # qemu (VM tests): no VMBus; the SCSI address decides.
    ("qemu os disk", qemu_disk("sda", "0:0:0"), ["disk/azure/root"], {}),
    ("qemu resource disk", qemu_disk("sdb", "0:1:0"), ["disk/azure/resource"], WANTS),
    (
        "qemu resource partition",
        qemu_disk("sdb", "0:1:0", partition=1),
        ["disk/azure/resource-part1"],
        {},
    ),
    ("qemu other target", qemu_disk("sdc", "0:2:0"), [], {}),
    ("qemu other lun", qemu_disk("sdc", "0:1:1"), [], {}),
    ("qemu foreign disk", qemu_disk("sdb", "0:1:0", vendor="QEMU", model="QEMU HARDDISK"), [], {}),
    ("qemu dvd", qemu_disk("sr0", "0:0:2", model="Virtual DVD-ROM"), [], {}),
    # Local NVMe temporary disks.
    (
        "nvme direct disk",
        nvme_disk("nvme0n1", "Microsoft NVMe Direct Disk", "1cf3ab3ce1db00000001"),
        ["disk/azure/local/by-serial/1cf3ab3ce1db00000001"],
        {},
    ),
    (
        "nvme direct disk v2 partition",
        nvme_disk("nvme1n1", "Microsoft NVMe Direct Disk v2", "2cf3ab3ce1db00000002", partition=1),
        ["disk/azure/local/by-serial/2cf3ab3ce1db00000002-part1"],
        {},
    ),
    ("other nvme", nvme_disk("nvme0n1", "Samsung SSD 990 PRO 2TB", "S6Z2NJ0W"), [], {}),
    ("remote nvme os disk", nvme_disk("nvme0n1", "MSFT NVMe Accelerator v1.0", "x"), [], {}),
]


@pytest.fixture(scope="module")
def rules() -> list[Rule]:
    return parse(RULES.read_text())


@pytest.mark.parametrize(
    ("event", "links", "env"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_names_and_wants(
    rules: list[Rule], event: Event, links: list[str], env: dict[str, str]
) -> None:
    outcome = evaluate(rules, event)
    assert outcome.symlinks == links
    wanted = {k: v for k, v in outcome.env.items() if k == "SYSTEMD_WANTS"}
    assert wanted == env


@pytest.mark.parametrize("lun", range(64))
def test_every_data_lun(rules: list[Rule], lun: int) -> None:
    whole = evaluate(rules, vmbus_disk("sdc", f"3:0:0:{lun}", DATA_CONTROLLER))
    part = evaluate(rules, vmbus_disk("sdc", f"3:0:0:{lun}", DATA_CONTROLLER, partition=3))
    assert whole.symlinks == [f"disk/azure/scsi1/lun{lun}"]
    assert part.symlinks == [f"disk/azure/scsi1/lun{lun}-part3"]


def test_lun_beyond_azure_limit_is_unnamed(rules: list[Rule]) -> None:
    assert evaluate(rules, vmbus_disk("sdc", "3:0:0:64", DATA_CONTROLLER)).symlinks == []


def test_remove_and_other_subsystems_are_ignored(rules: list[Rule]) -> None:
    event = vmbus_disk("sdb", "1:0:1:0", GEN1_RESOURCE_ID)
    event.action = "remove"
    assert evaluate(rules, event).symlinks == []
    scsi = Event("add", event.chain[1:], dict(HYPERV_ENV))
    assert evaluate(rules, scsi).symlinks == []


def test_the_rules_only_name_and_pull_in() -> None:
    """No RUN, PROGRAM or IMPORT: every key is one the evaluator models (parse asserts)."""
    text = RULES.read_text()
    for word in ("RUN", "PROGRAM", "IMPORT", "OPTIONS", "ATTR{"):
        assert not re.search(rf"^[^#]*\b{re.escape(word)}", text, re.MULTILINE), word
    parsed = parse(text)
    wants = [
        t
        for rule in parsed
        for t in rule.tokens
        if t.key == "ENV" and t.attribute == "SYSTEMD_WANTS"
    ]
    assert [(t.op, t.value) for t in wants] == [("+=", "azure-resource-disk.service")]
    assert (REPO / "units" / wants[0].value).is_file()


def test_evaluator_is_not_vacuous(rules: list[Rule]) -> None:
    """The evaluator honours the same-parent rule and GOTO: a wrong model would show here."""
    # device_id and LUN live on different parents: one rule matching both
    # would never fire in udev; the evaluator must agree.
    combined = parse(
        'ATTRS{device_id}=="' + DATA_CONTROLLER + '", KERNELS=="*:*:*:0", SYMLINK+="x"\n'
    )
    assert evaluate(combined, vmbus_disk("sdc", "3:0:0:0", DATA_CONTROLLER)).symlinks == []
    separate = parse(
        'ATTRS{device_id}=="' + DATA_CONTROLLER + '", ENV{.C}="1"\n'
        'ENV{.C}=="1", KERNELS=="*:*:*:0", SYMLINK+="x"\n'
    )
    assert evaluate(separate, vmbus_disk("sdc", "3:0:0:0", DATA_CONTROLLER)).symlinks == ["x"]
    skip = parse('GOTO="end"\nSYMLINK+="never"\nLABEL="end"\nSYMLINK+="after"\n')
    assert evaluate(skip, qemu_disk("sda", "0:0:0")).symlinks == ["after"]
    with pytest.raises(AssertionError):
        parse('RUN+="/bin/true"\n')
    with pytest.raises(AssertionError):
        parse('KERNEL=="sd*" SYMLINK+="x"\n')  # missing comma
