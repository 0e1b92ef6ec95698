"""Extension goal-state documents: ExtensionsConfig, vmSettings and manifests.

The builders give the platform's shapes (samples in
tests/fixtures/walinuxagent/wire and .../hostgaplugin); the emulator serves
them and the extension handler will parse them. Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional
from xml.sax.saxutils import escape, quoteattr


@dataclass(frozen=True)
class HandlerSettings:
    public_settings: dict[str, Any] = field(default_factory=dict)
    protected_settings: Optional[str] = None  # base64 CMS, encrypted to a tenant certificate
    thumbprint: Optional[str] = None


# What an extension waits for: (handler, extension of a multi-config handler or None).
Dependency = tuple[str, Optional[str]]


@dataclass(frozen=True)
class MultiConfigExtension:
    """One named extension of a multi-config handler: its own settings, state and order."""

    name: str
    seq_no: int = 0
    state: str = "enabled"
    settings: HandlerSettings = field(default_factory=HandlerSettings)
    dependency_level: Optional[int] = None
    depends_on: tuple[Dependency, ...] = ()


@dataclass(frozen=True)
class Plugin:
    name: str
    version: str
    location: str  # manifest URL
    state: str = "enabled"
    seq_no: int = 0
    settings: Optional[HandlerSettings] = None
    failover_location: Optional[str] = None
    # Where the handler runs in the goal state's order (DependsOn); None: no DependsOn.
    dependency_level: Optional[int] = None
    depends_on: tuple[Dependency, ...] = ()
    # A multi-config handler's extensions; empty for a single-config handler.
    extensions: tuple[MultiConfigExtension, ...] = ()


@dataclass(frozen=True)
class ExtensionsGoalState:
    incarnation: int
    plugins: tuple[Plugin, ...]
    status_upload_blob: str
    status_blob_type: str = "BlockBlob"
    activity_id: str = "00000000-0000-0000-0000-000000000000"
    correlation_id: str = "00000000-0000-0000-0000-000000000000"
    in_svd_seq_no: int = 1
    # When the goal state was made (.NET ticks). ExtensionsConfig and vmSettings
    # of one goal state carry the same value; clients compare them.
    created_ticks: int = 637726657706205217
    ga_manifest: str = ""
    required_features: tuple[str, ...] = ()  # e.g. MultipleExtensionsPerHandler


def _depends_on_xml(level: int, depends_on: tuple[Dependency, ...], name: str = "") -> str:
    named = f" name={quoteattr(name)}" if name else ""
    parts = [f'<DependsOn dependencyLevel="{level}"{named}>']
    for handler, extension in depends_on:
        on = f"extension={quoteattr(extension)} " if extension else ""
        parts.append(f"<DependsOnExtension {on}handler={quoteattr(handler)} />")
    parts.append("</DependsOn>")
    return "".join(parts)


def _depends_on_json(
    level: int, depends_on: tuple[Dependency, ...], name: str = ""
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "dependsOnExtension": [
            {"extension": extension, "handler": handler} if extension else {"handler": handler}
            for handler, extension in depends_on
        ],
        "dependencyLevel": level,
    }
    if name:
        entry["name"] = name
    return entry


def _required_features_xml(features: tuple[str, ...]) -> str:
    if not features:
        return ""
    named = "".join(
        f"<RequiredFeature><Name>{escape(feature)}</Name></RequiredFeature>" for feature in features
    )
    return f"<RequiredFeatures>{named}</RequiredFeatures>"


def _runtime_settings(settings: HandlerSettings) -> str:
    handler: dict[str, Any] = {"publicSettings": settings.public_settings}
    if settings.protected_settings is not None:
        handler["protectedSettingsCertThumbprint"] = settings.thumbprint
        handler["protectedSettings"] = settings.protected_settings
    return json.dumps({"runtimeSettings": [{"handlerSettings": handler}]}, sort_keys=True)


def extensions_config_xml(goal: ExtensionsGoalState, *, location: str = "eastus") -> bytes:
    """ExtensionsConfig in the shape the platform sends today (see hibernate/ samples)."""
    uris = f"<Uri>{escape(goal.ga_manifest)}</Uri>" if goal.ga_manifest else ""
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>\n',
        f'<Extensions version="1.0.0.0" goalStateIncarnation="{goal.incarnation}">',
        '<GuestAgentExtension xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><GAFamilies>',
        "<GAFamily><IsVMEnabledForRSMUpgrades>false</IsVMEnabledForRSMUpgrades>",
        "<IsVersionFromRSM>false</IsVersionFromRSM><Name>Prod</Name>",
        f"<Uris>{uris}</Uris><Version>0.0.0.0</Version></GAFamily></GAFamilies>",
        f"<Location>{escape(location)}</Location><ServiceName>CRP</ServiceName>",
        "</GuestAgentExtension>",
        _required_features_xml(goal.required_features),
        f"<StatusUploadBlob statusBlobType={quoteattr(goal.status_blob_type)}>"
        f"{escape(goal.status_upload_blob)}</StatusUploadBlob>",
        "<Plugins>",
    ]
    for plugin in goal.plugins:
        failover = plugin.failover_location or plugin.location
        parts.append(
            f"<Plugin name={quoteattr(plugin.name)} version={quoteattr(plugin.version)} "
            f"location={quoteattr(plugin.location)} state={quoteattr(plugin.state)} "
            f'autoUpgrade="false" failoverlocation={quoteattr(failover)} '
            'runAsStartupTask="false" isJson="true" useExactVersion="true">'
            f"<additionalLocations><additionalLocation>{escape(failover)}"
            "</additionalLocation></additionalLocations></Plugin>"
        )
    parts.append("</Plugins><PluginSettings>")
    for plugin in goal.plugins:
        if plugin.settings is None and not plugin.extensions and plugin.dependency_level is None:
            continue
        parts.append(f"<Plugin name={quoteattr(plugin.name)} version={quoteattr(plugin.version)}>")
        if plugin.extensions:
            parts += [
                _depends_on_xml(extension.dependency_level, extension.depends_on, extension.name)
                for extension in plugin.extensions
                if extension.dependency_level is not None
            ]
            parts += [
                f'<ExtensionRuntimeSettings seqNo="{extension.seq_no}" '
                f"name={quoteattr(extension.name)} state={quoteattr(extension.state)}>"
                f"{escape(_runtime_settings(extension.settings))}</ExtensionRuntimeSettings>"
                for extension in plugin.extensions
            ]
        else:
            if plugin.dependency_level is not None:
                parts.append(_depends_on_xml(plugin.dependency_level, plugin.depends_on))
            if plugin.settings is not None:
                parts.append(
                    f'<RuntimeSettings seqNo="{plugin.seq_no}">'
                    f"{escape(_runtime_settings(plugin.settings))}</RuntimeSettings>"
                )
        parts.append("</Plugin>")
    parts.append("</PluginSettings>")
    parts.append(
        f'<InVMGoalStateMetaData inSvdSeqNo="{goal.in_svd_seq_no}" '
        f'createdOnTicks="{goal.created_ticks}" '
        f"activityId={quoteattr(goal.activity_id)} "
        f"correlationId={quoteattr(goal.correlation_id)} />"
    )
    parts.append("</Extensions>\n")
    return "".join(parts).encode()


def vm_settings_json(
    goal: ExtensionsGoalState, *, vm_id: str, vm_name: str, location: str
) -> bytes:
    """The HostGAPlugin's vmSettings document for the same goal state."""
    extensions = []
    for plugin in goal.plugins:
        entry: dict[str, Any] = {
            "name": plugin.name,
            "version": plugin.version,
            "location": plugin.location,
            "failoverlocation": plugin.failover_location or plugin.location,
            "additionalLocations": [plugin.failover_location or plugin.location],
            "state": plugin.state,
            "autoUpgrade": False,
            "runAsStartupTask": False,
            "isJson": True,
            "useExactVersion": True,
            "settingsSeqNo": plugin.seq_no,
            "settings": [],
        }
        depends_on: list[dict[str, Any]] = []
        if plugin.extensions:
            entry["isMultiConfig"] = True
            entry["settings"] = [
                {
                    **_settings_json(extension.settings),
                    "seqNo": extension.seq_no,
                    "extensionName": extension.name,
                    "extensionState": extension.state,
                }
                for extension in plugin.extensions
            ]
            depends_on = [
                _depends_on_json(extension.dependency_level, extension.depends_on, extension.name)
                for extension in plugin.extensions
                if extension.dependency_level is not None
            ]
        else:
            if plugin.settings is not None:
                entry["settings"] = [_settings_json(plugin.settings)]
            if plugin.dependency_level is not None:
                depends_on = [_depends_on_json(plugin.dependency_level, plugin.depends_on)]
        if depends_on:
            entry["dependsOn"] = depends_on
        extensions.append(entry)
    document = {
        "hostGAPluginVersion": "1.0.8.133",
        "vmSettingsSchemaVersion": "0.0",
        "activityId": goal.activity_id,
        "correlationId": goal.correlation_id,
        "inSvdSeqNo": goal.in_svd_seq_no,
        "extensionsLastModifiedTickCount": goal.created_ticks,
        "extensionGoalStatesSource": "FastTrack",
        "onHold": False,
        "statusUploadBlob": {
            "statusBlobType": goal.status_blob_type,
            "value": goal.status_upload_blob,
        },
        "inVMMetadata": {
            "subscriptionId": "00000000-0000-0000-0000-000000000000",
            "resourceGroupName": "azagent-emulator",
            "vmName": vm_name,
            "location": location,
            "vmId": vm_id,
            "vmSize": "Standard_D2s_v5",
            "osType": "Linux",
        },
        "requiredFeatures": [{"name": feature} for feature in goal.required_features],
        "gaFamilies": [{"name": "Prod", "uris": [goal.ga_manifest] if goal.ga_manifest else []}],
        "extensionGoalStates": extensions,
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def _settings_json(settings: HandlerSettings) -> dict[str, Any]:
    setting: dict[str, Any] = {
        "publicSettings": json.dumps(settings.public_settings, sort_keys=True)
    }
    if settings.protected_settings is not None:
        setting["protectedSettingsCertThumbprint"] = settings.thumbprint
        setting["protectedSettings"] = settings.protected_settings
    return setting


def manifest_xml(versions: dict[str, list[str]]) -> bytes:
    """A PluginVersionManifest listing each version's package URIs."""
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>\n',
        '<PluginVersionManifest xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><Plugins>',
    ]
    for version, uris in versions.items():
        parts.append(f"<Plugin><Version>{escape(version)}</Version><Uris>")
        parts += [f"<Uri>{escape(uri)}</Uri>" for uri in uris]
        parts.append("</Uris></Plugin>")
    parts.append("</Plugins></PluginVersionManifest>\n")
    return "".join(parts).encode()
