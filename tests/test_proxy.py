"""lib/azagent/proxy.py, and the transport applying it: HttpProxy.* and http(s)_proxy
carry traffic to other hosts, never the WireServer's, the HostGAPlugin's or IMDS's.

The end-to-end tests put a recording "proxy" on loopback (tests/loopback.py)
beside the fabric emulator: a request for a non-fabric URL reaches the proxy
(which answers it itself), while requests to the
emulated platform arrive at the emulator directly.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from azfabric.scenario import Scenario
from azfabric.server import Fabric
from conftest import run_stage
from loopback import Request, Server, answer
from provisioning_env import make_vm

from azagent import config, imds, proxy
from azagent.context import Context
from azagent.transport import Transport, TransportError
from azagent.wireclient import WireClient

SAVED = "run/azagent/wireserver"
# Not a platform host, yet one that never leaves the machine, even if a broken
# transport skipped the proxy (it would find port 9 closed).
PACKAGE = "http://localhost:9/Contoso.Ext/1.0/pkg.zip?sv=2020-08-04&sig=abc"


def context(root: Path, *lines: str) -> Context:
    path = root / "etc/waagent.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return Context(stage="test", root=root, config=config.load(path))


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- which proxy, for which URL -----------------------------------------------------


def test_proxy_from_the_configuration_wins_over_the_environment(root: Path) -> None:
    env = {"http_proxy": "http://env:3128", "https_proxy": "http://env:3129"}
    ctx = context(root, "HttpProxy.Host=proxy.example", "HttpProxy.Port=8080")
    assert proxy.proxies(ctx, env) == {
        "http": "http://proxy.example:8080",
        "https": "http://proxy.example:8080",
    }
    assert proxy.proxies(context(root, "HttpProxy.Host=10.0.0.9"), env) == {
        "http": "http://10.0.0.9",
        "https": "http://10.0.0.9",
    }
    assert (
        proxy.proxies(context(root, "HttpProxy.Host=fd00::9", "HttpProxy.Port=3128"))["http"]
        == "http://[fd00::9]:3128"
    )


def test_proxy_from_the_environment(root: Path) -> None:
    ctx = context(root)
    assert proxy.proxies(ctx, {}) == {}
    assert proxy.proxies(ctx, {"HTTP_PROXY": "proxy:3128", "https_proxy": "http://s:1"}) == {
        "http": "http://proxy:3128",
        "https": "http://s:1",
    }
    with pytest.raises(proxy.ProxyError, match="https_proxy environment variable"):
        proxy.proxies(ctx, {"https_proxy": "http://host:notaport"})


def test_platform_endpoints_never_use_the_proxy(root: Path) -> None:
    ctx = context(root, "HttpProxy.Host=proxy", "HttpProxy.Port=3128")
    env = {"no_proxy": ".internal.example,10.0.0.0/8"}
    proxied = {"http": "http://proxy:3128", "https": "http://proxy:3128"}
    for url in (
        "http://168.63.129.16/machine/?comp=goalstate",
        "http://168.63.129.16:32526/vmSettings",
        "http://169.254.169.254/metadata/instance",
    ):
        assert proxy.proxies_for(ctx, url, env) == {}, url
    assert proxy.proxies_for(ctx, "https://a.blob.core.windows.net/x?sig=1", env) == proxied
    assert proxy.proxies_for(ctx, "https://repo.internal.example/x", env) == {}
    assert proxy.proxies_for(ctx, "http://10.2.3.4/x", env) == {}
    assert proxy.proxies_for(ctx, "http://11.2.3.4/x", env) == proxied
    assert proxy.proxies_for(ctx, "http://anything/", {"NO_PROXY": "*"}) == {}
    # The WireServer DHCP named, and an emulator's configured endpoints, are platform too.
    write(root, SAVED, "http://10.1.2.3\n")
    assert proxy.proxies_for(ctx, "http://10.1.2.3/machine", {}) == {}
    emulated = context(root, "HttpProxy.Host=proxy", "Endpoint.IMDS=http://127.0.0.1:9")
    assert proxy.proxies_for(emulated, "http://127.0.0.1:9/metadata", {}) == {}


# -- the transport applies it ---------------------------------------------------------


def relay(server: Server, connection: socket.socket, request: Request) -> None:
    """A proxy that answers plain requests itself and refuses tunnels."""
    if request.method == "CONNECT":
        connection.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        server.idle(0.5)  # let the client read the refusal before the close
        return
    connection.sendall(answer(200, b"through the proxy"))


def fabric_context(root: Path, fabric: Fabric, *lines: str) -> Context:
    urls = fabric.urls
    return context(
        root,
        f"Endpoint.WireServer={urls['wireserver']}",
        f"Endpoint.HostGAPlugin={urls['hostgaplugin']}",
        f"Endpoint.IMDS={urls['imds']}",
        "Endpoint.RequestTimeout=5",
        "Endpoint.RetryDeadline=10",
        *lines,
    )


@pytest.mark.parametrize("where", ["configuration", "environment"])
def test_the_proxy_carries_other_traffic_and_never_the_fabrics(
    root: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    with Fabric(Scenario()) as fabric, Server(relay) as recorder:
        if where == "configuration":
            lines = ("HttpProxy.Host=127.0.0.1", f"HttpProxy.Port={recorder.port}")
            # The environment's proxy loses to HttpProxy.*; it names a dead port.
            monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
        else:
            lines = ()
            monkeypatch.setenv("http_proxy", recorder.url)
            monkeypatch.setenv("https_proxy", recorder.url)
        ctx = fabric_context(root, fabric, *lines)
        http = Transport.from_context(ctx)

        reply = http.request("GET", PACKAGE, endpoint="blob")
        assert (reply.status, reply.body) == (200, b"through the proxy")
        [through] = recorder.requests
        assert (through.method, through.target) == ("GET", PACKAGE)

        # The platform: direct, whatever the configuration or the environment say.
        wire = WireClient.from_context(ctx)
        goal = wire.goal_state()
        assert imds.fetch(ctx).vm_id == fabric.scenario.vm_id
        hgap = http.request(
            "GET", f"{fabric.urls['hostgaplugin']}/versions", endpoint="hostgaplugin"
        )
        assert hgap.status == 200
        # A platform host is direct even when a caller files it as a blob (the
        # emulator refuses it for want of the WireServer's headers: a blob has none).
        assert http.request("GET", goal.uris.hosting_environment, endpoint="blob").status == 400
        assert len(recorder.requests) == 1
        assert {r.endpoint for r in fabric.requests} == {"wireserver", "imds", "hostgaplugin"}


def test_a_tunnel_the_proxy_refuses_is_a_transport_error(root: Path) -> None:
    with Fabric(Scenario()) as fabric, Server(relay) as recorder:
        ctx = fabric_context(
            root, fabric, "HttpProxy.Host=127.0.0.1", f"HttpProxy.Port={recorder.port}"
        )
        https = PACKAGE.replace("http://", "https://")
        with pytest.raises(TransportError) as caught:
            Transport.from_context(ctx).request("GET", https, endpoint="blob")
        [tunnel] = recorder.requests
    assert (tunnel.method, tunnel.target) == ("CONNECT", "localhost:9")
    assert caught.value.problem == "the proxy did not relay the request"
    assert "sig=abc" not in str(caught.value)


def test_report_ready_never_goes_through_the_proxy(root: Path) -> None:
    """A stage, as at boot: HttpProxy.* and the environment name the proxy; Ready goes direct."""
    scenario = Scenario()
    with Fabric(scenario) as fabric, Server(relay) as recorder:
        vm = make_vm(root, scenario, fabric)
        vm.configure("HttpProxy.Host=127.0.0.1", f"HttpProxy.Port={recorder.port}")
        assert vm.run("mount-ovf").returncode == 0
        env = {"AZAGENT_LOCK_TIMEOUT": "5", "http_proxy": recorder.url, "https_proxy": recorder.url}
        run = run_stage("report-ready", "--root", str(root), env=env)
        assert run.returncode == 0, run.stderr
        assert fabric.wait_for(lambda: len(fabric.health_reports) == 1, timeout=5)
        assert recorder.requests == []
        assert [r.state for r in fabric.health_reports] == ["Ready"]
