"""What the provisioning stages hand to each other, and the once-per-VM marker.

``mount-ovf`` reads the provisioning data once (the DVD, else IMDS) and writes
:class:`ProvisioningData` to ``/run/azagent/provisioning.json``, root-only:
it holds the password *hash* (never the password) and customData. The other
provisioning stages read it; when it is absent there is nothing to provision
this boot (the VM was provisioned before, or provisioning is disabled). The
host and user names in it are checked again when it is read (the rules of
:mod:`azagent.names`): a later stage acts on them, and the file may have been
edited by hand since mount-ovf or imds wrote it.

``create-user`` writes :data:`ACCEPTED_USER`, root-only, once it has
created or adopted the user: the user name, the VM id and the uid. The
stages that place keys (ssh-keys, certificates) place them only for the user
it names, for this VM (:func:`azagent.sshkeys.key_owner`).

``report-ready`` writes the marker ``<Lib.Dir>/provisioned`` holding the VM id
once the platform accepted Ready: later boots of the same VM skip the
provisioning stages; a captured image booted as a new VM (new VM id)
provisions again.
"""

from __future__ import annotations

import functools
import os
import stat
from contextlib import suppress
from pathlib import Path

from azagent import names
from azagent.context import Context
from azagent.errors import INPUT_ERRORS, AzagentError, StageFailed
from azagent.fsutil import atomic_write
from azagent.plan import Plan
from azagent.redact import register
from azagent.results import read_result

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final, Optional

# json is imported where it is used: a dry run with nothing handed off reads
# and writes no document, and every stage is a fresh process at boot.

STATE_PATH = "/run/azagent/provisioning.json"
# Left by mount-ovf when there is no provisioning media: the imds stage's cue.
IMDS_NEEDED = "/run/azagent/imds-needed"
# Left beside the data for the units' ConditionPathExists=, so that systemd
# starts a stage only when the data gives it something to do: certificates
# when a key or key pair is given by thumbprint, custom-data when there is
# customData. Without the flag the stage would only record "skipped".
CERTIFICATES_NEEDED = "/run/azagent/certificates-needed"
CUSTOM_DATA_NEEDED = "/run/azagent/custom-data-needed"
MARKER_NAME = "provisioned"
# In Lib.Dir when the platform said ProvisionGuestAgent=false: the extension
# handler's unit does not start (ConditionPathExists=!...).
NO_GUEST_AGENT = "guest-agent-disabled"
MAX_STATE_BYTES = 2 * 1024 * 1024
# Written by create-user when it accepts the user: whose keys may be placed.
ACCEPTED_USER = "/run/azagent/accepted-user.json"
MAX_ACCEPTED_BYTES = 4096

# The stages that make up provisioning, in order; report-ready and the
# failure report look at their results.
PROVISIONING_STAGES = ("mount-ovf", "imds", "hostname", "create-user", "ssh-keys", "custom-data")


class Key:
    """An SSH public key or key pair to install (``value`` or ``fingerprint``)."""

    __slots__ = ("fingerprint", "path", "value")

    def __init__(
        self, path: str, value: Optional[str] = None, fingerprint: Optional[str] = None
    ) -> None:
        self.path: Final = path
        self.value: Final = value
        self.fingerprint: Final = fingerprint

    def to_dict(self) -> dict[str, Optional[str]]:
        return {"path": self.path, "value": self.value, "fingerprint": self.fingerprint}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Key):
            return NotImplemented
        return (self.path, self.value, self.fingerprint) == (
            other.path,
            other.value,
            other.fingerprint,
        )

    def __hash__(self) -> int:
        return hash((self.path, self.value, self.fingerprint))


class ProvisioningData:
    __slots__ = (
        "custom_data",
        "disable_password_auth",
        "hostname",
        "key_pairs",
        "notes",
        "password_hash",
        "provision_guest_agent",
        "public_keys",
        "source",
        "username",
        "vm_id",
    )

    def __init__(
        self,
        vm_id: str,
        source: str,  # "ovf" or "imds"
        hostname: str,
        username: str,
        *,
        password_hash: Optional[str] = None,
        disable_password_auth: bool = True,
        public_keys: tuple[Key, ...] = (),
        key_pairs: tuple[Key, ...] = (),
        custom_data: Optional[str] = None,  # base64 text, as delivered
        provision_guest_agent: bool = True,
        notes: tuple[str, ...] = (),
    ) -> None:
        self.vm_id: Final = vm_id
        self.source: Final = source
        self.hostname: Final = hostname
        self.username: Final = username
        self.password_hash: Final = password_hash
        self.disable_password_auth: Final = disable_password_auth
        self.public_keys: Final = public_keys
        self.key_pairs: Final = key_pairs
        self.custom_data: Final = custom_data
        self.provision_guest_agent: Final = provision_guest_agent
        self.notes: Final = notes
        # The stages act on these names (useradd, sethostname, key paths):
        # no ProvisioningData holds one the rules refuse.
        names.host_name(self.hostname, "hostname")
        names.user_name(self.username, "username")

    def _fields(self) -> tuple[object, ...]:
        return (
            self.vm_id,
            self.source,
            self.hostname,
            self.username,
            self.password_hash,
            self.disable_password_auth,
            self.public_keys,
            self.key_pairs,
            self.custom_data,
            self.provision_guest_agent,
            self.notes,
        )

    def __eq__(self, other: object) -> bool:
        # mount-ovf compares the data it parsed with what an earlier run saved.
        if not isinstance(other, ProvisioningData):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"ProvisioningData(vm_id={self.vm_id!r}, source={self.source!r}, "
            f"hostname={self.hostname!r}, username={self.username!r}, "
            f"password_hash={'<redacted>' if self.password_hash else None}, "
            f"custom_data={'<redacted>' if self.custom_data else None})"
        )

    def to_json(self) -> bytes:
        import json

        document = {
            "vm_id": self.vm_id,
            "source": self.source,
            "hostname": self.hostname,
            "username": self.username,
            "password_hash": self.password_hash,
            "disable_password_auth": self.disable_password_auth,
            "public_keys": [key.to_dict() for key in self.public_keys],
            "key_pairs": [key.to_dict() for key in self.key_pairs],
            "custom_data": self.custom_data,
            "provision_guest_agent": self.provision_guest_agent,
            "notes": list(self.notes),
        }
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> ProvisioningData:
        import json

        try:
            document: Any = json.loads(data)
            values = dict(document)
            values["public_keys"] = tuple(Key(**k) for k in values.get("public_keys", ()))
            values["key_pairs"] = tuple(Key(**k) for k in values.get("key_pairs", ()))
            values["notes"] = tuple(values.get("notes", ()))
            loaded = cls(**values)
        except names.InvalidName as e:
            raise names.InvalidName(f"{STATE_PATH}: {e.reason}") from None
        except INPUT_ERRORS as e:
            raise StageFailed(f"{STATE_PATH} is unreadable: {type(e).__name__}") from None
        for secret in (loaded.password_hash, loaded.custom_data):
            if secret:
                register(secret)
        return loaded


def certificate_fingerprints(data: ProvisioningData) -> dict[str, bool]:
    """The certificates stage's work: each thumbprint given for a key (as written)
    and whether its private key is wanted too (a key pair)."""
    wanted: dict[str, bool] = {}
    for key in data.public_keys:
        if key.value is None and key.fingerprint:
            wanted.setdefault(key.fingerprint, False)
    for pair in data.key_pairs:
        if pair.fingerprint:
            wanted[pair.fingerprint] = True
    return wanted


def needs_certificates(data: ProvisioningData) -> bool:
    """Whether a key or key pair comes by thumbprint (the certificates stage's work)."""
    return bool(certificate_fingerprints(data))


def save(ctx: Context, data: ProvisioningData) -> None:
    """Save this boot's data, and the flags saying which later stages have work."""
    flags = {
        CERTIFICATES_NEEDED: needs_certificates(data),
        CUSTOM_DATA_NEEDED: data.custom_data is not None,
    }
    for flag, needed in flags.items():
        if needed:
            atomic_write(ctx.path(flag), b"", mode=0o644)
        else:
            with suppress(FileNotFoundError):
                os.unlink(ctx.path(flag))
    atomic_write(ctx.path(STATE_PATH), data.to_json(), mode=0o600)


def load(ctx: Context) -> Optional[ProvisioningData]:
    """This boot's provisioning data, or None when there is nothing to provision."""
    path = ctx.path(STATE_PATH)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StageFailed(f"cannot read {STATE_PATH}: {e.strerror}") from None
    if len(raw) > MAX_STATE_BYTES:
        raise StageFailed(f"{STATE_PATH} is larger than {MAX_STATE_BYTES} bytes")
    return ProvisioningData.from_json(raw)


class AcceptedUser:
    """The user create-user accepted (created or adopted) for a VM this boot."""

    __slots__ = ("uid", "username", "vm_id")

    def __init__(self, username: str, vm_id: str, uid: int) -> None:
        self.username: Final = username
        self.vm_id: Final = vm_id
        self.uid: Final = uid

    def __eq__(self, other: object) -> bool:
        # create-user compares the record with the user it accepts.
        if not isinstance(other, AcceptedUser):
            return NotImplemented
        return (self.username, self.vm_id, self.uid) == (other.username, other.vm_id, other.uid)

    def __hash__(self) -> int:
        return hash((self.username, self.vm_id, self.uid))


def record_accepted_user(ctx: Context, username: str, vm_id: str, uid: int) -> None:
    """Record that create-user accepted ``username`` (uid ``uid``) for the VM ``vm_id``."""
    import json

    document = {"username": username, "vm_id": vm_id, "uid": uid}
    atomic_write(
        ctx.path(ACCEPTED_USER),
        (json.dumps(document, sort_keys=True) + "\n").encode(),
        mode=0o600,
    )


def accepted_user(ctx: Context) -> Optional[AcceptedUser]:
    """The user create-user accepted this boot; None when none (or the record is unusable).

    The record is read without following a link and only as a small
    regular file; anything else counts as no acceptance.
    """
    import json

    try:
        fd = os.open(
            ctx.path(ACCEPTED_USER),
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
        )
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        raw = f.read(MAX_ACCEPTED_BYTES + 1)
    try:
        document = json.loads(raw)
        username, vm_id, uid = document["username"], document["vm_id"], document["uid"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    if not (isinstance(username, str) and isinstance(vm_id, str)) or type(uid) is not int:
        return None
    return AcceptedUser(username, vm_id, uid)


def report_vm_id(ctx: Context) -> str:
    """The VM id a health report names: this boot's provisioning data's, else the firmware's.

    Provisioning data that cannot be used (a refused name, a broken file)
    already failed the stage that read it, with the reason; it must not keep
    that failure from being reported.
    """
    try:
        data = load(ctx)
    except AzagentError:
        data = None
    return (data.vm_id if data else None) or smbios_vm_id(ctx) or "unknown"


def marker_path(ctx: Context) -> Path:
    return ctx.lib_dir / MARKER_NAME


def provisioned_vm_id(ctx: Context) -> Optional[str]:
    """The VM id recorded when this disk was last provisioned, if any."""
    try:
        text = marker_path(ctx).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return text or None


def user_left_out(ctx: Context, username: str) -> Optional[str]:
    """Why the user's keys cannot be installed, when create-user did not run at all.

    An image builder who masks create-user manages users some other way: the
    keys of a user that does not exist are then left out (and said so), not
    a provisioning failure. Whether an existing user may have keys at all is
    :func:`azagent.sshkeys.key_owner`'s decision.
    """
    from azagent.users import accounts

    if read_result(ctx.root, "create-user") is not None:
        return None
    try:
        if username in accounts(ctx):
            return None
    except StageFailed:
        return None
    return (
        f"user {username} does not exist and create-user did not run this boot "
        "(masked?): the keys for that user are not installed"
    )


def nothing_to_provision() -> str:
    return (
        "no provisioning data this boot: the VM is already provisioned, "
        "provisioning is disabled, or mount-ovf did not run"
    )


def requires_data(
    plan: Callable[[Context, ProvisioningData], Plan],
) -> Callable[[Context], Plan]:
    """A stage's plan that needs this boot's provisioning data, as ``plan(ctx)``.

    Without the data the stage skips (:func:`nothing_to_provision`); with it,
    the wrapped ``plan(ctx, data)`` decides.
    """

    @functools.wraps(plan)
    def with_data(ctx: Context) -> Plan:
        data = load(ctx)
        if data is None:
            return Plan.skipped(nothing_to_provision())
        return plan(ctx, data)

    return with_data


def normalize_vm_id(vm_id: str) -> str:
    return vm_id.strip().lower()


def same_vm(a: str, b: str) -> bool:
    """Whether two VM ids name the same VM.

    On Gen1 VMs the SMBIOS UUID has its first three groups byte-swapped
    relative to the platform's vmId, so either order matches.
    """
    a, b = normalize_vm_id(a), normalize_vm_id(b)
    return a == b or a == swap_uuid_groups(b)


def swap_uuid_groups(vm_id: str) -> str:
    parts = vm_id.split("-")
    if len(parts) != 5 or [len(p) for p in parts] != [8, 4, 4, 4, 12]:
        return vm_id

    def swapped(group: str) -> str:
        return "".join(reversed([group[i : i + 2] for i in range(0, len(group), 2)]))

    return "-".join([swapped(parts[0]), swapped(parts[1]), swapped(parts[2]), parts[3], parts[4]])


def smbios_vm_id(ctx: Context) -> Optional[str]:
    """The VM id the firmware reports (/sys/class/dmi/id/product_uuid)."""
    try:
        text = ctx.path("/sys/class/dmi/id/product_uuid").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return normalize_vm_id(text) or None
