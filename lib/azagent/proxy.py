"""The HTTP proxy for traffic other than the platform endpoints.

``HttpProxy.Host``/``HttpProxy.Port`` (or the ``http_proxy``/``https_proxy``
environment variables, minus the hosts ``no_proxy`` names) apply to every
request :mod:`azagent.transport` sends, except to the WireServer, the
HostGAPlugin and IMDS: the platform refuses those through a proxy, so they
are always reached directly. Pure decisions on the configuration and an
environment mapping; no I/O.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from azagent.context import Context
from azagent.errors import AzagentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

# The platform's fixed addresses: the WireServer (and HostGAPlugin) and IMDS.
PLATFORM_ADDRESSES = ("168.63.129.16", "169.254.169.254")


class ProxyError(AzagentError):
    """A proxy setting cannot be used."""


def _proxy_url(value: str, where: str) -> str:
    value = value.strip()
    if "://" not in value:
        value = f"http://{value}"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ProxyError(f"{where} is not a proxy URL") from None
    if parts.scheme not in ("http", "https", "socks5", "socks5h") or not parts.hostname:
        raise ProxyError(f"{where} is not a proxy URL")
    return value


def proxies(ctx: Context, environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The proxy for each scheme, as ``requests`` takes it: ``{"http": URL, "https": URL}``.

    HttpProxy.Host (and HttpProxy.Port; without it the proxy's port is 80)
    wins over the ``http_proxy``/``https_proxy`` environment variables (or
    their upper-case spellings), as in WALinuxAgent. Empty: no proxy. Never
    use it for the platform endpoints: see :func:`proxies_for`.
    """
    host = ctx.config.get_str("HttpProxy.Host")
    if host is not None:
        port = ctx.config.get_int("HttpProxy.Port")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal
        url = f"http://{host}" + (f":{port}" if port is not None else "")
        return {"http": url, "https": url}
    env = os.environ if environ is None else environ
    found = {}
    for scheme in ("http", "https"):
        for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
            if env.get(name):
                found[scheme] = _proxy_url(env[name], f"the {name} environment variable")
                break
    return found


def _no_proxy(host: str, environ: Mapping[str, str]) -> bool:
    """Whether ``no_proxy`` (or NO_PROXY) exempts ``host``: ``*``, domain suffixes, IPs, CIDRs."""
    value = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    try:
        address: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = ipaddress.ip_address(
            host
        )
    except ValueError:
        address = None
    for entry in (item.strip().lower() for item in value.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
            except ValueError:
                pass
            continue
        suffix = entry.lstrip(".").split(":", 1)[0]
        if host == suffix or host.endswith("." + suffix):
            return True
    return False


def platform_hosts(ctx: Context) -> set[str]:
    """Hosts that are never reached through a proxy: the WireServer, HostGAPlugin and IMDS."""
    hosts = set(PLATFORM_ADDRESSES)
    for name in ("WireServer", "HostGAPlugin", "IMDS"):
        host = urlsplit(ctx.endpoint(name)).hostname
        if host:
            hosts.add(host.lower())
    return hosts


def proxies_for(
    ctx: Context, url: str, environ: Optional[Mapping[str, str]] = None
) -> dict[str, str]:
    """The proxies for one request to ``url``: none for a platform endpoint or a no_proxy host.

    :class:`azagent.transport.Transport` passes the result as ``proxies=`` on
    a session with ``trust_env = False``, so that nothing else decides.
    """
    env = os.environ if environ is None else environ
    host = (urlsplit(url).hostname or "").lower()
    if not host or host in platform_hosts(ctx) or _no_proxy(host, env):
        return {}
    return proxies(ctx, env)
