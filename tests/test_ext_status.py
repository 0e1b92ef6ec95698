"""Extension status files, heartbeats, the status blob and its upload requests."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from conftest import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from azagent import redact
from azagent.extensions import goalstate, status
from azagent.extensions.status import (
    AgentStatus,
    ExtensionStatus,
    GoalStateStatus,
    HandlerStatus,
    parse_heartbeat,
    parse_status_file,
)

SAMPLES = FIXTURES / "walinuxagent/ext"
NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
SAS = (
    "https://acct.blob.core.windows.net/$system/vm.status?sv=2018-03-28&sr=b&sig=S3cr3tSig%3d&sp=w"
)
AGENT = AgentStatus("0.1.0", "vm1", "debian", "12")
FUZZ = settings(
    derandomize=True,
    max_examples=int(os.environ.get("AZAGENT_FUZZ_EXAMPLES", "40")),
    deadline=None,
)


@pytest.fixture(autouse=True)
def _clean_redaction() -> Iterator[None]:
    redact.forget_all()
    yield
    redact.forget_all()


def sample(name: str) -> ExtensionStatus:
    return parse_status_file((SAMPLES / name).read_bytes(), name="Ext.Name", seq_no=4)


# --- status files --------------------------------------------------------------


def test_the_sample_status() -> None:
    parsed = sample("sample-status.json")
    assert (parsed.status, parsed.code, parsed.seq_no, parsed.name) == ("success", 1, 4, "Ext.Name")
    assert parsed.message is not None
    assert parsed.message.startswith("Aenean semper nunc nisl")
    (substatus,) = parsed.substatus
    assert substatus.status == "success"
    assert substatus.code == 0
    assert substatus.message is None  # formattedMessage: null


def test_a_missing_status_file_is_transitioning() -> None:
    parsed = parse_status_file(None, name="E", seq_no=2)
    assert (parsed.status, parsed.code) == (status.TRANSITIONING, 0)
    assert "sequence number 2" in (parsed.message or "")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("sample-status-invalid-json-format.json", "is not valid JSON (Expecting ',' delimiter"),
        ("sample-status-invalid-format-emptykey-line7.json", "is not valid JSON"),
        ("sample-status-invalid-status-no-status-status-key.json", "[0].status.status is missing"),
    ],
)
def test_invalid_samples_are_error_statuses(name: str, reason: str) -> None:
    parsed = sample(name)
    assert (parsed.status, parsed.code) == (status.ERROR, status.CODE_STATUS_INVALID)
    assert parsed.message is not None
    assert reason in parsed.message


def test_an_oversized_status_is_cut_to_the_limits() -> None:
    data = (SAMPLES / "sample-status-very-large.json").read_bytes()
    assert len(data) > status.MAX_STATUS_FILE
    parsed = sample("sample-status-very-large.json")
    assert parsed.status == "success"
    assert parsed.message is not None
    assert len(parsed.message) == status.MAX_MESSAGE + len(status.TRUNCATED)
    assert parsed.message.endswith(status.TRUNCATED)


def test_oversized_substatuses_are_cut_and_dropped_past_the_budget() -> None:
    full = json.loads((SAMPLES / "sample-status-very-large-multiple-substatuses.json").read_bytes())
    parsed = sample("sample-status-very-large-multiple-substatuses.json")
    assert 0 < len(parsed.substatus) < len(full[0]["status"]["substatus"])
    kept = sum(len(s.name or "") + len(s.message or "") for s in parsed.substatus)
    assert kept + len(parsed.message or "") <= status.MAX_STATUS_FILE
    for item in parsed.substatus:
        assert len(item.name or "") <= status.MAX_SUBSTATUS_FIELD + len(status.TRUNCATED)


def test_a_small_status_keeps_its_whole_message() -> None:
    message = "x" * 5000  # CustomScript puts the script's output here
    data = json.dumps(
        [{"status": {"status": "success", "formattedMessage": {"lang": "en", "message": message}}}]
    )
    assert parse_status_file(data.encode(), name="E", seq_no=0).message == message


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"status": {}}, "the top level is not a list"),
        ([1], "[0].status is missing or not an object"),
        ([{"status": {"status": "success", "code": "twelve"}}], "[0].status.code is not a number"),
        ([{"status": {"status": "success", "code": True}}], "[0].status.code is not a number"),
        ([{"status": {"status": "success", "formattedMessage": "hi"}}], "lacks lang or message"),
        (
            [{"status": {"status": "success", "formattedMessage": {"lang": "en", "message": 5}}}],
            "not a string",
        ),
        ([{"status": {"status": "success", "substatus": {}}}], "substatus is not a list"),
        (
            [{"status": {"status": "success", "substatus": [{"status": "fine"}]}}],
            "substatus[0].status",
        ),
        ([{"status": {"status": "success", "operation": []}}], "operation is not a string"),
    ],
)
def test_malformed_statuses_are_errors_with_a_reason(document: Any, reason: str) -> None:
    parsed = parse_status_file(json.dumps(document).encode(), name="E", seq_no=1)
    assert (parsed.status, parsed.code) == (status.ERROR, status.CODE_STATUS_INVALID)
    assert parsed.message is not None
    assert reason in parsed.message


def test_odd_but_accepted_statuses() -> None:
    unknown = [{"status": {"status": "fantastic", "substatus": [None]}}]
    parsed = parse_status_file(json.dumps(unknown).encode(), name="E", seq_no=1)
    assert parsed.status == status.ERROR
    assert parsed.code == 0
    assert parsed.substatus == ()
    assert parse_status_file(b"[]", name="E", seq_no=1).status == status.TRANSITIONING
    huge = b" " * (status.MAX_STATUS_READ + 1)
    assert "is over" in (parse_status_file(huge, name="E", seq_no=1).message or "")
    deep = b"[" * 100_000
    assert parse_status_file(deep, name="E", seq_no=1).code == status.CODE_STATUS_INVALID


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_status_file_parser_never_raises(data: bytes) -> None:
    parsed = parse_status_file(data, name="E", seq_no=3)
    assert parsed.status in status.STATUS_VALUES


status_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(status.STATUS_VALUES),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["status", "code", "formattedMessage", "lang", "message", "substatus", "name"]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@FUZZ
@given(status_like)
def test_status_file_parser_never_raises_on_status_shaped_json(document: Any) -> None:
    parsed = parse_status_file(json.dumps([document]).encode(), name="E", seq_no=3)
    assert parsed.status in status.STATUS_VALUES
    # Whatever was parsed can be reported.
    json.loads(
        status.status_blob(
            agent=AGENT,
            handlers=[HandlerStatus("H", "1.0", status.READY, extension=parsed)],
            goal_state=None,
            now=NOW,
        )
    )


# --- heartbeat -----------------------------------------------------------------


def test_heartbeat() -> None:
    message = {"lang": "en-US", "message": "fine"}
    beat = json.dumps(
        [{"version": 1.0, "heartbeat": {"status": "ready", "code": 0, "formattedMessage": message}}]
    ).encode()
    assert parse_heartbeat(beat, age_seconds=5) == status.Heartbeat("ready", 0, "fine")
    stale = parse_heartbeat(beat, age_seconds=601)
    assert stale.status == status.UNRESPONSIVE
    assert "601 s old" in (stale.message or "")
    assert parse_heartbeat(None, 0).status == status.NOT_READY
    assert parse_heartbeat(b"{", 0).message == "the extension's heartbeat.log is malformed"
    assert parse_heartbeat(b'[{"heartbeat": {"status": 7}}]', 0).status == status.NOT_READY


@FUZZ
@given(status_like)
def test_heartbeat_parser_never_raises(document: Any) -> None:
    parse_heartbeat(json.dumps([{"heartbeat": document}]).encode(), 1)


# --- the status blob -----------------------------------------------------------


def blob(**kwargs: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {"agent": AGENT, "handlers": [], "goal_state": None, "now": NOW}
    arguments.update(kwargs)
    result: dict[str, Any] = json.loads(status.status_blob(**arguments))
    return result


def test_the_status_blob_shape() -> None:
    extension = ExtensionStatus(
        "Sample", 3, status.SUCCESS, 0, "hello", "Enable", "2025-01-01T00:00:00Z"
    )
    document = blob(
        handlers=[HandlerStatus("Sample", "1.3.0", status.READY, 0, "Plugin enabled", extension)],
        goal_state=GoalStateStatus(7, "Success", 0, "GoalState executed successfully", NOW),
        fast_track=True,
    )
    assert document["version"] == "1.1"
    assert document["timestampUTC"] == "2025-03-04T05:06:07Z"
    assert document["guestOSInfo"] == {
        "computerName": "vm1",
        "osName": "debian",
        "osVersion": "12",
        "version": "0.1.0",
    }
    aggregate = document["aggregateStatus"]
    assert aggregate["guestAgentStatus"] == {
        "version": "0.1.0",
        "status": "Ready",
        "formattedMessage": {"lang": "en-US", "message": "Guest Agent is running"},
    }
    (handler,) = aggregate["handlerAggregateStatus"]
    assert handler["handlerName"] == "Sample"
    assert handler["handlerVersion"] == "1.3.0"
    assert handler["useExactVersion"] is True
    runtime = handler["runtimeSettingsStatus"]
    assert runtime["sequenceNumber"] == 3
    assert "extensionName" not in runtime
    settings_status = runtime["settingsStatus"]
    assert settings_status["version"] == 1.0
    assert settings_status["status"]["operation"] == "Enable"
    assert settings_status["status"]["formattedMessage"]["message"] == "hello"
    assert "substatus" not in settings_status["status"]
    assert aggregate["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"]["inSvdSeqNo"] == 7
    assert document["supportedFeatures"] == [
        {"Key": "MultipleExtensionsPerHandler", "Value": "1.0"},
        {"Key": "FastTrack", "Value": "1.0"},
    ]
    assert {"Key": "FastTrack", "Value": "1.0"} not in blob()["supportedFeatures"]
    assert "vmArtifactsAggregateStatus" not in blob()["aggregateStatus"]


def test_multi_config_entries_name_their_extension() -> None:
    goal = goalstate.parse_vm_settings(
        (FIXTURES / "walinuxagent/hostgaplugin/vm_settings.json").read_bytes(), "1"
    )
    run_command = goal.handler("Microsoft.CPlat.Core.RunCommandHandlerLinux")
    assert run_command is not None
    entries = status.error_report(
        run_command, version="1.2.0", code=status.CODE_ENABLE, message="no"
    )
    document = blob(handlers=entries)
    names = [
        e["runtimeSettingsStatus"]["extensionName"]
        for e in document["aggregateStatus"]["handlerAggregateStatus"]
    ]
    assert names == ["MCExt1", "MCExt2", "MCExt3"]


def test_error_report_for_a_handler_without_settings() -> None:
    (entry,) = status.error_report(
        goalstate.Handler("A.B", "1.0", "enabled"), version="1.0", code=1009, message="disabled"
    )
    assert entry.extension is None
    assert entry.code == 1009
    assert entry.status == status.NOT_READY


def test_no_secret_reaches_the_status_blob() -> None:
    goal = goalstate.parse_extensions_config(
        (FIXTURES / "walinuxagent/wire/ext_conf.xml").read_bytes()
    )
    (handler,) = goal.handlers
    protected = handler.extensions[0].protected_settings
    assert protected is not None
    redact.register(protected)
    leaky = ExtensionStatus(handler.name, 0, status.ERROR, 1, f"failed with {protected} at {SAS}")
    data = status.status_blob(
        agent=AGENT,
        handlers=[
            *status.error_report(handler, version="1.0.0", code=1000, message=f"see {SAS}"),
            HandlerStatus(handler.name, "1.0.0", status.NOT_READY, 1, None, leaky),
        ],
        goal_state=None,
        now=NOW,
    ).decode()
    assert protected not in data
    assert "S3cr3tSig" not in data


# --- uploading ------------------------------------------------------------------


def test_a_block_blob_is_one_put() -> None:
    (request,) = status.blob_requests(b"{}", url=SAS, blob_type="BlockBlob", now=NOW)
    assert request.url == SAS
    assert request.body == b"{}"
    assert dict(request.headers) == {
        "Content-Length": "2",
        "x-ms-blob-type": "BlockBlob",
        "x-ms-date": "Tue, 04 Mar 2025 05:06:07 GMT",
        "x-ms-version": "2014-02-14",
    }


def test_a_page_blob_is_created_then_written_in_aligned_pages() -> None:
    content = b'{"a": "' + b"x" * (status.MAX_PAGE_WRITE + 100) + b'"}'
    create, *pages = status.blob_requests(content, url=SAS, blob_type="PageBlob", now=NOW)
    size = -(-len(content) // 512) * 512
    assert create.body is None
    assert create.url == SAS
    assert dict(create.headers)["x-ms-blob-content-length"] == str(size)
    assert dict(create.headers)["x-ms-blob-type"] == "PageBlob"
    assert len(pages) == 2
    assert all(p.url == SAS + "&comp=page" for p in pages)
    assert [dict(p.headers)["x-ms-range"] for p in pages] == [
        f"bytes=0-{status.MAX_PAGE_WRITE - 1}",
        f"bytes={status.MAX_PAGE_WRITE}-{size - 1}",
    ]
    written = b"".join(p.body or b"" for p in pages)
    assert len(written) == size
    assert written.rstrip(b" ") == content
    json.loads(written)  # the padding keeps the document valid JSON
    (first,) = status.blob_requests(b"{}", url="http://h/b", blob_type="PageBlob", now=NOW)[1:]
    assert first.url == "http://h/b?comp=page"
    assert len(first.body or b"") == 512


def test_the_hostgaplugin_envelope() -> None:
    request = status.blob_requests(b'{"a":1}', url=SAS, blob_type="BlockBlob", now=NOW)[0]
    envelope = json.loads(status.hostgaplugin_envelope(request))
    assert envelope["requestUri"] == SAS
    assert {"headerName": "x-ms-blob-type", "headerValue": "BlockBlob"} in envelope["headers"]
    assert base64.b64decode(envelope["content"]) == b'{"a":1}'
    create = status.blob_requests(b"{}", url=SAS, blob_type="PageBlob", now=NOW)[0]
    assert "content" not in json.loads(status.hostgaplugin_envelope(create))


def test_the_sas_token_stays_out_of_what_is_logged() -> None:
    request = status.blob_requests(b"{}", url=SAS, blob_type="BlockBlob", now=NOW)[0]
    assert "S3cr3tSig" not in repr(request)
    assert "S3cr3tSig" not in request.redacted_url
    assert request.redacted_url.startswith("https://acct.blob.core.windows.net/$system/vm.status")


def test_an_unknown_blob_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown blob type"):
        status.blob_requests(b"{}", url=SAS, blob_type="AppendBlob", now=NOW)


def test_http_date_does_not_depend_on_the_locale() -> None:
    assert status.http_date(datetime(2024, 12, 1, 23, 59, 0, tzinfo=timezone.utc)) == (
        "Sun, 01 Dec 2024 23:59:00 GMT"
    )
