"""Hyper-V KVP (data exchange) pool records and the provisioning report.

A pool file (the guest-to-host one is ``/var/lib/hyperv/.kvp_pool_1``) is a
sequence of fixed-size records: a 512-byte key then a 2048-byte value, each
UTF-8 and NUL-padded. The host reads them as C strings, so a record ends at
its first NUL; keys are kept under 255 bytes and values under 1023, the sizes
the host side accepts.

``PROVISIONING_REPORT`` is how the host learns why provisioning succeeded or
failed: a ``|``-separated list of ``name=value`` fields. The host splits on
``|`` and knows no escaping, so a ``|`` in free text is replaced, never
escaped.

Pure functions only: the stage that writes the pool takes its flock and
replaces the record of its key, or appends one (write the report first,
then report health to the WireServer).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from azagent import __version__
from azagent.errors import AzagentError, refusing
from azagent.redact import redact

TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import datetime

KEY_SIZE = 512
VALUE_SIZE = 2048
RECORD_SIZE = KEY_SIZE + VALUE_SIZE
MAX_KEY_BYTES = 254
MAX_VALUE_BYTES = 1022

PROVISIONING_REPORT_KEY = "PROVISIONING_REPORT"
AGENT = f"azagent/{__version__}"
DOCUMENTATION_URL = "https://aka.ms/linuxprovisioningerror"
SUCCESS = "success"
ERROR = "error"

# What stands in for a "|" inside free text.
PIPE_REPLACEMENT = "/"
_ELLIPSIS = "..."
_FIELD_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_STANDARD_FIELDS = ("result", "reason", "agent", "timestamp", "vm_id", "documentation_url")


class KvpError(AzagentError, ValueError):
    """A record or report that cannot be written or read."""


def encode_record(key: str, value: str) -> bytes:
    """One pool record (2560 bytes) holding ``key`` and ``value``."""
    key_bytes = key.encode("utf-8")
    value_bytes = value.encode("utf-8")
    if not key_bytes:
        raise KvpError("KVP key is empty")
    if "\x00" in key or "\x00" in value:
        raise KvpError("KVP key or value contains a NUL character")
    if len(key_bytes) > MAX_KEY_BYTES:
        raise KvpError(f"KVP key is {len(key_bytes)} bytes long, at most {MAX_KEY_BYTES} allowed")
    if len(value_bytes) > MAX_VALUE_BYTES:
        raise KvpError(
            f"KVP value is {len(value_bytes)} bytes long, at most {MAX_VALUE_BYTES} allowed"
        )
    return key_bytes.ljust(KEY_SIZE, b"\x00") + value_bytes.ljust(VALUE_SIZE, b"\x00")


def _c_string(field: bytes) -> str:
    # Up to the first NUL, as the host and hv_kvp_daemon read it; this also
    # drops the padding. A record another writer garbled still decodes.
    return field.split(b"\x00", 1)[0].decode("utf-8", errors="replace")


@refusing(KvpError, "KVP pool")
def decode_pool(data: bytes) -> list[tuple[str, str]]:
    """The ``(key, value)`` records of a pool file, in file order."""
    if len(data) % RECORD_SIZE:
        raise KvpError(
            f"KVP pool of {len(data)} bytes is not a whole number of {RECORD_SIZE}-byte records"
        )
    records = []
    for start in range(0, len(data), RECORD_SIZE):
        record = data[start : start + RECORD_SIZE]
        records.append((_c_string(record[:KEY_SIZE]), _c_string(record[KEY_SIZE:])))
    return records


def _free_text(text: str) -> str:
    """``text`` made safe for a report field: redacted, one line, no ``|``."""
    text = redact(text).replace("|", PIPE_REPLACEMENT)
    return "".join(c if c.isprintable() else " " for c in text).strip()


def _field_value(name: str, value: str) -> str:
    if "|" in value or "\x00" in value or not value.isprintable():
        raise KvpError(f"report field {name} contains '|' or a control character")
    return value


def provisioning_report(
    *,
    result: str,
    timestamp: datetime,
    vm_id: str,
    reason: str | None = None,
    agent: str = AGENT,
    extra: Mapping[str, str] | None = None,
    documentation_url: str = DOCUMENTATION_URL,
) -> str:
    """The PROVISIONING_REPORT value, at most :data:`MAX_VALUE_BYTES` bytes.

    ``result`` is ``"success"`` or ``"error"``; an error needs a ``reason``
    (free text: redacted, line breaks and ``|`` replaced, and shortened with
    "..." when the whole report would not fit in a KVP value). ``extra``
    fields (``name=value``) come after ``vm_id``. ``timestamp`` must carry a
    time zone; it is written in UTC, ISO 8601.
    """
    if result not in (SUCCESS, ERROR):
        raise KvpError(f"report result must be {SUCCESS!r} or {ERROR!r}")
    if result == ERROR and not reason:
        raise KvpError("an error report needs a reason")
    if result == SUCCESS and reason is not None:
        raise KvpError("a success report carries no reason")
    if timestamp.tzinfo is None or timestamp.utcoffset() is None:
        raise KvpError("report timestamp has no time zone")
    from datetime import timezone

    head = [f"result={result}"]
    tail = [
        f"agent={_field_value('agent', agent)}",
        f"timestamp={timestamp.astimezone(timezone.utc).isoformat()}",
        f"vm_id={_field_value('vm_id', vm_id)}",
    ]
    for name, value in (extra or {}).items():
        if not _FIELD_NAME.fullmatch(name) or name in _STANDARD_FIELDS:
            raise KvpError("report field names are letters, digits and '_', not a standard one")
        tail.append(f"{name}={_field_value(name, value)}")
    if result == ERROR:
        tail.append(f"documentation_url={_field_value('documentation_url', documentation_url)}")

    if reason is None:
        report = "|".join(head + tail)
    else:
        text = _free_text(reason)
        fixed = len("|".join([*head, "reason=", *tail]).encode("utf-8"))
        budget = MAX_VALUE_BYTES - fixed
        if budget < len(_ELLIPSIS):
            raise KvpError("report fields leave no room for the reason")
        encoded = text.encode("utf-8")
        if len(encoded) > budget:
            cut = encoded[: budget - len(_ELLIPSIS)].decode("utf-8", errors="ignore")
            text = cut + _ELLIPSIS
        report = "|".join([*head, f"reason={text}", *tail])
    if len(report.encode("utf-8")) > MAX_VALUE_BYTES:
        raise KvpError(f"report is longer than {MAX_VALUE_BYTES} bytes")
    return report


@refusing(KvpError, "provisioning report")
def parse_provisioning_report(value: str) -> dict[str, str]:
    """The fields of a PROVISIONING_REPORT value, in their order."""
    fields: dict[str, str] = {}
    for position, item in enumerate(value.split("|"), start=1):
        name, equals, content = item.partition("=")
        if not equals or not _FIELD_NAME.fullmatch(name):
            raise KvpError(f"provisioning report field {position} is not name=value")
        if name in fields:
            raise KvpError(f"provisioning report field {name} appears twice")
        fields[name] = content
    if fields.get("result") not in (SUCCESS, ERROR):
        raise KvpError(f"provisioning report has no result={SUCCESS} or result={ERROR}")
    return fields
