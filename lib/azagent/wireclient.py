"""A thin HTTP client for the WireServer, with the platform's retry rules.

Only stages that talk to the platform import this module (through
:mod:`azagent.transport`, it imports requests). Every request goes direct
(never through a proxy), carries the headers the WireServer protocol
requires, and is retried on transient failures (connection errors,
timeouts, a body cut short, 429, 5xx, 507; 403 is throttling) with bounded
back-off, never sooner than a ``Retry-After`` header asks. ``Endpoint.RequestTimeout``
bounds one exchange, body included; ``Endpoint.RetryDeadline`` bounds all of
them: the last attempt ends by it, and a ``Retry-After`` past it ends the
retries at once. A 410 means the goal state moved on:
:meth:`WireClient.for_goal_state` fetches it again and repeats what it was for.

The same rules serve IMDS and the HostGAPlugin (``endpoint=``), each with
its own headers.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from azagent import transport, wireserver
from azagent.context import Context
from azagent.errors import AzagentError
from azagent.journal import log
from azagent.redact import redact
from azagent.transport import Reply, Transport, TransportError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional, TypeVar

    import requests

    T = TypeVar("T")

AGENT_NAME = transport.AGENT_NAME
TRANSIENT = frozenset({403, 408, 429, 500, 502, 503, 504, 507})
GONE = 410
MAX_DOCUMENT = transport.MAX_BODY
FIRST_DELAY = 0.5
MAX_DELAY = 5.0
# The least time worth another attempt: the back-off leaves it before the deadline.
MIN_ATTEMPT = 0.1
# How many times a goal state that keeps moving on (410) is fetched again.
GONE_ROUNDS = 5
# Endpoint.<name> -> the transport's endpoint (its headers).
ENDPOINTS = {
    "WireServer": transport.WIRESERVER,
    "HostGAPlugin": transport.HOSTGAPLUGIN,
    "IMDS": transport.IMDS,
}

__all__ = ["GoneError", "Reply", "WireClient", "WireServerError", "platform_url", "retry_after"]


class WireServerError(AzagentError):
    """The WireServer could not be reached or kept refusing; the reason says how."""


class GoneError(WireServerError):
    """410: the goal state (incarnation or container) changed."""


def retry_after(value: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """The seconds a ``Retry-After`` header asks to wait: delta-seconds or an HTTP date.

    None when there is no header or it says neither; a date in the past is 0.
    """
    text = (value or "").strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():  # not "²": a digit to str.isdigit, not to float
        return float(text) if len(text) <= 9 else float("inf")
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def platform_url(ctx: Context, name: str, found: Optional[str] = None) -> str:
    """The base URL to send requests to, for endpoint ``name``.

    On the VM: ``found`` (an address the caller found, e.g. in a DHCP lease),
    else :meth:`Context.endpoint` (the address saved from DHCP, else the
    configured one). An image tree or a test (--root other than /) is not the
    VM: it talks only to the endpoint configured explicitly, never to one
    found or saved in the tree (a lease or /run/azagent/wireserver there
    describes some other machine) and never to the platform's real addresses.
    """
    if ctx.live:
        return found or ctx.endpoint(name)
    if ctx.config.origins[f"Endpoint.{name}"] == "default":
        raise WireServerError(
            f"Endpoint.{name} is not configured: under --root {ctx.root} azagent "
            "never talks to the platform's real address; set it in waagent.conf"
        )
    return ctx.config.required_str(f"Endpoint.{name}").rstrip("/")


class WireClient:
    """Requests to one platform endpoint, all under one retry deadline.

    ``timeout`` bounds each exchange (connect, headers, body), ``deadline``
    (seconds from now) all of them together, retries and back-off included.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        deadline: float = 300.0,
        session: Optional[requests.Session] = None,
        sleep: Callable[[float], None] = time.sleep,
        endpoint: str = transport.WIRESERVER,
        http: Optional[Transport] = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.deadline = time.monotonic() + deadline
        self._sleep = sleep
        self.endpoint = endpoint
        self.http = http or Transport(timeout=timeout, session=session)
        self.session = self.http.session

    @classmethod
    def from_context(
        cls, ctx: Context, name: str = "WireServer", url: Optional[str] = None
    ) -> WireClient:
        """A client of ``Endpoint.<name>`` (WireServer, HostGAPlugin or IMDS): see
        :func:`platform_url`, which ``url`` (an address the caller found) goes through."""
        timeout = float(ctx.config.get_int("Endpoint.RequestTimeout") or 10)
        return cls(
            platform_url(ctx, name, url),
            timeout=timeout,
            deadline=float(ctx.config.get_int("Endpoint.RetryDeadline") or 300),
            endpoint=ENDPOINTS[name],
            http=Transport.from_context(ctx),
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
        all_headers = dict(headers or {})
        if body is not None:
            all_headers.setdefault("Content-Type", "text/xml; charset=utf-8")
        # The latest problem the server caused: an attempt the retry deadline
        # cut short says only that, and must not hide why the others failed.
        cause: Optional[str] = None
        while True:
            attempt += 1
            problem: str
            asked: Optional[float] = None  # what Retry-After asks
            cut_short = False
            start = time.monotonic()
            try:
                reply = self.http.request(
                    method,
                    url,
                    endpoint=self.endpoint,
                    body=body,
                    headers=all_headers,
                    deadline=min(start + self.timeout, self.deadline),
                    max_bytes=MAX_DOCUMENT,
                )
            except TransportError as e:
                if not e.transient:
                    raise WireServerError(str(e)) from None
                shown, problem = e.request, e.problem
                cut_short = e.late and self.deadline < start + self.timeout
                if not cut_short:
                    cause = problem
            else:
                shown = f"{method} {redact(url)}"
                if reply.status in accept:
                    return reply
                if reply.status == GONE and GONE not in retry:
                    raise GoneError(f"{shown}: 410 Gone")
                problem = f"HTTP {reply.status}"
                if reply.status not in TRANSIENT and reply.status not in retry:
                    raise WireServerError(f"{shown}: {problem}")
                asked = retry_after(reply.header("retry-after"))
                if asked is not None:
                    problem += f" (retry after {asked:.3g} s)"
                cause = problem
            remaining = self.deadline - time.monotonic()
            if remaining < MIN_ATTEMPT:
                if cut_short and cause is not None:
                    raise WireServerError(
                        f"{shown}: {cause}; gave up after {attempt} attempt(s), "
                        "the last cut short by the retry deadline"
                    )
                raise WireServerError(f"{shown}: {problem}; gave up after {attempt} attempt(s)")
            if asked is not None and asked > remaining - MIN_ATTEMPT:
                raise WireServerError(
                    f"{shown}: {problem}, past the retry deadline; "
                    f"gave up after {attempt} attempt(s)"
                )
            pause = min(max(delay, asked or 0.0), remaining - MIN_ATTEMPT)
            log.info("%s: %s; retrying in %.1f s", shown, problem, pause)
            self._sleep(pause)
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

    def for_goal_state(
        self,
        use: Callable[[wireserver.GoalState], T],
        goal: Optional[wireserver.GoalState] = None,
        *,
        what: str = "talking to the WireServer",
    ) -> tuple[wireserver.GoalState, T]:
        """``use(goal)`` for ``goal`` (default: the current goal state), and that goal state.

        A 410 from any request of a round (the goal state moved on) fetches
        the goal state again and repeats ``use``, at most GONE_ROUNDS rounds,
        all within the retry deadline.
        """
        for changes in range(GONE_ROUNDS):
            try:
                goal = goal or self.goal_state()
                return goal, use(goal)
            except GoneError as e:
                log.info("%s: the goal state changed while %s; fetching it again", e.reason, what)
                goal = None
            except WireServerError as e:
                if not changes:
                    raise
                # The reason of a round that ran out of time must not hide the changes.
                raise WireServerError(
                    f"the goal state changed {changes} time(s) while {what}, then {e.reason}"
                ) from None
        raise WireServerError(f"the goal state kept changing while {what}")

    def post_health(
        self,
        goal: wireserver.GoalState,
        state: str,
        substatus: Optional[str] = None,
        description: Optional[str] = None,
    ) -> None:
        """POST one health report for ``goal``; GoneError on 410."""
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
        self.request(
            "POST",
            f"{self.base_url}/machine?comp=health",
            body=body,
            accept=(200, 201, 202),
        )

    def report_health(
        self,
        state: str,
        substatus: Optional[str] = None,
        description: Optional[str] = None,
        goal: Optional[wireserver.GoalState] = None,
    ) -> wireserver.GoalState:
        """POST a health report for the current goal state; on 410 refetch and resend."""
        return self.for_goal_state(
            lambda current: self.post_health(current, state, substatus, description),
            goal,
            what=f"reporting {state}",
        )[0]

    def report_role_properties(self, goal: wireserver.GoalState, thumbprint: str) -> None:
        body = wireserver.role_properties_xml(goal.container_id, goal.instance_id, thumbprint)
        self.request(
            "POST",
            f"{self.base_url}/machine?comp=roleProperties",
            body=body,
            accept=(200, 201, 202),
        )
