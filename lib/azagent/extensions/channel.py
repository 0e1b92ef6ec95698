"""The extension handler's side of the fabric: goal-state documents in, status out.

:class:`Fabric` asks the HostGAPlugin for vmSettings with ``If-None-Match``
(304: unchanged; 404: not served, asked again hours later; 410: the
container changed) and fetches the WireServer's goal state (and
ExtensionsConfig, again only when the incarnation changed) only when it
needs it: on the first pass, when vmSettings is not served or fails, names
the Fabric source (ExtensionsConfig rules then) or changed (a new goal state
may come with new certificates, which only the WireServer's goal state
names). An idle pass on a host that serves vmSettings is one request, a 304.
It fetches the goal state's certificates into the certificate store, and
uploads the status blob through the HostGAPlugin's ``/status``, else
directly to its SAS URL.
Every client is made per pass with a short retry deadline: a fabric that
fails is retried on the next pass.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from azagent.context import Context
from azagent.errors import AzagentError
from azagent.extensions import goalstate, status
from azagent.extensions.goalstate import ExtensionsGoalState
from azagent.journal import log

if TYPE_CHECKING:
    from azagent.transport import Transport
    from azagent.wireclient import WireClient
    from azagent.wireserver import GoalState


VM_SETTINGS_RETRY = 6 * 3600.0  # after a 404, ask the HostGAPlugin again this much later
GONE = "gone"  # vmSettings: 410, the container changed


class Fabric:
    """The goal-state documents of the WireServer and the HostGAPlugin, and status upload."""

    def __init__(self, ctx: Context, *, deadline: float = 30.0) -> None:
        self.ctx = ctx
        self.deadline = deadline
        self.wire_goal: Optional[GoalState] = None
        self.extensions_config: Optional[ExtensionsGoalState] = None
        self.vm_settings: Optional[ExtensionsGoalState] = None
        self.vm_settings_etag: Optional[str] = None
        self.vm_settings_retry_at = 0.0
        self.wire_due = False  # the WireServer's goal state is to be fetched next pass
        self._http: Optional[Transport] = None

    def client(self, name: str) -> WireClient:
        from azagent import wireclient
        from azagent.transport import Transport

        if self._http is None:
            self._http = Transport.from_context(self.ctx)
        return wireclient.WireClient(
            wireclient.platform_url(self.ctx, name),
            timeout=float(self.ctx.config.get_int("Endpoint.RequestTimeout") or 10),
            deadline=self.deadline,
            endpoint=wireclient.ENDPOINTS[name],
            http=self._http,
        )

    def hgap_headers(self) -> dict[str, str]:
        goal = self.wire_goal
        assert goal is not None
        return {
            "x-ms-containerid": goal.container_id,
            "x-ms-host-config-name": goal.uris.config_name,
        }

    def refresh(
        self,
    ) -> tuple[Optional[ExtensionsGoalState], Optional[ExtensionsGoalState]]:
        """ExtensionsConfig and vmSettings, fetched again only when they changed.

        The WireServer's goal state is fetched at most once a pass, and only when
        vmSettings cannot stand alone (see the module's description)."""
        fetched = False
        if self.wire_goal is None or self.wire_due or time.monotonic() < self.vm_settings_retry_at:
            self._refresh_wire()
            fetched = True
        if time.monotonic() >= self.vm_settings_retry_at:
            needs = self._refresh_vm_settings()
            if needs is not None:
                # Until fetched: a pass whose WireServer request fails tries again next pass.
                self.wire_due = True
                if not fetched:
                    self._refresh_wire()
                elif needs != GONE:
                    self.wire_due = False
        return self.extensions_config, self.vm_settings

    def _refresh_wire(self) -> None:
        """The WireServer's goal state; ExtensionsConfig when the incarnation changed."""
        wire = self.client("WireServer")
        goal = wire.goal_state()
        if (
            self.wire_goal is None
            or goal.incarnation != self.wire_goal.incarnation
            or self.extensions_config is None
        ):
            uri = goal.uris.extensions_config
            self.extensions_config = (
                goalstate.parse_extensions_config(wire.document(uri), goal.incarnation)
                if uri
                else None
            )
        self.wire_goal = goal
        self.wire_due = False

    def _refresh_vm_settings(self) -> Optional[str]:
        """vmSettings, asked with If-None-Match. Why the WireServer's goal state is needed
        as well (None: it is not): vmSettings failed, is not served, names the Fabric
        source (ExtensionsConfig rules), or changed (its certificates: only the
        WireServer's goal state names them); GONE: the container changed."""
        from azagent import wireclient

        headers = self.hgap_headers()
        if self.vm_settings is not None and self.vm_settings_etag:
            headers["If-None-Match"] = self.vm_settings_etag
        hgap = self.client("HostGAPlugin")
        try:
            reply = hgap.request(
                "GET",
                f"{hgap.base_url}/vmSettings",
                headers=headers,
                accept=(200, 304, 404),
            )
        except wireclient.GoneError:
            log.info("vmSettings: the container changed; the goal state is fetched again")
            return GONE
        except AzagentError as e:
            log.info("vmSettings unavailable this pass (%s)", e)
            return "failed"
        if reply.status == 304:
            if self.vm_settings is None or self.vm_settings.source == goalstate.FABRIC:
                return "fabric"
            return None
        if reply.status == 404:
            log.info("the HostGAPlugin serves no vmSettings: using the WireServer's goal state")
            self.vm_settings = None
            self.vm_settings_retry_at = time.monotonic() + VM_SETTINGS_RETRY
            return "unsupported"
        etag = reply.header("etag") or ""
        try:
            self.vm_settings = goalstate.parse_vm_settings(reply.body, etag)
        except goalstate.GoalStateError as e:
            log.warning("vmSettings ignored: %s", e)
            return "failed"
        self.vm_settings_etag = etag
        return "changed"

    def fetch_certificates(self) -> None:
        """The goal state's certificates into the store, fetched by a forked child
        (azagent.extensions.forked): cryptography is never imported in this process."""
        from azagent.extensions import forked

        def fetch() -> None:
            from azagent.certstore import CertStore

            CertStore.of(self.ctx).fetch_all(self.client("WireServer"), self.wire_goal)

        forked.call(fetch, what="fetching the goal state's certificates")

    def upload(self, requests: tuple[status.BlobRequest, ...]) -> str:
        """PUT the status blob; through the HostGAPlugin, else directly. How it went up."""
        try:
            if self.wire_goal is None:
                raise AzagentError("no goal state (container id) to address the HostGAPlugin")
            hgap = self.client("HostGAPlugin")
            headers = {**self.hgap_headers(), "Content-Type": "application/json"}
            for request in requests:
                hgap.request(
                    "PUT",
                    f"{hgap.base_url}/status",
                    body=status.hostgaplugin_envelope(request),
                    headers=headers,
                    accept=(200, 201),
                )
            return "hostgaplugin"
        except AzagentError as e:
            log.info(
                "status upload through the HostGAPlugin failed (%s); uploading directly",
                e,
            )
        from azagent.transport import BLOB, Transport

        if self._http is None:
            self._http = Transport.from_context(self.ctx)
        for request in requests:
            reply = self._http.request(
                "PUT",
                request.url,
                endpoint=BLOB,
                body=request.body,
                headers=dict(request.headers),
            )
            if reply.status not in (200, 201):
                raise AzagentError(f"PUT {request.redacted_url}: HTTP {reply.status}")
        return "direct"
