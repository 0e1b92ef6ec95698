"""Status uploads as the emulator receives them, decoded for tests and for people.

An agent uploads its status blob (JSON, EXTENSIONS.md 7) either through the
HostGAPlugin (``PUT /status`` with a JSON envelope ``{requestUri, headers:
[{headerName, headerValue}], content: base64}``) or directly to the SAS URL:
a block blob in one PUT, or a page blob created empty and then written in
512-byte-aligned pages. The emulator keeps the blob; each time a status blob
holds a whole document again, that is one :class:`StatusUpload`. Page blobs
are padded (WALinuxAgent pads with NUL bytes directly and with spaces through
the HostGAPlugin), so trailing padding is dropped before decoding.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

from azagent.redact import redact


class EnvelopeError(ValueError):
    """The HostGAPlugin status request is not the envelope the platform expects."""


@dataclass(frozen=True)
class Envelope:
    """A decoded HostGAPlugin ``PUT /status`` request."""

    request_uri: str
    headers: dict[str, str]
    content: bytes


def decode_envelope(body: bytes) -> Envelope:
    try:
        document = json.loads(body)
        uri = document["requestUri"]
        headers = {str(h["headerName"]): str(h["headerValue"]) for h in document.get("headers", [])}
        content = base64.b64decode(document.get("content", ""), validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise EnvelopeError("malformed status request") from None
    if not isinstance(uri, str) or not uri:
        raise EnvelopeError("malformed status request")
    return Envelope(uri, headers, content)


@dataclass
class StatusUpload:
    """One whole status document that reached the status blob."""

    time: float
    via: str  # "hostgaplugin" or "direct"
    blob_type: str  # BlockBlob or PageBlob
    path: str  # the blob's path (no SAS)
    content: bytes  # the document's bytes, page padding removed
    document: Optional[dict[str, Any]]  # None when the content is not a JSON object
    error: Optional[str] = None  # why document is None

    def printable(self) -> dict[str, Any]:
        """A JSON-able, redacted view, as the request log keeps it."""
        document = None
        if self.document is not None:
            document = json.loads(redact(json.dumps(self.document)))
        return {
            "via": self.via,
            "blob_type": self.blob_type,
            "bytes": len(self.content),
            "document": document,
            "error": self.error,
        }


def decode_blob(kind: str, data: bytes) -> tuple[bytes, Optional[dict[str, Any]], Optional[str]]:
    """(content, document, error) of a status blob's bytes."""
    content = data.rstrip(b"\0 \t\r\n") if kind == "PageBlob" else data
    try:
        document = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return content, None, "not JSON"
    if not isinstance(document, dict):
        return content, None, "not a JSON object"
    return content, document, None


def is_whole(kind: str, data: bytes) -> bool:
    """Whether a status blob holds a whole document now (a page blob fills page by page)."""
    if kind != "PageBlob":
        return True
    return decode_blob(kind, data)[1] is not None


def handler_statuses(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The handlers of one status document (``aggregateStatus.handlerAggregateStatus``)."""
    aggregate = document.get("aggregateStatus")
    handlers = aggregate.get("handlerAggregateStatus") if isinstance(aggregate, dict) else None
    return [h for h in handlers if isinstance(h, dict)] if isinstance(handlers, list) else []


def _key(handler: dict[str, Any]) -> str:
    """A handler's name; ``Handler/extension`` for each extension of a multi-config handler."""
    name = str(handler.get("handlerName", "?"))
    runtime = handler.get("runtimeSettingsStatus")
    extension = runtime.get("extensionName") if isinstance(runtime, dict) else None
    return f"{name}/{extension}" if extension else name


def latest_by_handler(documents: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The latest status of every handler any of ``documents`` (oldest first) reported.

    Keyed by handler name, or ``Handler/extension`` for a multi-config handler's extensions.
    """
    latest: dict[str, dict[str, Any]] = {}
    for document in documents:
        for handler in handler_statuses(document):
            latest[_key(handler)] = handler
    return latest


def _message(formatted: Any) -> str:
    if isinstance(formatted, dict):
        return str(formatted.get("message", ""))
    return ""


def describe(uploads: list[dict[str, Any]]) -> list[str]:
    """Lines for ``tools/fabric log --status``: the last upload, then each handler's latest.

    ``uploads`` are log entries' ``status_upload`` views (already redacted), oldest first.
    """
    if not uploads:
        return ["no status uploads"]
    via: dict[str, int] = {}
    for upload in uploads:
        via[upload["via"]] = via.get(upload["via"], 0) + 1
    last = uploads[-1]
    counts = ", ".join(f"{name} {count}" for name, count in sorted(via.items()))
    lines = [
        f"status uploads: {len(uploads)} ({counts}); "
        f"last via {last['via']} as {last['blob_type']}, {last['bytes']} bytes"
        + (f", {last['error']}" if last.get("error") else "")
    ]
    documents = [u["document"] for u in uploads if isinstance(u.get("document"), dict)]
    if not documents:
        return lines
    aggregate = documents[-1].get("aggregateStatus")
    agent = aggregate.get("guestAgentStatus") if isinstance(aggregate, dict) else None
    if isinstance(agent, dict):
        lines.append(
            f"guest agent {agent.get('version', '?')}: {agent.get('status', '?')}"
            f" {_message(agent.get('formattedMessage'))!r}"
        )
    for name, handler in sorted(latest_by_handler(documents).items()):
        runtime = handler.get("runtimeSettingsStatus")
        settings = runtime.get("settingsStatus") if isinstance(runtime, dict) else None
        inner = settings.get("status") if isinstance(settings, dict) else None
        line = (
            f"{name} {handler.get('handlerVersion', '?')}: {handler.get('status', '?')}"
            f" code {handler.get('code', '?')}"
        )
        if isinstance(runtime, dict):
            line += f", sequence {runtime.get('sequenceNumber', '?')}"
        if isinstance(inner, dict):
            line += (
                f", {inner.get('operation', '?')} {inner.get('status', '?')}"
                f" {_message(inner.get('formattedMessage'))!r}"
            )
        elif handler.get("formattedMessage"):
            line += f" {_message(handler.get('formattedMessage'))!r}"
        lines.append(line)
    return lines
