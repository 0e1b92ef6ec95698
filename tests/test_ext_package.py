"""A handler's package fetched from the emulator and unpacked safely, or refused whole."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from azfabric.scenario import Extension, ExtensionVersion, Fault, Scenario
from azfabric.server import Fabric
from provisioning_env import make_vm
from test_certstore import fabric_context
from test_fabric import goal_state
from test_fabric_extensions import SAMPLE, SAMPLE_ZIP, extensions_config, plugins

from azagent.context import Context
from azagent.extensions import package
from azagent.extensions.package import HostPlugin, Limits, PackageError, UnsafePackage
from azagent.transport import Transport

SAMPLE_DIR = f"{SAMPLE}-1.3.0"


@pytest.fixture
def http() -> Iterator[Transport]:
    client = Transport(timeout=5)
    yield client
    client.close()


def setup(root: Path, scenario: Scenario, fabric: Fabric) -> tuple[Context, list[str], HostPlugin]:
    ctx = fabric_context(make_vm(root, scenario, fabric).root)
    location = plugins(extensions_config(fabric))[SAMPLE].attrib["location"]
    goal = goal_state(fabric)
    plugin = HostPlugin(fabric.urls["hostgaplugin"], goal.container_id, goal.uris.config_name)
    return ctx, [location], plugin


def leftovers(lib_dir: Path) -> list[str]:
    """What a failed or finished run must not leave: zips, partial files, staging dirs."""
    return sorted(
        p.name for p in lib_dir.iterdir() if p.suffix in (".zip", ".part") or p.name.startswith(".")
    )


def sample_scenario(**kwargs: object) -> Scenario:
    return Scenario(
        extensions=[Extension(name=SAMPLE, version="1.3.0", package=str(SAMPLE_ZIP))],
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_sample_handler_is_downloaded_and_unpacked(root: Path, http: Transport) -> None:
    scenario = Scenario(
        extensions=[
            Extension(
                name=SAMPLE,
                version="1.3",
                versions=[
                    ExtensionVersion("1.2.9", files={"HandlerManifest.json": "[]"}),
                    ExtensionVersion("1.3.0", package=str(SAMPLE_ZIP)),
                ],
            )
        ]
    )
    with Fabric(scenario) as fabric:
        ctx, uris, plugin = setup(root, scenario, fabric)
        done = package.prepare(ctx, http, SAMPLE, "1.3", uris, plugin=plugin)
        assert done.fresh
        assert done.version.version == "1.3.0"
        directory = ctx.lib_dir / SAMPLE_DIR
        assert done.directory == directory
        with zipfile.ZipFile(SAMPLE_ZIP) as z:
            for info in z.infolist():
                path = directory / info.filename
                assert path.read_bytes() == z.read(info)
                mode = path.stat().st_mode
                assert mode & stat.S_IXUSR
                assert not mode & (stat.S_ISUID | stat.S_ISGID)
        for name in ("config", "status"):
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o700
        [document] = json.loads((directory / "HandlerEnvironment.json").read_text())
        assert document["name"] == SAMPLE
        env = document["handlerEnvironment"]
        # The paths the handler's commands see: the target system's, not the test root's.
        assert env["configFolder"] == f"/var/lib/waagent/{SAMPLE_DIR}/config"
        assert env["logFolder"] == f"/var/log/azure/{SAMPLE}"
        assert (root / f"var/log/azure/{SAMPLE}/events").is_dir()
        assert leftovers(ctx.lib_dir) == []
        # The package came directly, not through the HostGAPlugin.
        assert not [r for r in fabric.requests if "extensionArtifact" in r.path]
        # Unpacked already: the manifest is read again, the package is not.
        count = len(fabric.requests)
        again = package.prepare(ctx, http, SAMPLE, "1.3", uris, plugin=plugin)
        assert not again.fresh
        assert again.directory == directory
        assert not [r for r in fabric.requests[count:] if r.path.endswith(".zip")]


def test_the_hostgaplugin_serves_what_direct_downloads_cannot(root: Path, http: Transport) -> None:
    scenario = sample_scenario(
        faults=[
            Fault(endpoint="blob", kind="status", status=503, path=r"manifest\.xml", count=9),
            Fault(endpoint="blob", kind="reset", path=r"__1\.3\.0\.zip", count=9),
        ]
    )
    with Fabric(scenario) as fabric:
        ctx, uris, plugin = setup(root, scenario, fabric)
        done = package.prepare(ctx, http, SAMPLE, "1.3", uris, plugin=plugin)
        assert (done.directory / "HandlerManifest.json").is_file()
        artifacts = [r for r in fabric.requests if r.path.startswith("/extensionArtifact")]
        locations = [r.header("x-ms-artifact-location") or "" for r in artifacts]
        assert locations[0] == uris[0]
        assert locations[1].endswith(f"{SAMPLE}__1.3.0.zip")
        assert artifacts[1].header("x-ms-artifact-manifest-location") == uris[0]
        assert leftovers(ctx.lib_dir) == []


def test_a_failed_download_leaves_nothing_behind(root: Path, http: Transport) -> None:
    scenario = sample_scenario(
        faults=[
            Fault(endpoint="blob", kind="truncate", path=r"__1\.3\.0\.zip", count=9),
            Fault(endpoint="hostgaplugin", kind="status", status=500, path="zip", count=9),
        ]
    )
    with Fabric(scenario) as fabric:
        ctx, uris, plugin = setup(root, scenario, fabric)
        with pytest.raises(PackageError) as caught:
            package.prepare(ctx, http, SAMPLE, "1.3", uris, plugin=plugin)
        assert caught.value.code == package.PACKAGE_DOWNLOAD
        assert "through the HostGAPlugin: HTTP 500" in caught.value.reason
        assert not (ctx.lib_dir / SAMPLE_DIR).exists()
        assert leftovers(ctx.lib_dir) == []


def test_an_unreachable_manifest_and_a_missing_version_are_named(
    root: Path, http: Transport
) -> None:
    scenario = sample_scenario(
        faults=[
            Fault(endpoint="blob", kind="status", status=404, path=r"manifest\.xml", count=9),
            Fault(endpoint="hostgaplugin", kind="status", status=500, path="manifest", count=9),
        ]
    )
    with Fabric(scenario) as fabric:
        ctx, uris, plugin = setup(root, scenario, fabric)
        with pytest.raises(PackageError) as caught:
            package.prepare(ctx, http, SAMPLE, "1.3", uris, plugin=plugin)
        assert caught.value.code == package.MANIFEST_DOWNLOAD
        assert "HTTP 404" in caught.value.reason
        assert "HTTP 500" in caught.value.reason
    with Fabric(sample_scenario()) as fabric:
        ctx, uris, plugin = setup(root / "again", sample_scenario(), fabric)
        with pytest.raises(PackageError, match=r"version 2\.0 is not in the extension manifest"):
            package.prepare(ctx, http, SAMPLE, "2.0", uris, plugin=plugin)


def test_a_package_over_the_size_cap_is_not_kept(root: Path, http: Transport) -> None:
    scenario = sample_scenario()
    with Fabric(scenario) as fabric:
        ctx, uris, plugin = setup(root, scenario, fabric)
        with pytest.raises(PackageError, match="download"):
            package.prepare(
                ctx, http, SAMPLE, "1.3", uris, plugin=plugin, limits=Limits(download_bytes=100)
            )
        assert not (ctx.lib_dir / SAMPLE_DIR).exists()
        assert leftovers(ctx.lib_dir) == []


# -- hostile zips ----------------------------------------------------------


def build(
    members: list[tuple[str, bytes, Optional[int]]], level: int = zipfile.ZIP_DEFLATED
) -> bytes:
    """A zip of (name, content, unix mode or None) members, written as a hostile tool would."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=level) as z:
        for name, content, mode in members:
            info = zipfile.ZipInfo("placeholder")
            info.filename = name  # no normalisation by ZipInfo
            info.compress_type = level
            if mode is not None:
                info.external_attr = mode << 16
            z.writestr(info, content)
    return buffer.getvalue()


GOOD = ("HandlerManifest.json", b"[]", 0o100644)


def unpack(tmp_path: Path, data: bytes, limits: Optional[Limits] = None) -> Path:
    archive = tmp_path / "h__1.0.zip"
    archive.write_bytes(data)
    target = tmp_path / "h-1.0"
    package.unpack(archive, target, handler_name="h", limits=limits or Limits())
    return target


@pytest.mark.parametrize(
    ("members", "limits", "reason"),
    [
        ([GOOD, ("../evil", b"x", None)], Limits(), r"'\.\./evil' leaves"),
        ([GOOD, ("a/../../evil", b"x", None)], Limits(), r"leaves the handler directory"),
        ([GOOD, ("/etc/evil", b"x", None)], Limits(), r"'/etc/evil' has an absolute path"),
        ([GOOD, ("a\\..\\..\\evil", b"x", None)], Limits(), r"backslash"),
        ([GOOD, ("a\nb", b"x", None)], Limits(), r"control characters"),
        ([GOOD, ("out", b"/etc/shadow", 0o120777)], Limits(), r"link 'out' points outside"),
        ([GOOD, ("up", b"../../x", 0o120777)], Limits(), r"link 'up' points outside"),
        ([GOOD, ("link", b"sub", 0o120777), ("link/f", b"x", None)], Limits(), r"below a file"),
        ([GOOD, ("config", b"/", 0o120777)], Limits(), r"link where the agent writes"),
        ([GOOD, ("fifo", b"", 0o010644)], Limits(), r"not a regular file"),
        ([GOOD, ("twice", b"1", None), ("./twice", b"2", None)], Limits(), r"twice"),
        ([GOOD] + [(f"f{i}", b"", None) for i in range(6)], Limits(files=5), r"7 members"),
        ([GOOD, ("big", b"x" * 5000, None)], Limits(unpacked_bytes=4096), r"more than 4096"),
        ([GOOD, ("bomb", b"\0" * (4 << 20), None)], Limits(), r"'bomb' is compressed more"),
        (
            [GOOD] + [(f"b{i}", b"\0" * (512 << 10), None) for i in range(8)],
            Limits(),
            r"package is compressed more",
        ),
    ],
)
def test_hostile_zips_are_refused_whole(
    tmp_path: Path, members: list[tuple[str, bytes, Optional[int]]], limits: Limits, reason: str
) -> None:
    with pytest.raises(UnsafePackage, match=reason) as caught:
        unpack(tmp_path, build(members), limits)
    assert caught.value.code == package.EXTRACTION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h__1.0.zip"]
    assert not (tmp_path.parent / "evil").exists()


def test_declared_sizes_that_lie_are_caught_while_writing(tmp_path: Path) -> None:
    data = bytearray(build([GOOD, ("liar", b"y" * 10_000, None)], zipfile.ZIP_STORED))
    # Declare the member 10 bytes long in both headers: zipfile stops there, the CRC fails.
    lie = (10).to_bytes(4, "little")
    at = data.find(b"liar")
    local = data.rfind(b"PK\x03\x04", 0, at)
    data[local + 22 : local + 26] = lie
    central = data.find(b"liar", data.find(b"PK\x01\x02")) - 46
    data[central + 24 : central + 28] = lie
    with pytest.raises(UnsafePackage, match="not a valid zip"):
        unpack(tmp_path, bytes(data))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h__1.0.zip"]


@pytest.mark.parametrize(
    "data", [b"", b"PK\x03\x04 not really", b"\x00" * 100], ids=["empty", "header-only", "zeros"]
)
def test_corrupt_zips_are_an_error_not_a_crash(tmp_path: Path, data: bytes) -> None:
    good = build([GOOD, ("a.sh", b"echo hi\n" * 100, None)])
    for broken in (data, good[: len(good) // 2], good[:30] + b"\xff" * 40 + good[70:]):
        with pytest.raises(UnsafePackage):
            unpack(tmp_path, broken)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["h__1.0.zip"]


def test_links_pointing_down_and_a_deeper_handler_manifest(tmp_path: Path) -> None:
    target = unpack(
        tmp_path,
        build(
            [
                ("pkg/", b"", 0o040755),
                ("pkg/HandlerManifest.json", b'[{"handlerManifest": {}}]', 0o100644),
                ("pkg/bin/run.sh", b"#!/bin/sh\n", 0o104755),  # set-uid in the zip
                ("pkg/lib/libx.so.1", b"ELF", 0o100644),
                ("pkg/lib/libx.so", b"libx.so.1", 0o120777),
                ("pkg/here", b".", 0o120777),  # a loop for a walker that follows links
            ]
        ),
    )
    assert (target / "HandlerManifest.json").read_bytes() == b'[{"handlerManifest": {}}]'
    assert (target / "pkg/lib/libx.so").is_symlink()
    assert (target / "pkg/lib/libx.so").read_bytes() == b"ELF"
    mode = (target / "pkg/bin/run.sh").stat().st_mode
    assert mode & stat.S_IXUSR
    assert not mode & stat.S_ISUID
    assert (target / "config").is_dir()
    assert (target / "status").is_dir()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_staging_directory_of_a_dead_run_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".h-1.0.unpack-abc"
    (stale / "half").mkdir(parents=True)
    unpack(tmp_path, build([GOOD]))
    assert not stale.exists()
    with pytest.raises(UnsafePackage, match="cannot be unpacked"):
        unpack(tmp_path, build([GOOD]))  # the directory exists: never merged into


def test_a_hostile_package_from_the_fabric_leaves_nothing(
    root: Path, http: Transport, tmp_path: Path
) -> None:
    hostile = tmp_path / "hostile.zip"
    hostile.write_bytes(build([GOOD, ("ok.sh", b"true", None), ("../../escape", b"x", None)]))
    scenario = Scenario(extensions=[Extension(name=SAMPLE, version="1.3.0", package=str(hostile))])
    with Fabric(scenario) as fabric:
        ctx, uris, plugin = setup(root, scenario, fabric)
        with pytest.raises(UnsafePackage, match=r"'\.\./\.\./escape' leaves") as caught:
            package.prepare(ctx, http, SAMPLE, "1.3", uris, plugin=plugin)
        assert caught.value.code == package.EXTRACTION
        assert not (ctx.lib_dir / SAMPLE_DIR).exists()
        assert leftovers(ctx.lib_dir) == []
        assert not (ctx.lib_dir.parent / "escape").exists()
