"""A thin HTTP client for the WireServer, with the platform's retry rules.

Only stages that talk to the platform import this module (it imports
requests). Every request goes direct (never through a proxy), carries the
headers the WireServer requires, and is retried on transient failures
(connection errors, timeouts, 429, 5xx, 507; 403 is throttling) with bounded
back-off until ``Endpoint.RetryDeadline`` runs out. A 410 means the goal
state moved on: :meth:`WireClient.report_health` refetches it and resends.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import requests

from azagent import __version__, wireserver
from azagent.context import Context
from azagent.errors import AzagentError
from azagent.redact import redact

log = logging.getLogger("azagent")

AGENT_NAME = "azagent"
TRANSIENT = frozenset({403, 408, 429, 500, 502, 503, 504, 507})
GONE = 410
MAX_DOCUMENT = 4 * 1024 * 1024
FIRST_DELAY = 0.5
MAX_DELAY = 5.0


class WireServerError(AzagentError):
    """The WireServer could not be reached or kept refusing; the reason says how."""


class GoneError(WireServerError):
    """410: the goal state (incarnation or container) changed."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


def platform_url(ctx: Context, name: str) -> str:
    """The base URL to send requests to, for endpoint ``name``.

    An image tree or a test (--root other than /) is not the VM: it never
    sends a packet to the platform's real addresses unless they are
    configured explicitly.
    """
    url = ctx.endpoint(name)
    if not ctx.live and ctx.config.origins[f"Endpoint.{name}"] == "default":
        raise WireServerError(
            f"Endpoint.{name} is not configured: under --root {ctx.root} azagent "
            "never talks to the platform's real address; set it in waagent.conf"
        )
    return url


class WireClient:
    """Requests to one WireServer, all under one retry deadline."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        deadline: float = 300.0,
        session: Optional[requests.Session] = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.deadline = time.monotonic() + deadline
        self._sleep = sleep
        self.session = session or requests.Session()
        # The platform endpoints are never reached through a proxy.
        self.session.trust_env = False
        self.session.proxies = {}
        self.headers = {
            "x-ms-agent-name": AGENT_NAME,
            "x-ms-version": wireserver.PROTOCOL_VERSION,
            "User-Agent": f"{AGENT_NAME}/{__version__}",
        }

    @classmethod
    def from_context(cls, ctx: Context) -> WireClient:
        return cls(
            platform_url(ctx, "WireServer"),
            timeout=float(ctx.config.get_int("Endpoint.RequestTimeout") or 10),
            deadline=float(ctx.config.get_int("Endpoint.RetryDeadline") or 300),
        )

    # -- transport --------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        body: Optional[bytes] = None,
        headers: Optional[dict[str, str]] = None,
        accept: tuple[int, ...] = (200,),
        retry: tuple[int, ...] = (),
    ) -> Reply:
        """One logical request, retried on transient failures until the deadline.

        ``retry`` adds statuses that are transient for this request (IMDS
        answers 404 and 410 while a VM's metadata is not ready).
        """
        delay = FIRST_DELAY
        attempt = 0
        all_headers = {**self.headers, **(headers or {})}
        if body is not None:
            all_headers.setdefault("Content-Type", "text/xml; charset=utf-8")
        shown = redact(url)
        while True:
            attempt += 1
            problem: str
            try:
                response = self.session.request(
                    method,
                    url,
                    data=body,
                    headers=all_headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                    stream=True,
                )
                content = response.raw.read(MAX_DOCUMENT + 1, decode_content=True)
                response.close()
                if len(content) > MAX_DOCUMENT:
                    raise WireServerError(
                        f"{method} {shown}: answer larger than {MAX_DOCUMENT} bytes"
                    )
                if response.status_code in accept:
                    return Reply(response.status_code, content)
                if response.status_code == GONE and GONE not in retry:
                    raise GoneError(f"{method} {shown}: 410 Gone")
                problem = f"HTTP {response.status_code}"
                if response.status_code not in TRANSIENT and response.status_code not in retry:
                    raise WireServerError(f"{method} {shown}: {problem}")
            except requests.Timeout:
                problem = f"no answer within {self.timeout:g} s"
            except requests.ConnectionError as e:
                problem = f"connection failed ({type(e).__name__})"
            except requests.RequestException as e:
                problem = f"request failed ({type(e).__name__})"
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise WireServerError(
                    f"{method} {shown}: {problem}; gave up after {attempt} attempt(s)"
                )
            log.info("%s %s: %s; retrying in %.1f s", method, shown, problem, min(delay, remaining))
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_DELAY)

    # -- documents --------------------------------------------------------

    def versions(self) -> wireserver.Versions:
        reply = self.request("GET", f"{self.base_url}/?comp=versions")
        versions = wireserver.parse_versions(reply.body)
        if wireserver.PROTOCOL_VERSION not in (versions.preferred, *versions.supported):
            raise WireServerError(f"the WireServer does not speak {wireserver.PROTOCOL_VERSION}")
        return versions

    def goal_state(self) -> wireserver.GoalState:
        reply = self.request("GET", f"{self.base_url}/machine/?comp=goalstate")
        return wireserver.parse_goal_state(reply.body)

    def document(self, url: str, headers: Optional[dict[str, str]] = None) -> bytes:
        return self.request("GET", url, headers=headers).body

    def report_health(
        self,
        state: str,
        substatus: Optional[str] = None,
        description: Optional[str] = None,
        goal: Optional[wireserver.GoalState] = None,
    ) -> wireserver.GoalState:
        """POST a health report for the current goal state; on 410 refetch and resend."""
        for _ in range(5):
            goal = goal or self.goal_state()
            body = wireserver.health_xml(
                wireserver.HealthReport(
                    goal.incarnation,
                    goal.container_id,
                    goal.instance_id,
                    state,
                    substatus,
                    description,
                )
            )
            try:
                self.request(
                    "POST",
                    f"{self.base_url}/machine?comp=health",
                    body=body,
                    accept=(200, 201, 202),
                )
                return goal
            except GoneError:
                log.info("the goal state changed while reporting %s; fetching it again", state)
                goal = None
        raise WireServerError("the goal state kept changing while reporting health")

    def report_role_properties(self, goal: wireserver.GoalState, thumbprint: str) -> None:
        body = wireserver.role_properties_xml(goal.container_id, goal.instance_id, thumbprint)
        self.request(
            "POST",
            f"{self.base_url}/machine?comp=roleProperties",
            body=body,
            accept=(200, 201, 202),
        )
