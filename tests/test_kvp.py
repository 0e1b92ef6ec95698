"""Hyper-V KVP pool records and the PROVISIONING_REPORT value."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from azagent import kvp, redact
from azagent.errors import AzagentError
from azagent.kvp import KvpError

WHEN = datetime(2024, 5, 1, 12, 30, 15, tzinfo=timezone.utc)
VM_ID = "0b9f1e4c-7a51-4d0b-9b5e-2f3c8f1d6a77"


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    redact.forget_all()
    yield
    redact.forget_all()


# -- records -------------------------------------------------------------------


def test_record_layout() -> None:
    record = kvp.encode_record("Key", "Välue")
    assert len(record) == 2560
    assert record[:3] == b"Key"
    assert record[3:512] == b"\x00" * 509
    assert record[512:518] == "Välue".encode()
    assert record[518:] == b"\x00" * (2048 - 6)


def test_pool_of_several_records_round_trips() -> None:
    records = [
        ("PROVISIONING_REPORT", "result=success"),
        ("empty", ""),
        ("ünïcödé", "värde ✓"),
        ("k" * kvp.MAX_KEY_BYTES, "v" * kvp.MAX_VALUE_BYTES),
    ]
    pool = b"".join(kvp.encode_record(k, v) for k, v in records)
    assert len(pool) == 4 * kvp.RECORD_SIZE
    assert kvp.decode_pool(pool) == records
    assert kvp.decode_pool(b"") == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("k" * 255, "v"),  # keys must stay under 255 bytes
        ("é" * 128, "v"),  # 256 bytes: the limit is in bytes, not characters
        ("k", "v" * 1023),  # values under 1023 bytes
        ("k", "é" * 512),
        ("", "v"),
        ("k\x00ey", "v"),
        ("key", "va\x00lue"),
    ],
)
def test_record_limits(key: str, value: str) -> None:
    with pytest.raises(KvpError):
        kvp.encode_record(key, value)


def test_largest_record_fits() -> None:
    record = kvp.encode_record("k" * 254, "v" * 1022)
    assert kvp.decode_pool(record) == [("k" * 254, "v" * 1022)]


@pytest.mark.parametrize("length", [1, 511, 2559, 2561, 2 * 2560 - 1, 3 * 2560 + 7])
def test_garbage_length_is_rejected(length: int) -> None:
    with pytest.raises(KvpError, match=f"KVP pool of {length} bytes is not a whole number"):
        kvp.decode_pool(b"\x01" * length)


def test_decoding_tolerates_bad_bytes() -> None:
    key = b"bad\xff\xfekey".ljust(512, b"\x00")
    # Garbage after the first NUL is padding the host never reads.
    value = b"ok\x00leftover".ljust(2048, b"\x00")
    pool = key + value + kvp.encode_record("next", "fine")
    assert kvp.decode_pool(pool) == [("bad\ufffd\ufffdkey", "ok"), ("next", "fine")]


def test_decoding_a_full_field_without_nul() -> None:
    pool = b"k" * 512 + b"v" * 2048
    assert kvp.decode_pool(pool) == [("k" * 512, "v" * 2048)]


# -- PROVISIONING_REPORT ---------------------------------------------------------


def test_success_report() -> None:
    report = kvp.provisioning_report(result="success", timestamp=WHEN, vm_id=VM_ID)
    assert report == (
        f"result=success|agent={kvp.AGENT}|timestamp=2024-05-01T12:30:15+00:00|vm_id={VM_ID}"
    )
    assert kvp.AGENT.startswith("azagent/")
    assert kvp.parse_provisioning_report(report) == {
        "result": "success",
        "agent": kvp.AGENT,
        "timestamp": "2024-05-01T12:30:15+00:00",
        "vm_id": VM_ID,
    }


def test_error_report() -> None:
    report = kvp.provisioning_report(
        result="error",
        reason="user creation failed",
        timestamp=WHEN,
        vm_id=VM_ID,
        agent="azagent/9.9",
        extra={"stage": "create-user"},
    )
    assert report == (
        "result=error|reason=user creation failed|agent=azagent/9.9"
        f"|timestamp=2024-05-01T12:30:15+00:00|vm_id={VM_ID}|stage=create-user"
        "|documentation_url=https://aka.ms/linuxprovisioningerror"
    )
    fields = kvp.parse_provisioning_report(report)
    assert list(fields) == [
        "result",
        "reason",
        "agent",
        "timestamp",
        "vm_id",
        "stage",
        "documentation_url",
    ]


def test_reason_cannot_break_the_field_structure() -> None:
    report = kvp.provisioning_report(
        result="error",
        reason="bad|vm_id=forged|result=success\nsecond line\tand a=sign",
        timestamp=WHEN,
        vm_id=VM_ID,
    )
    fields = kvp.parse_provisioning_report(report)
    assert fields["reason"] == "bad/vm_id=forged/result=success second line and a=sign"
    assert fields["vm_id"] == VM_ID
    assert fields["result"] == "error"
    assert "|" not in fields["reason"]


def test_long_reason_is_shortened_to_fit_a_record() -> None:
    report = kvp.provisioning_report(result="error", reason="é" * 2000, timestamp=WHEN, vm_id=VM_ID)
    assert len(report.encode()) <= kvp.MAX_VALUE_BYTES
    assert len(report.encode()) >= kvp.MAX_VALUE_BYTES - 1  # uses the room it has
    reason = kvp.parse_provisioning_report(report)["reason"]
    assert reason.endswith("...")
    assert set(reason[:-3]) == {"é"}
    record = kvp.encode_record(kvp.PROVISIONING_REPORT_KEY, report)
    assert kvp.decode_pool(record) == [("PROVISIONING_REPORT", report)]


def test_reason_is_redacted() -> None:
    redact.register("Sup3r-s3cret-pw")
    report = kvp.provisioning_report(
        result="error",
        reason="chpasswd failed for Sup3r-s3cret-pw; password=hunter22",
        timestamp=WHEN,
        vm_id=VM_ID,
    )
    assert "Sup3r-s3cret-pw" not in report
    assert "hunter22" not in report


def test_timestamp_is_utc_and_must_be_aware() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=2)))
    report = kvp.provisioning_report(result="success", timestamp=local, vm_id=VM_ID)
    assert kvp.parse_provisioning_report(report)["timestamp"] == "2024-05-01T12:30:15+00:00"
    with pytest.raises(KvpError, match="time zone"):
        kvp.provisioning_report(result="success", timestamp=datetime(2024, 5, 1), vm_id=VM_ID)


@pytest.mark.parametrize(
    "arguments",
    [
        {"result": "ok"},
        {"result": "error"},  # no reason
        {"result": "error", "reason": ""},
        {"result": "success", "reason": "why"},
        {"result": "success", "vm_id": "a|b"},
        {"result": "success", "agent": "x\ny"},
        {"result": "success", "extra": {"bad name": "v"}},
        {"result": "success", "extra": {"vm_id": "again"}},
        {"result": "success", "extra": {"k": "a|b"}},
        {"result": "error", "reason": "r", "agent": "a" * 1100},
    ],
)
def test_report_arguments_are_checked(arguments: dict[str, object]) -> None:
    call: dict[str, object] = {"timestamp": WHEN, "vm_id": VM_ID, **arguments}
    with pytest.raises(KvpError):
        kvp.provisioning_report(**call)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "field 1 is not name=value"),
        ("result=success|garbage", "field 2 is not name=value"),
        ("result=success|=x", "field 2 is not name=value"),
        ("result=success|agent=a|agent=b", "field agent appears twice"),
        ("agent=a", "has no result"),
        ("result=maybe", "has no result"),
    ],
)
def test_parse_report_rejects_malformed_values(value: str, message: str) -> None:
    with pytest.raises(KvpError, match=message):
        kvp.parse_provisioning_report(value)


def test_errors_are_azagent_errors() -> None:
    assert issubclass(KvpError, AzagentError)
    assert issubclass(KvpError, ValueError)
