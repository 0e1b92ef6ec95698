"""A handler's package: its manifest fetched, its version picked, its zip downloaded and unpacked.

EXTENSIONS.md section 2. For a handler of the goal state:

1. the plugin version manifest is fetched from the goal state's manifest URIs
   in order (location, failover location, others), directly (through the HTTP
   proxy); when every one fails, through the HostGAPlugin's
   ``GET /extensionArtifact`` (``x-ms-artifact-location``);
2. :func:`azagent.extensions.manifest.pick` chooses the version;
3. the zip is streamed to ``<Lib.Dir>/<Name>__<Version>.zip`` by
   :meth:`azagent.transport.Transport.download` (atomic, size-capped), from
   each package URI directly, then each through the HostGAPlugin, all within
   DOWNLOAD_TIMEOUT (5 minutes); a body that is not a zip file counts as a
   failed route;
4. it is unpacked into a temporary sibling of ``<Lib.Dir>/<Name>-<Version>/``
   and renamed into place only when complete: a later run never sees half a
   handler. Unpacking refuses (:class:`UnsafePackage`, naming the member) any
   member path leaving the directory (absolute, ``..``, NUL, control
   characters, backslashes), special files, links other than relative ones
   pointing down (no ``..``), duplicates, and bounds the member count, the
   total uncompressed size (counted as written, not as declared) and the
   compression ratio. Every file gets ``u+x`` as WALinuxAgent gives it; a
   ``HandlerManifest.json`` found deeper is copied to the top; ``config/`` and
   ``status/`` (0700) and ``HandlerEnvironment.json`` are added; the zip is
   deleted.

Every failure is a :class:`PackageError` with the WALinuxAgent status code
(1001 manifest, 1004 download, 1005 extraction) and leaves neither the zip nor
a directory behind. System floor: network and files.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
import zipfile
import zlib
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from azagent.context import Context
from azagent.errors import AzagentError
from azagent.extensions import environment, manifest, naming
from azagent.extensions.manifest import Manifest, PackageVersion
from azagent.journal import log
from azagent.redact import redact
from azagent.transport import (
    BLOB,
    DOWNLOAD_TIMEOUT,
    HOSTGAPLUGIN,
    Transport,
    TransportError,
)

# Status codes of the handler (PROTOCOL.md section 5).
MANIFEST_DOWNLOAD = 1001
PACKAGE_DOWNLOAD = 1004
EXTRACTION = 1005

HANDLER_MANIFEST = "HandlerManifest.json"
_UNPACKING = ".unpack-"
_CHUNK = 1024 * 1024


class PackageError(AzagentError):
    """The handler's package could not be fetched or unpacked; ``code`` is its status code."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.code = code


class UnsafePackage(PackageError):
    """The zip is corrupt or hostile; the reason names the member."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, EXTRACTION)


@dataclass(frozen=True)
class Limits:
    """Bounds on what a package may be; real handlers stay far below them.

    The largest public handlers (Azure Monitor) are a few hundred MB unpacked
    with a few thousand files.
    """

    download_bytes: int = 1024 * 1024 * 1024
    unpacked_bytes: int = 4 * 1024 * 1024 * 1024
    files: int = 50_000
    # A member's uncompressed/compressed size, checked for members over ratio_floor.
    ratio: int = 200
    ratio_floor: int = 1024 * 1024


@dataclass(frozen=True)
class HostPlugin:
    """The HostGAPlugin of the goal state, for ``GET /extensionArtifact``."""

    url: str  # base URL, http://<wireserver>:32526
    container_id: str
    host_config_name: str

    def artifact(
        self, location: str, manifest_location: Optional[str]
    ) -> tuple[str, dict[str, str]]:
        headers = {
            "x-ms-containerid": self.container_id,
            "x-ms-host-config-name": self.host_config_name,
            "x-ms-artifact-location": location,
        }
        if manifest_location:
            headers["x-ms-artifact-manifest-location"] = manifest_location
        return f"{self.url.rstrip('/')}/extensionArtifact", headers


@dataclass(frozen=True)
class Unpacked:
    """A handler ready to run: its version and directory (host path, under the root)."""

    name: str
    version: PackageVersion
    directory: Path
    fresh: bool  # unpacked by this call (False: it was already there)


# -- fetching ------------------------------------------------------------------


def fetch_manifest(
    http: Transport,
    uris: Sequence[str],
    *,
    plugin: Optional[HostPlugin] = None,
    deadline: Optional[float] = None,
) -> tuple[Manifest, str]:
    """The first manifest that downloads and parses, and the URI it came from.

    Each URI directly, then each through the HostGAPlugin. An unusable
    manifest (bad XML) counts as a failed URI: the next one may be good.
    """
    if not uris:
        raise PackageError("the goal state names no manifest for the handler", MANIFEST_DOWNLOAD)
    end = time.monotonic() + DOWNLOAD_TIMEOUT if deadline is None else deadline
    problems: list[str] = []
    for uri, via in _routes(uris, plugin):
        if time.monotonic() >= end:
            problems.append("the download deadline passed")
            break
        try:
            if via is None:
                reply = http.request("GET", uri, endpoint=BLOB, max_bytes=manifest.MAX_MANIFEST)
            else:
                url, headers = via.artifact(uri, None)
                reply = http.request(
                    "GET",
                    url,
                    endpoint=HOSTGAPLUGIN,
                    headers=headers,
                    max_bytes=manifest.MAX_MANIFEST,
                )
            if reply.status != 200:
                problems.append(f"{_route(uri, via)}: HTTP {reply.status}")
                continue
            return manifest.parse_manifest(reply.body), uri
        except TransportError as e:
            problems.append(f"{_route(uri, via)}: {e.problem}")
        except manifest.ManifestError as e:
            problems.append(f"{_route(uri, via)}: {e.reason}")
    raise PackageError(
        "the extension manifest could not be downloaded: " + "; ".join(problems[-4:]),
        MANIFEST_DOWNLOAD,
    )


def download(
    http: Transport,
    package: PackageVersion,
    target: Path,
    *,
    plugin: Optional[HostPlugin] = None,
    manifest_location: Optional[str] = None,
    limits: Limits = Limits(),
    deadline: Optional[float] = None,
) -> int:
    """Stream the package to ``target`` (atomically); its size. Nothing is left on failure."""
    if not package.uris:
        raise PackageError(f"version {package.version} lists no package URI", PACKAGE_DOWNLOAD)
    end = time.monotonic() + DOWNLOAD_TIMEOUT if deadline is None else deadline
    problems: list[str] = []
    for uri, via in _routes(package.uris, plugin):
        if time.monotonic() >= end:
            problems.append(f"not complete within {DOWNLOAD_TIMEOUT:g} s")
            break
        try:
            if via is None:
                size = http.download(uri, target, max_bytes=limits.download_bytes, deadline=end)
            else:
                url, headers = via.artifact(uri, manifest_location)
                size = http.download(
                    url,
                    target,
                    endpoint=HOSTGAPLUGIN,
                    headers=headers,
                    max_bytes=limits.download_bytes,
                    deadline=end,
                )
        except TransportError as e:
            problems.append(f"{_route(uri, via)}: {e.problem}")
            continue
        # A body that is no zip at all (a garbled answer) is a failed route: the next may be good.
        if zipfile.is_zipfile(target):
            return size
        with suppress(FileNotFoundError):
            target.unlink()
        problems.append(f"{_route(uri, via)}: the body is not a zip file")
    raise PackageError(
        f"the package of version {package.version} could not be downloaded: "
        + "; ".join(problems[-4:]),
        PACKAGE_DOWNLOAD,
    )


def _routes(
    uris: Sequence[str], plugin: Optional[HostPlugin]
) -> list[tuple[str, Optional[HostPlugin]]]:
    routes: list[tuple[str, Optional[HostPlugin]]] = [(uri, None) for uri in uris]
    if plugin is not None:
        routes += [(uri, plugin) for uri in uris]
    return routes


def _route(uri: str, via: Optional[HostPlugin]) -> str:
    shown = redact(uri)
    return shown if via is None else f"{shown} through the HostGAPlugin"


# -- the whole step ------------------------------------------------------------


def log_root(ctx: Context) -> Path:
    """Extension.LogDir (``/var/log/azure``) under the root."""
    configured = ctx.config.get_str("Extension.LogDir") or environment.DEFAULT_LOG_ROOT
    return ctx.path(configured)


def prepare(
    ctx: Context,
    http: Transport,
    name: str,
    requested_version: str,
    manifest_uris: Sequence[str],
    *,
    plugin: Optional[HostPlugin] = None,
    limits: Limits = Limits(),
) -> Unpacked:
    """Fetch, pick, download and unpack a handler, unless its directory already exists.

    The manifest is fetched even for an installed version: it says which
    version the goal state's prefix means now.
    """
    naming.check_handler_name(name)
    deadline = time.monotonic() + DOWNLOAD_TIMEOUT
    listed, location = fetch_manifest(http, manifest_uris, plugin=plugin, deadline=deadline)
    try:
        package = manifest.pick(listed, requested_version)
    except manifest.ManifestError as e:
        raise PackageError(e.reason, MANIFEST_DOWNLOAD) from None
    lib_dir = ctx.lib_dir
    directory = lib_dir / naming.handler_dir_name(name, package.version)
    if directory.is_dir():
        return Unpacked(name, package, directory, fresh=False)
    lib_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    archive = lib_dir / naming.package_file_name(name, package.version)
    try:
        download(
            http,
            package,
            archive,
            plugin=plugin,
            manifest_location=location,
            limits=limits,
            deadline=deadline,
        )
        unpack(
            archive,
            directory,
            handler_name=name,
            target_dir=ctx.display(directory),
            log_root=log_root(ctx),
            target_log_root=ctx.display(log_root(ctx)),
            limits=limits,
        )
    finally:
        with suppress(FileNotFoundError):
            archive.unlink()
    log.info("unpacked %s %s into %s", name, package.version, ctx.display(directory))
    return Unpacked(name, package, directory, fresh=True)


# -- unpacking -----------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    kind: str  # "file", "dir" or "link"


def unpack(
    archive: Path,
    directory: Path,
    *,
    handler_name: str,
    target_dir: Optional[str] = None,
    log_root: Optional[Path] = None,
    target_log_root: str = environment.DEFAULT_LOG_ROOT,
    limits: Limits = Limits(),
) -> None:
    """Unpack ``archive`` into ``directory`` (which must not exist), all or nothing.

    ``target_dir`` and ``target_log_root`` are how the handler's commands see
    the directory and the log root (different under ``--root``);
    ``log_root`` is where the log folder is created (none when None).
    """
    parent = directory.parent
    _remove_leftovers(parent, directory.name)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}{_UNPACKING}", dir=parent))
    try:
        # The handler directory is readable by all, as WALinuxAgent leaves it.
        os.chmod(staging, 0o755)  # noqa: S103
        _extract(archive, staging, limits)
        _finish(staging, handler_name, target_dir or str(directory), target_log_root)
        os.rename(staging, directory)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise UnsafePackage(
            f"the package cannot be unpacked: {e.strerror or type(e).__name__}"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with suppress(OSError):
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if log_root is not None:
        logs = log_root / naming.check_handler_name(handler_name)
        with suppress(OSError):
            (logs / environment.EVENTS_DIR).mkdir(mode=0o755, parents=True, exist_ok=True)


def _remove_leftovers(parent: Path, name: str) -> None:
    """Staging directories of an earlier run that died mid-unpack."""
    with suppress(OSError):
        for entry in parent.iterdir():
            if entry.name.startswith(f".{name}{_UNPACKING}") and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


def _extract(archive: Path, staging: Path, limits: Limits) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = _members(zipped.infolist(), limits)
            written = 0
            for member in members:
                target = staging.joinpath(*member.parts)
                if member.kind == "dir":
                    target.mkdir(mode=0o755, parents=True, exist_ok=True)
                elif member.kind == "file":
                    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                    written = _write(zipped, member, target, written, limits)
            for member in members:
                if member.kind == "link":
                    target = staging.joinpath(*member.parts)
                    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                    os.symlink(_link_target(zipped, member), target)
    except UnsafePackage:
        raise
    except FileExistsError as e:
        raise UnsafePackage(f"the package has a member twice: {naming.quote(e.filename)}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as e:
        raise UnsafePackage(f"the package is not a valid zip file: {e}") from None
    except (RuntimeError, NotImplementedError) as e:  # encrypted, unknown compression
        raise UnsafePackage(f"the package cannot be read: {e}") from None


def _members(infos: list[zipfile.ZipInfo], limits: Limits) -> list[_Member]:
    if len(infos) > limits.files:
        raise UnsafePackage(
            f"the package has {len(infos)} members, over the limit of {limits.files}"
        )
    declared = compressed = 0
    members: list[_Member] = []
    seen: dict[tuple[str, ...], str] = {}
    for info in infos:
        parts = _safe_parts(info.filename)
        mode = info.external_attr >> 16
        shown = naming.quote(info.filename)
        if info.is_dir() or stat.S_ISDIR(mode):
            kind = "dir"
        elif stat.S_ISLNK(mode):
            kind = "link"
        elif stat.S_IFMT(mode) == 0 or stat.S_ISREG(mode):  # no type: a file
            kind = "file"
        else:
            raise UnsafePackage(f"member {shown} is not a regular file, directory or link")
        if not parts:
            if kind == "dir":
                continue
            raise UnsafePackage(f"member {shown} has no file name")
        if kind == "link" and len(parts) == 1 and parts[0] in _RESERVED:
            raise UnsafePackage(f"member {shown} is a link where the agent writes")
        if kind != "dir" and parts in seen:
            raise UnsafePackage(f"the package has member {shown} twice")
        seen[parts] = kind
        declared += info.file_size
        compressed += info.compress_size
        if declared > limits.unpacked_bytes:
            raise UnsafePackage(
                f"the package unpacks to more than {limits.unpacked_bytes} bytes"
                f" (at member {shown})"
            )
        if info.file_size > limits.ratio_floor and (
            info.file_size > limits.ratio * max(info.compress_size, 1)
        ):
            raise UnsafePackage(
                f"member {shown} is compressed more than {limits.ratio}:1 (a zip bomb?)"
            )
        members.append(_Member(info, parts, kind))
    # Many small members, each under the floor, make a bomb of their own.
    if declared > limits.ratio_floor and declared > limits.ratio * max(compressed, 1):
        raise UnsafePackage(f"the package is compressed more than {limits.ratio}:1 (a zip bomb?)")
    # A member below a file or a link would go through it.
    for member in members:
        for depth in range(1, len(member.parts)):
            if seen.get(member.parts[:depth], "dir") != "dir":
                raise UnsafePackage(
                    f"member {naming.quote(member.info.filename)} is below a file or link"
                )
    return members


_RESERVED = frozenset(
    {environment.CONFIG_DIR, environment.STATUS_DIR, environment.HANDLER_ENVIRONMENT}
)


def _safe_parts(name: str) -> tuple[str, ...]:
    """A member's path components, refused unless they stay inside the directory."""
    shown = naming.quote(name)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise UnsafePackage(f"member {shown} has control characters in its name")
    if "\\" in name:
        raise UnsafePackage(f"member {shown} has a backslash in its name")
    if name.startswith("/"):
        raise UnsafePackage(f"member {shown} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafePackage(f"member {shown} leaves the handler directory ('..')")
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise UnsafePackage(f"member {shown} has a name over 255 bytes")
    return parts


def _write(
    zipped: zipfile.ZipFile, member: _Member, target: Path, written: int, limits: Limits
) -> int:
    # Files as WALinuxAgent leaves them (root's umask, then u+x); never set-id.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o744)
    with os.fdopen(fd, "wb") as out, zipped.open(member.info) as source:
        while True:
            chunk = source.read(_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            if written > limits.unpacked_bytes:
                raise UnsafePackage(
                    f"the package unpacks to more than {limits.unpacked_bytes} bytes"
                    f" (at member {naming.quote(member.info.filename)})"
                )
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(target, 0o744)
    return written


def _link_target(zipped: zipfile.ZipFile, member: _Member) -> str:
    shown = naming.quote(member.info.filename)
    raw = zipped.read(member.info)
    try:
        target = raw.decode("utf-8") if len(raw) <= 1024 else ""
    except UnicodeDecodeError:
        target = ""
    if not target or target.startswith("/") or any(ord(c) < 0x20 for c in target):
        raise UnsafePackage(f"link {shown} points outside the handler directory")
    if ".." in target.split("/") or "\\" in target:
        raise UnsafePackage(f"link {shown} points outside the handler directory ('..')")
    return target


def _finish(staging: Path, handler_name: str, target_dir: str, target_log_root: str) -> None:
    top = staging / HANDLER_MANIFEST
    if not top.is_file() and not top.is_symlink():
        # os.walk follows no link: a link to "." cannot make it loop.
        deeper = sorted(
            (
                Path(folder) / HANDLER_MANIFEST
                for folder, _dirs, files in os.walk(staging)
                if HANDLER_MANIFEST in files and not (Path(folder) / HANDLER_MANIFEST).is_symlink()
            ),
            key=lambda p: (len(p.parts), str(p)),
        )
        if deeper:
            shutil.copyfile(deeper[0], top, follow_symlinks=False)
            os.chmod(top, 0o744)
    for name in (environment.CONFIG_DIR, environment.STATUS_DIR):
        (staging / name).mkdir(mode=0o700, exist_ok=True)
        os.chmod(staging / name, 0o700)
    document = environment.handler_environment(
        handler_name=handler_name, handler_dir=target_dir, log_root=target_log_root
    )
    path = staging / environment.HANDLER_ENVIRONMENT
    with suppress(FileNotFoundError):
        path.unlink()  # one the package brought along: ours is the truth
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(document)
        out.flush()
        os.fsync(out.fileno())
