"""The plugin version manifest, and which of its versions a handler gets.

A handler's ``location`` in the goal state points to a PluginVersionManifest:
``Plugins/Plugin{Version, Uris/Uri, DisallowMajorVersionUpgrade}`` and the same
under ``InternalPlugins`` (sample: tests/fixtures/walinuxagent/wire/manifest.xml).
The goal state requests a version that is a prefix ("1.3" asks for the newest
1.3.x); :func:`pick` holds that rule. Pure: no I/O, parsing through
:mod:`azagent.xmlsafe`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from azagent import xmlsafe
from azagent.errors import AzagentError
from azagent.extensions import naming
from azagent.xmlsafe import Element

# Real manifests list tens of versions; this bounds a hostile one.
MAX_MANIFEST = 4 * 1024 * 1024
_WHAT = "extension manifest"


class ManifestError(AzagentError):
    """The manifest cannot be used (status code 1001 for the handler)."""


class NoMatchingVersion(ManifestError):
    """No version in the manifest matches the one the goal state requests."""


@dataclass(frozen=True)
class PackageVersion:
    version: str
    uris: tuple[str, ...]  # where the package zip can be downloaded, in order
    internal: bool = False  # listed under InternalPlugins
    disallow_major_upgrade: bool = False


@dataclass(frozen=True)
class Manifest:
    versions: tuple[PackageVersion, ...]  # document order, public ones first

    def exact(self, version: str) -> Optional[PackageVersion]:
        """The entry for exactly ``version`` (by value: "1.03" is "1.3"), if listed."""
        wanted = naming.version_key(version)
        for package in self.versions:
            if naming.version_key(package.version) == wanted:
                return package
        return None


def parse_manifest(data: bytes) -> Manifest:
    try:
        root = Element.root(xmlsafe.parse(data, what=_WHAT, max_bytes=MAX_MANIFEST), what=_WHAT)
        if root.local != "PluginVersionManifest":
            raise ManifestError(
                f"{_WHAT}: root element is {root.local}, expected PluginVersionManifest"
            )
        versions: list[PackageVersion] = []
        for section, internal in (("Plugins", False), ("InternalPlugins", True)):
            node = root.child(root.namespace, section)
            for plugin in node.children(root.namespace, "Plugin") if node is not None else []:
                versions.append(_package(plugin, internal, root.namespace))
    except xmlsafe.XmlError as e:
        raise ManifestError(e.reason) from None
    except naming.NameRefused as e:
        raise ManifestError(f"{_WHAT}: {e.reason}") from None
    return Manifest(tuple(versions))


def _package(plugin: Element, internal: bool, namespace: str) -> PackageVersion:
    version = naming.check_version(plugin.require(namespace, "Version").text(strip=True))
    uris_node = plugin.child(namespace, "Uris")
    uris: list[str] = []
    for node in uris_node.children(namespace, "Uri") if uris_node is not None else []:
        uri = naming.check_url(node.text(strip=True), f"a URI of version {version}")
        if uri not in uris:
            uris.append(uri)
    disallow = plugin.child(namespace, "DisallowMajorVersionUpgrade")
    return PackageVersion(
        version=version,
        uris=tuple(uris),
        internal=internal,
        disallow_major_upgrade=disallow is not None and disallow.text(strip=True).lower() == "true",
    )


def matches(requested: str, version: str) -> bool:
    """Whether ``version`` is one the goal state's ``requested`` prefix asks for.

    By components, not characters: "1.3" matches 1.3.0 and 1.3.7, not 1.30.
    """
    wanted = naming.version_key(requested)
    return naming.version_key(version)[: len(wanted)] == wanted


def pick(manifest: Manifest, requested: str) -> PackageVersion:
    """The highest version matching ``requested``; public and internal ones alike.

    The first listed wins between equal versions. No match is an error that
    names the requested version and what the manifest offers.
    """
    naming.check_version(requested, "requested version")
    candidates = [p for p in manifest.versions if matches(requested, p.version)]
    if not candidates:
        offered = ", ".join(p.version for p in manifest.versions[:20]) or "none"
        more = " ..." if len(manifest.versions) > 20 else ""
        raise NoMatchingVersion(
            f"version {requested} is not in the extension manifest (it lists {offered}{more})"
        )
    return max(candidates, key=lambda p: naming.version_key(p.version))
