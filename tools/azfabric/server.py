"""The emulated fabric: four HTTP servers on loopback sharing one VM state.

``Fabric(scenario).start()`` binds the WireServer, the HostGAPlugin, IMDS and
a blob store, each on 127.0.0.1 (port 0 picks a free port), and serves them
from threads until ``stop()``. Tests drive it from Python (``fabric.requests``,
``fabric.health_reports``, ``fabric.new_incarnation()``); ``tools/fabric
serve`` runs it as a process.

Documents that the platform sends are built by azagent's own protocol
modules where azagent has one (one definition of each document).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, quote, urlsplit

from azagent import wireserver
from azagent.redact import redact
from azfabric import documents
from azfabric.scenario import (
    Extension,
    ExtensionConfig,
    ExtensionVersion,
    Fault,
    Scenario,
    TimelineEvent,
    add_protected_settings_certificates,
    materialize,
)
from azfabric.status import EnvelopeError, StatusUpload, decode_blob, decode_envelope, is_whole

MAX_BODY = 8 * 1024 * 1024
# Faults that send the headers and half the body, then misbehave.
BODY_FAULTS = ("stall", "reset", "truncate")
TRICKLE_PIECES = 50
Response = tuple[int, dict[str, str], bytes]


@dataclass
class Request:
    """One request as the emulator received it."""

    time: float
    endpoint: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    fault: Optional[str] = None
    status_upload: Optional[dict[str, Any]] = None  # the decoded status it completed
    response_bytes: int = 0  # the answer's size on the wire: status line, headers, body

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    def printable(self) -> dict[str, Any]:
        """A JSON-able view with secrets redacted (SAS tokens, passwords, keys)."""
        headers = {
            k: ("<redacted>" if k.lower() == "x-ms-guest-agent-public-x509-cert" else redact(v))
            for k, v in self.headers.items()
        }
        entry = {
            "time": self.time,
            "endpoint": self.endpoint,
            "method": self.method,
            "path": redact(self.path),
            "status": self.status,
            "fault": self.fault,
            "headers": headers,
            "body": redact(self.body.decode("utf-8", "replace")),
            "response_bytes": self.response_bytes,
        }
        if self.status_upload is not None:
            entry["status_upload"] = self.status_upload
        return entry


@dataclass
class Blob:
    kind: str  # BlockBlob or PageBlob
    data: bytearray = field(default_factory=bytearray)
    writes: int = 0


class _FaultState:
    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.pattern = re.compile(fault.path)
        self.seen = 0
        self.hit = 0

    def applies(self, endpoint: str, target: str) -> bool:
        """Count a matching request and say whether this one is hit."""
        if endpoint != self.fault.endpoint or not self.pattern.search(target):
            return False
        self.seen += 1
        if self.seen <= self.fault.skip or self.hit >= self.fault.count:
            return False
        self.hit += 1
        return True


class _Server(ThreadingHTTPServer):
    """One endpoint's server; it can stop accepting connections for a while (a blackhole).

    A blackhole shrinks the listen backlog to nothing and fills it with one
    connection of its own, which is never accepted until the blackhole ends:
    the kernel then drops every new SYN, so a client's connect times out, as
    with an address that does not answer. Loopback only, never a real address.
    """

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[FabricHandler], stop: threading.Event
    ) -> None:
        super().__init__(address, handler)
        self._stop = stop
        self._gate = threading.Lock()
        self._closed_until = 0.0
        self._fillers: list[socket.socket] = []

    def blackhole(self, seconds: float) -> None:
        """Accept no connection for ``seconds`` (at least: until the serving loop sees it end)."""
        with self._gate:
            self._closed_until = max(self._closed_until, time.monotonic() + seconds)
            if self._fillers:
                return
            self.socket.listen(0)
            filler = socket.socket(self.socket.family, socket.SOCK_STREAM)
            filler.settimeout(1.0)
            with contextlib.suppress(OSError):  # the backlog is full already
                filler.connect(self.server_address[:2])
            self._fillers.append(filler)

    def get_request(self) -> tuple[socket.socket, Any]:
        # The serving loop calls this when a connection waits: during a
        # blackhole it waits here, so that the backlog stays full.
        while True:
            with self._gate:
                if time.monotonic() >= self._closed_until:
                    if self._fillers:
                        self.socket.listen(self.request_queue_size)
                        for filler in self._fillers:
                            filler.close()
                        self._fillers.clear()
                    return self.socket.accept()
                left = self._closed_until - time.monotonic()
            if self._stop.wait(min(max(left, 0.0), 0.2)):
                raise OSError("the emulator is stopping")

    def server_close(self) -> None:
        with self._gate:
            for filler in self._fillers:
                filler.close()
            self._fillers.clear()
        super().server_close()


class Fabric:
    """The emulated platform side of one VM."""

    def __init__(
        self,
        scenario: Optional[Scenario] = None,
        *,
        host: str = "127.0.0.1",
        ports: Optional[dict[str, int]] = None,
        advertise: Optional[dict[str, str]] = None,
        log_path: Optional[Path] = None,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
            raise ValueError("the emulator listens on loopback only")
        self.scenario = materialize(scenario or Scenario())
        self.host = host
        self._ports = dict(ports or {})
        self._advertise = dict(advertise or {})
        self._log_path = log_path
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.requests: list[Request] = []
        self.health_reports: list[wireserver.HealthReport] = []
        self.role_properties: list[bytes] = []
        self.telemetry: list[bytes] = []
        self.health_service: list[dict[str, Any]] = []  # WALinuxAgent's /HealthService reports
        self.blobs: dict[str, Blob] = {}
        self.status_uploads: list[StatusUpload] = []
        # Encrypted protected settings by (extension, config, seq, thumbprint, content).
        self.sealed: dict[tuple[str, str, int, str, str], str] = {}
        self.incarnation = self.scenario.incarnation
        self.container_id = self.scenario.container_id or str(uuid.uuid4())
        self.extensions: list[Extension] = list(self.scenario.extensions)
        self.vm_settings_etag = 1
        self._faults = [_FaultState(f) for f in self.scenario.faults]
        self._timeline = list(self.scenario.timeline)
        self._started_at = 0.0
        self._goal_state_time = time.time()
        self.artifacts = documents.Artifacts()

    # -- life cycle -------------------------------------------------------

    def start(self) -> Fabric:
        handlers: dict[str, Callable[[FabricHandler], Response]] = {
            "wireserver": self._wireserver,
            "hostgaplugin": self._hostgaplugin,
            "imds": self._imds,
            "blob": self._blob,
        }
        for name, route in handlers.items():
            handler = type(
                f"{name}Handler",
                (FabricHandler,),
                {"fabric": self, "endpoint": name, "route": staticmethod(route)},
            )
            self._servers[name] = _Server(
                (self.host, self._ports.get(name, 0)), handler, self._stop
            )
        try:
            self.artifacts.publish(self)
        except Exception:  # a package that cannot be read: nothing keeps listening
            for server in self._servers.values():
                server.server_close()
            raise
        for server in self._servers.values():
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._started_at = time.monotonic()
        if any(event.after_seconds is not None for event in self._timeline):
            clock = threading.Thread(target=self._run_clock, daemon=True)
            clock.start()
            self._threads.append(clock)
        return self

    def stop(self) -> None:
        self._stop.set()
        # All at once: each serving loop notices only at its next poll.
        stoppers = [threading.Thread(target=s.shutdown) for s in self._servers.values()]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for server in self._servers.values():
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Fabric:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def listening(self) -> dict[str, str]:
        """Where the four endpoints listen on this machine."""
        urls = {}
        for name, server in self._servers.items():
            host, port = server.server_address[:2]
            host = host.decode() if isinstance(host, bytes) else host
            urls[name] = f"http://{host}:{port}"
        return urls

    @property
    def urls(self) -> dict[str, str]:
        """Base URLs of the four endpoints as a client reaches them (--advertise wins)."""
        return {**self.listening, **self._advertise}

    def base_url(self, endpoint: str, handler: Optional[FabricHandler] = None) -> str:
        """The URL the client used for ``endpoint`` (its Host header), else ours."""
        if endpoint in self._advertise:
            return self._advertise[endpoint]
        if handler is not None and handler.endpoint == endpoint:
            host = handler.headers.get("Host")
            if host and re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", host):
                return f"http://{host}"
        return self.urls[endpoint]

    # -- goal state changes ----------------------------------------------

    @property
    def goal_state_ticks(self) -> int:
        """When the current goal state was made, in .NET ticks (100 ns since year 1)."""
        return 621355968000000000 + int(self._goal_state_time * 10_000_000)

    def new_incarnation(self) -> int:
        with self._changed:
            self.incarnation += 1
            self.vm_settings_etag += 1
            self._goal_state_time = time.time()
            self._changed.notify_all()
            return self.incarnation

    def new_container(self) -> str:
        with self._changed:
            self.container_id = str(uuid.uuid4())
            self.new_incarnation()
            return self.container_id

    def rotate_certificate(self) -> None:
        from azfabric import keys

        with self._changed:
            for i, certificate in enumerate(self.scenario.certificates):
                fresh = keys.generate_certificate(certificate.name)
                old = keys.thumbprint_of(certificate)
                certificate.cert_pem, certificate.key_pem = fresh.cert_pem, fresh.key_pem
                new = keys.thumbprint_of(certificate)
                for pair in self.scenario.key_pairs:
                    if pair.fingerprint == old:
                        pair.fingerprint = new
                for public in self.scenario.public_keys:
                    if public.fingerprint == old:
                        public.fingerprint = new
                self.scenario.certificates[i] = certificate
            self.new_incarnation()

    def add_extension(self, extension: Extension) -> None:
        with self._changed:
            self.extensions = [e for e in self.extensions if e.name != extension.name]
            self.extensions.append(extension)
            add_protected_settings_certificates(self.scenario, self.extensions)
            self.artifacts.publish(self)
            self.new_incarnation()

    def remove_extension(self, name: str) -> None:
        """The handler vanishes from the goal state (as opposed to ``state`` uninstall)."""
        with self._changed:
            self.extensions = [e for e in self.extensions if e.name != name]
            self.new_incarnation()

    def extension(self, name: str) -> Extension:
        for extension in self.extensions:
            if extension.name == name:
                return extension
        raise KeyError(f"no extension {name} in the goal state")

    def _target(self, name: str, config: Optional[str]) -> Extension | ExtensionConfig:
        extension = self.extension(name)
        if config is None:
            return extension
        for candidate in extension.configs:
            if candidate.name == config:
                return candidate
        raise KeyError(f"extension {name} has no config {config}")

    def new_settings(
        self,
        name: str,
        *,
        config: Optional[str] = None,
        public_settings: Optional[dict[str, Any]] = None,
        protected_settings: Optional[dict[str, Any]] = None,
    ) -> int:
        """Sequence number + 1, with the settings given (the others unchanged); the new number."""
        with self._changed:
            target = self._target(name, config)
            target.seq_no += 1
            if public_settings is not None:
                target.public_settings = public_settings
            if protected_settings is not None:
                target.protected_settings = protected_settings
                add_protected_settings_certificates(self.scenario, self.extensions)
            self.new_incarnation()
            return target.seq_no

    def update_version(self, name: str, version: str) -> None:
        """Request ``version``; the manifest gains it (with the handler's package) if unlisted."""
        with self._changed:
            extension = self.extension(name)
            listed = extension.manifest_versions()
            if not any(v.version == version or v.version.startswith(f"{version}.") for v in listed):
                listed.append(ExtensionVersion(version, extension.package, dict(extension.files)))
            extension.versions = listed
            extension.version = version
            self.artifacts.publish(self)
            self.new_incarnation()

    def set_extension_state(self, name: str, state: str, *, config: Optional[str] = None) -> None:
        """enabled, disabled, or uninstall (how the platform removes an extension)."""
        if state not in ("enabled", "disabled", "uninstall"):
            raise ValueError(f"not an extension state: {state}")
        with self._changed:
            self._target(name, config).state = state
            self.new_incarnation()

    def _apply(self, event: TimelineEvent) -> None:
        if event.action == "new_incarnation":
            self.new_incarnation()
        elif event.action == "new_container":
            self.new_container()
        elif event.action == "rotate_certificate":
            self.rotate_certificate()
        elif event.action == "add_extension" and event.extension is not None:
            self.add_extension(event.extension)
        elif event.action == "remove_extension" and event.name:
            self.remove_extension(event.name)
        elif event.action == "new_settings" and event.name:
            self.new_settings(
                event.name,
                config=event.config,
                public_settings=event.public_settings,
                protected_settings=event.protected_settings,
            )
        elif event.action == "update_version" and event.name and event.version:
            self.update_version(event.name, event.version)
        elif event.action == "set_state" and event.name and event.state:
            self.set_extension_state(event.name, event.state, config=event.config)

    def _run_clock(self) -> None:
        pending = sorted(
            (e for e in self._timeline if e.after_seconds is not None),
            key=lambda e: float(e.after_seconds or 0),
        )
        for event in pending:
            due = self._started_at + float(event.after_seconds or 0)
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            self._apply(event)

    def _after_health_report(self) -> None:
        count = len(self.health_reports)
        for event in self._timeline:
            if event.after_health_reports == count:
                self._apply(event)

    def _after_status_upload(self) -> None:
        count = len(self.status_uploads)
        for event in self._timeline:
            if event.after_status_uploads == count:
                self._apply(event)

    # -- observation ------------------------------------------------------

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate()`` holds (checked on every request), at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))
        return True

    def record(self, request: Request) -> None:
        with self._changed:
            self.requests.append(request)
            if self._log_path is not None:
                with open(self._log_path, "a", encoding="utf-8") as log:
                    log.write(json.dumps(request.printable()) + "\n")
            self._changed.notify_all()

    def idle(self, seconds: float) -> bool:
        """Wait ``seconds``, or until the emulator stops (a stalled answer must not keep it up).

        True when it stopped.
        """
        return self._stop.wait(seconds)

    def blackhole(self, endpoint: str, seconds: float) -> None:
        """Let ``endpoint`` accept no connection for ``seconds``: clients' connects time out."""
        self._servers[endpoint].blackhole(seconds)

    def fault_for(self, endpoint: str, target: str) -> Optional[Fault]:
        with self._lock:
            for state in self._faults:
                if state.applies(endpoint, target):
                    return state.fault
        return None

    # -- WireServer -------------------------------------------------------

    def _wireserver(self, h: FabricHandler) -> Response:
        url = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        comp = query.get("comp", "")
        if url.path == "/" and comp == "versions":
            return 200, _XML, wireserver.versions_xml()
        if h.command == "POST" and url.path.lower() == "/healthservice":
            # WALinuxAgent's HostGAPlugin observations: JSON, without the WireServer headers.
            return self._health_service(h.body)
        if h.headers.get("x-ms-version") is None:
            return _error(400, "x-ms-version header is required")
        if h.headers.get("x-ms-agent-name") is None:
            return _error(400, "x-ms-agent-name header is required")
        path = url.path.rstrip("/")
        with self._lock:
            if h.command == "GET" and path == "/machine" and comp == "goalstate":
                return 200, _XML, wireserver.goal_state_xml(self._goal_state(h))
            if h.command == "POST" and path == "/machine" and comp == "health":
                return self._health(h.body)
            if h.command == "POST" and path == "/machine" and comp == "roleProperties":
                self.role_properties.append(h.body)
                return 202, {}, b""
            if h.command == "POST" and path == "/machine" and comp == "telemetrydata":
                self.telemetry.append(h.body)
                return 200, {}, b""
            prefix = f"/machine/{self.container_id}/{quote(self.scenario.role_instance)}"
            if h.command == "GET" and path == prefix:
                if query.get("incarnation") not in (None, str(self.incarnation)):
                    return _error(410, "stale incarnation")
                if comp == "certificates":
                    return self._certificates(h)
                if comp == "config":
                    return self._config(h, query.get("type", ""))
            if h.command == "GET" and path.startswith("/machine/"):
                return _error(410, "unknown or stale container")
        return _error(404, "not found")

    def _goal_state(self, h: FabricHandler) -> wireserver.GoalState:
        role = quote(self.scenario.role_instance)
        base = f"{self.base_url('wireserver', h)}/machine/{self.container_id}/{role}"
        n = self.incarnation

        def config(kind: str) -> str:
            return f"{base}?comp=config&type={kind}&incarnation={n}"

        return wireserver.GoalState(
            incarnation=n,
            container_id=self.container_id,
            instance_id=self.scenario.role_instance,
            uris=wireserver.ConfigUris(
                hosting_environment=config("hostingEnvironmentConfig"),
                shared_config=config("sharedConfig"),
                extensions_config=config("extensionsConfig")
                if self.scenario.provision_guest_agent
                else None,
                full_config=config("fullConfig"),
                certificates=f"{base}?comp=certificates&incarnation={n}"
                if self.scenario.certificates
                else None,
                config_name=f"{self.deployment}.{n}.{self.deployment}.{n}.{self.scenario.role_instance}.1.xml",
            ),
        )

    @property
    def deployment(self) -> str:
        return (self.scenario.vm_id or "vm").replace("-", "")

    def _config(self, h: FabricHandler, kind: str) -> Response:
        n, instance = self.incarnation, self.scenario.role_instance
        if kind == "hostingEnvironmentConfig":
            from azfabric import keys

            thumbprints = tuple(keys.thumbprint_of(c) for c in self.scenario.certificates)
            body = wireserver.hosting_environment_xml(n, instance, thumbprints)
        elif kind in ("sharedConfig", "fullConfig"):
            body = wireserver.shared_config_xml(n, instance, self.scenario.private_address)
        elif kind == "extensionsConfig" and self.scenario.provision_guest_agent:
            body = documents.extensions_config(self, h)
        else:
            return _error(404, "no such configuration")
        return 200, _XML, body

    def _certificates(self, h: FabricHandler) -> Response:
        header = h.headers.get("x-ms-guest-agent-public-x509-cert")
        if not header:
            return _error(400, "x-ms-guest-agent-public-x509-cert header is required")
        cipher = (h.headers.get("x-ms-cipher-name") or "").upper()
        try:
            body = documents.certificates(self, header, cipher)
        except ValueError:
            return _error(400, "the transport certificate is not a base64 DER certificate")
        return 200, _XML, body

    def _health(self, body: bytes) -> Response:
        try:
            report = documents.parse_health(body)
        except ValueError:
            return _error(400, "malformed health report")
        if report.incarnation != self.incarnation or report.container_id != self.container_id:
            return _error(410, "stale goal state")
        self.health_reports.append(report)
        self._after_health_report()
        return 200, {}, b""

    def _health_service(self, body: bytes) -> Response:
        try:
            document = json.loads(body)
            valid = isinstance(document, dict) and isinstance(document.get("Observations"), list)
        except (UnicodeDecodeError, json.JSONDecodeError):
            valid = False
        if not valid:
            return _error(400, "malformed health observations")
        with self._changed:
            self.health_service.append(document)
        return 200, {}, b""

    # -- HostGAPlugin -----------------------------------------------------

    def _hostgaplugin(self, h: FabricHandler) -> Response:
        url = urlsplit(h.path)
        if h.command == "GET" and url.path == "/versions":
            return 200, _JSON, json.dumps(["2015-09-01", "2015-08-01"]).encode()
        if h.command == "GET" and url.path == "/health":
            return 200, {}, b""
        for header in ("x-ms-version", "x-ms-containerid", "x-ms-host-config-name"):
            if h.headers.get(header) is None:
                return _error(400, f"{header} header is required")
        with self._lock:
            if h.headers.get("x-ms-containerid") != self.container_id:
                return _error(410, "unknown container")
            if h.command == "GET" and url.path == "/vmSettings":
                etag = str(self.vm_settings_etag)
                if h.headers.get("if-none-match") == etag:
                    return 304, {"ETag": etag}, b""
                return 200, {**_JSON, "ETag": etag}, documents.vm_settings(self)
            if h.command == "PUT" and url.path == "/status":
                return self._hgap_status(h)
            if h.command == "GET" and url.path == "/extensionArtifact":
                location = h.headers.get("x-ms-artifact-location") or ""
                blob = self.artifacts.lookup(self, location)
                if blob is None:
                    return _error(404, "artifact not found")
                return 200, {"Content-Type": "application/octet-stream"}, blob
        return _error(404, "not found")

    def _hgap_status(self, h: FabricHandler) -> Response:
        try:
            envelope = decode_envelope(h.body)
        except EnvelopeError:
            return _error(400, "malformed status request")
        target = urlsplit(envelope.request_uri)
        response, upload = self._blob_put(
            target.path, target.query, envelope.headers, envelope.content, via="hostgaplugin"
        )
        h.status_upload = upload
        return response

    # -- blob store -------------------------------------------------------

    def _blob(self, h: FabricHandler) -> Response:
        url = urlsplit(h.path)
        with self._lock:
            if h.command == "GET":
                data = self.artifacts.files.get(url.path)
                if data is not None:
                    return 200, {"Content-Type": "application/octet-stream"}, data
                blob = self.blobs.get(url.path)
                if blob is not None:
                    return 200, {"x-ms-blob-type": blob.kind}, bytes(blob.data)
                return _error(404, "BlobNotFound")
            if h.command == "PUT":
                response, upload = self._blob_put(
                    url.path, url.query, dict(h.headers.items()), h.body, via="direct"
                )
                h.status_upload = upload
                return response
        return _error(405, "method not allowed")

    def _blob_put(
        self, path: str, query_text: str, headers: dict[str, str], body: bytes, *, via: str
    ) -> tuple[Response, Optional[StatusUpload]]:
        """Store a blob write; a status blob that holds a whole document is a status upload."""
        with self._changed:
            response = self._blob_write(path, query_text, headers, body)
            if response[0] != 201 or not path.startswith(documents.STATUS_PATH):
                return response, None
            blob = self.blobs[path]
            if blob.writes == 0 or not is_whole(blob.kind, bytes(blob.data)):
                return response, None  # a page blob just created, or not all pages yet
            content, document, error = decode_blob(blob.kind, bytes(blob.data))
            upload = StatusUpload(time.time(), via, blob.kind, path, content, document, error)
            self.status_uploads.append(upload)
            self._after_status_upload()
            self._changed.notify_all()
        return response, upload

    def _blob_write(
        self, path: str, query_text: str, headers: dict[str, str], body: bytes
    ) -> Response:
        lower = {k.lower(): v for k, v in headers.items()}
        query = {k: v[-1] for k, v in parse_qs(query_text).items()}
        if "sig" not in query:
            return _error(403, "AuthenticationFailed: a SAS signature is required")
        with self._changed:
            if query.get("comp") == "page":
                blob = self.blobs.get(path)
                if blob is None or blob.kind != "PageBlob":
                    return _error(404, "BlobNotFound")
                match = re.fullmatch(
                    r"bytes=(\d+)-(\d+)", lower.get("x-ms-range", lower.get("range", ""))
                )
                if match is None:
                    return _error(400, "x-ms-range is required")
                start, end = int(match.group(1)), int(match.group(2))
                if start % 512 or (end + 1) % 512 or end < start or len(body) != end - start + 1:
                    return _error(400, "InvalidPageRange: pages are 512-byte aligned")
                if end >= len(blob.data):
                    return _error(416, "InvalidPageRange: beyond the blob's size")
                blob.data[start : end + 1] = body
                blob.writes += 1
                self._changed.notify_all()
                return 201, {}, b""
            kind = lower.get("x-ms-blob-type")
            if kind == "BlockBlob":
                self.blobs[path] = Blob("BlockBlob", bytearray(body), 1)
            elif kind == "PageBlob":
                size = int(lower.get("x-ms-blob-content-length", "-1") or -1)
                if size < 0 or size % 512 or body:
                    return _error(400, "a page blob is created empty with a 512-aligned length")
                self.blobs[path] = Blob("PageBlob", bytearray(size), 0)
            else:
                return _error(400, "x-ms-blob-type must be BlockBlob or PageBlob")
            self._changed.notify_all()
        return 201, {}, b""

    # -- IMDS -------------------------------------------------------------

    def _imds(self, h: FabricHandler) -> Response:
        url = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if h.headers.get("Metadata", "").lower() != "true":
            return 400, _JSON, b'{"error": "Bad request. Required metadata header not specified"}'
        if h.headers.get("X-Forwarded-For") is not None:
            return 400, _JSON, b'{"error": "Bad request. Requests through a proxy are refused"}'
        if "api-version" not in query:
            return 400, _JSON, b'{"error": "Bad request. api-version was not specified"}'
        parts = [p for p in url.path.split("/") if p]
        if parts[:2] != ["metadata", "instance"]:
            return 404, _JSON, b'{"error": "Not found"}'
        node: Any = documents.imds_instance(self)
        for part in parts[2:]:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return 404, _JSON, b'{"error": "Not found"}'
        if query.get("format") == "text" and not isinstance(node, (dict, list)):
            return 200, {"Content-Type": "text/plain"}, str(node).encode()
        return 200, _JSON, json.dumps(node).encode()


_XML = {"Content-Type": "text/xml; charset=utf-8"}
_JSON = {"Content-Type": "application/json; charset=utf-8"}


def _error(status: int, message: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{status}</Code><Message>{message}</Message></Error>"
    )
    return status, _XML, body.encode()


class FabricHandler(BaseHTTPRequestHandler):
    """Records the request, applies a fault if one is due, then routes it."""

    fabric: Fabric
    endpoint: str
    route: Callable[[FabricHandler], Response]
    protocol_version = "HTTP/1.1"
    server_version = "azagent-fabric-emulator"
    body = b""
    status_upload: Optional[StatusUpload] = None  # set by the route that completed one

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log replaces stderr chatter

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {}, b"")
            return
        self.body = self.rfile.read(length) if length > 0 else b""
        request = Request(
            time.time(),
            self.endpoint,
            self.command,
            self.path,
            dict(self.headers.items()),
            self.body,
        )
        fault = self.fabric.fault_for(self.endpoint, self._fault_target())
        if fault is not None:
            request.fault = fault.kind
        # The request is recorded before the answer goes out, so a client that
        # has its answer always finds its request in the log.
        if fault is not None and fault.kind in ("drop", "hang", "blackhole"):
            self.fabric.record(request)
            self.close_connection = True
            if fault.kind == "hang":
                self.fabric.idle(fault.seconds)
            elif fault.kind == "blackhole":
                self.fabric.blackhole(self.endpoint, fault.seconds)
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.kind == "status":
            status, headers, body = fault.status, _XML, _error(fault.status, "injected fault")[2]
            if fault.retry_after is not None:
                headers = {**headers, "Retry-After": fault.retry_after}
        else:
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.seconds)
            try:
                status, headers, body = self.route(self)
            except Exception:  # a bug in the emulator: say so instead of hanging up
                import traceback

                traceback.print_exc()
                status, headers, body = _error(500, "emulator error")
            if fault is not None and fault.kind == "garbage":
                # The request took effect; its answer is garbled.
                status, headers, body = 200, _XML, b"\x00\xffgarbage<<<" + bytes(range(256))
        request.status = status
        request.response_bytes = len(self._head(status, headers, body)) + (
            len(body) if self.command != "HEAD" and status != HTTPStatus.NOT_MODIFIED else 0
        )
        # What the route completed belongs to this request alone (connections are kept alive).
        upload, self.status_upload = self.status_upload, None
        if upload is not None:
            request.status_upload = upload.printable()
        self.fabric.record(request)
        try:
            if fault is not None and fault.kind == "trickle":
                self._trickle(status, headers, body, fault.seconds)
            elif fault is not None and fault.kind in BODY_FAULTS:
                self._break_body(fault, status, headers, body)
            else:
                self._send(status, headers, body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _fault_target(self) -> str:
        """What fault patterns search: ``METHOD path?query``, and the artifact it asks for.

        A HostGAPlugin extensionArtifact request names its artifact in a
        header, so ``extensionArtifact.*\\.zip`` can target the package alone.
        """
        target = f"{self.command} {self.path}"
        location = self.headers.get("x-ms-artifact-location")
        if self.endpoint == "hostgaplugin" and location:
            target += f" {location}"
        return target

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status != HTTPStatus.NOT_MODIFIED:
            self.wfile.write(body)

    def _head(self, status: int, headers: dict[str, str], body: bytes) -> bytes:
        """The status line and headers of an answer, as :meth:`_send` sends them."""
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        lines = [
            f"{self.protocol_version} {status} {phrase}",
            f"Server: {self.version_string()}",
            f"Date: {self.date_time_string()}",
            *(f"{name}: {value}" for name, value in headers.items()),
            f"Content-Length: {len(body)}",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _trickle(self, status: int, headers: dict[str, str], body: bytes, seconds: float) -> None:
        """Send the whole answer, headers too, in 50 pieces spread over ``seconds``.

        The headers are part of it, so that an answer without a body trickles as well.
        """
        head = self._head(status, headers, body)
        answer = head + (body if self.command != "HEAD" else b"")
        size = max(1, -(-len(answer) // TRICKLE_PIECES))
        pieces = [answer[i : i + size] for i in range(0, len(answer), size)]
        for piece in pieces:
            if self.fabric.idle(seconds / len(pieces)):
                return
            self.wfile.write(piece)
            self.wfile.flush()

    def _break_body(self, fault: Fault, status: int, headers: dict[str, str], body: bytes) -> None:
        """Headers announcing the whole body, part of it, then a stall, a reset or a close.

        ``body_bytes`` of the body go out first (default: half; 0: none). A
        body-less answer announces one byte, so that the client waits for
        something either way.
        """
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) or 1))
        self.end_headers()
        sent = len(body) // 2 if fault.body_bytes is None else min(fault.body_bytes, len(body))
        self.wfile.write(body[:sent])
        self.wfile.flush()
        self.close_connection = True
        if fault.kind == "stall":
            self.fabric.idle(fault.seconds)
        elif fault.kind == "reset":
            # SO_LINGER on with a zero timeout: close() sends RST, not FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
