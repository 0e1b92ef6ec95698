"""The extensions goal state: ExtensionsConfig and vmSettings read into one model.

The platform describes the extensions a VM should run twice: the WireServer's
ExtensionsConfig XML (the goal state's ``ExtensionsConfig`` URI, identified by
its incarnation) and the HostGAPlugin's vmSettings JSON (identified by its
ETag). Both parse into :class:`ExtensionsGoalState`, so that everything after
this module (the executor, status, the CLI) sees one shape; :func:`choose`
holds the rule for which of the two a pass acts on (EXTENSIONS.md section 1).

Failure is graded. A document that cannot be used at all (not XML or JSON,
the wrong root, a missing or garbled status blob) raises
:class:`GoalStateError`. A handler whose own entry is wrong (a hostile name,
settings that are not JSON, two settings for a single-config handler) does
not: it comes back as a :class:`Handler` whose ``error`` says what was wrong,
carrying the extension names and sequence numbers that could be read, so
that the service reports an error status for exactly that handler and runs
the others. A handler with an ``error`` is never to be run, and its name is
the raw (bounded) text of the document, not a checked one: never join it to
a path.

Samples: tests/fixtures/walinuxagent/wire/ext_conf*.xml, wire/multi-config,
wire/invalid_config, hostgaplugin/. Protected settings stay the base64 text
the platform sent (the extension decrypts them itself); they and the status
blob's SAS URL are kept out of every ``repr`` and error message. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from azagent import xmlsafe
from azagent.errors import AzagentError
from azagent.extensions import naming
from azagent.extensions.naming import quote
from azagent.xmlsafe import Element

ENABLED = "enabled"
DISABLED = "disabled"
UNINSTALL = "uninstall"
HANDLER_STATES = (ENABLED, DISABLED, UNINSTALL)
# A multi-config extension is enabled or disabled; its handler may be uninstalled.
EXTENSION_STATES = (ENABLED, DISABLED)

# Where a goal state came from (vmSettings' extensionGoalStatesSource) and
# through which endpoint it arrived.
FABRIC = "Fabric"
FAST_TRACK = "FastTrack"
WIRESERVER = "WireServer"
HOSTGAPLUGIN = "HostGAPlugin"

BLOCK_BLOB = "BlockBlob"
PAGE_BLOB = "PageBlob"
BLOB_TYPES = (BLOCK_BLOB, PAGE_BLOB)

ZERO_GUID = "00000000-0000-0000-0000-000000000000"
# Features a goal state may require (RequiredFeatures); a goal state requiring
# another one fails as a whole (code 2001 in the status blob).
MULTI_CONFIG_FEATURE = "MultipleExtensionsPerHandler"
SUPPORTED_FEATURES = (MULTI_CONFIG_FEATURE,)
# HostGAPlugins older than this serve vmSettings WALinuxAgent does not trust.
MIN_VM_SETTINGS_HGAP_VERSION = "1.0.8.133"

# Real documents are tens of kilobytes (a signature is ~13 KB per handler);
# the bound only keeps a hostile one from taking the service's memory.
MAX_DOCUMENT = 4 * 1024 * 1024
_MAX_RAW = 256  # how much of an unusable name an error handler keeps


class GoalStateError(AzagentError):
    """An ExtensionsConfig or vmSettings document that cannot be used at all."""


class HandlerConfigError(AzagentError):
    """One handler's entry is unusable; it becomes that handler's ``error``."""


@dataclass(frozen=True)
class Extension:
    """One runtime setting: the handler's own or, multi-config, one named extension.

    Single-config: ``name`` is the handler's name and ``state`` mirrors the
    handler (enabled, else disabled). Multi-config: the extension's name and
    its own state.
    """

    name: str
    seq_no: int
    state: str = ENABLED
    public_settings: Optional[dict[str, Any]] = None
    protected_settings: Optional[str] = field(default=None, repr=False)  # base64 CMS, as sent
    thumbprint: Optional[str] = None
    dependency_level: int = 0


@dataclass(frozen=True)
class Handler:
    """One extension handler the goal state names (a ``Plugin``)."""

    name: str
    version: str  # the requested version: a prefix for the manifest's versions
    state: str  # enabled, disabled or uninstall
    manifest_uris: tuple[str, ...] = ()  # location, failover location, additional ones
    is_multi_config: bool = False
    extensions: tuple[Extension, ...] = ()
    error: Optional[str] = None  # set: report this as the handler's error, run nothing

    @property
    def dependency_level(self) -> int:
        return min((e.dependency_level for e in self.extensions), default=0)


@dataclass(frozen=True)
class ExtensionsGoalState:
    id: str  # "incarnation_<N>" or "etag_<ETag>": extensions run when it changes
    channel: str  # WIRESERVER or HOSTGAPLUGIN
    source: str  # FABRIC or FAST_TRACK (ExtensionsConfig is always Fabric)
    created_ticks: int  # .NET ticks when the goal state was made: the newer one wins
    svd_seq_no: int  # goalStateAggregateStatus.inSvdSeqNo in the status blob
    activity_id: str
    correlation_id: str
    status_upload_blob: Optional[str] = field(repr=False)  # a SAS URL: never log it
    status_blob_type: str
    handlers: tuple[Handler, ...]
    required_features: tuple[str, ...] = ()
    on_hold: bool = False
    incarnation: Optional[int] = None
    etag: Optional[str] = None
    hgap_version: Optional[str] = None

    def handler(self, name: str) -> Optional[Handler]:
        for handler in self.handlers:
            if handler.name == name:
                return handler
        return None


# --- the rules ----------------------------------------------------------------


def choose(
    extensions_config: Optional[ExtensionsGoalState],
    vm_settings: Optional[ExtensionsGoalState],
    current: Optional[ExtensionsGoalState] = None,
) -> Optional[ExtensionsGoalState]:
    """The extensions goal state to act on (EXTENSIONS.md section 1).

    vmSettings whose source is Fabric are ignored (they may need a tenant
    certificate they do not name); of the rest, the newer by creation ticks
    wins, ExtensionsConfig on a tie; and a goal state older than ``current``
    (the one acted on last) never replaces it.
    """
    candidates = [
        goal
        for goal in (extensions_config, vm_settings)
        if goal is not None and not (goal.channel == HOSTGAPLUGIN and goal.source == FABRIC)
    ]
    if not candidates:
        return current
    newest = candidates[0]
    for goal in candidates[1:]:
        if goal.created_ticks > newest.created_ticks:
            newest = goal
    if current is not None and newest.created_ticks < current.created_ticks:
        return current
    return newest


def unsupported_features(
    goal: ExtensionsGoalState, supported: Iterable[str] = SUPPORTED_FEATURES
) -> tuple[str, ...]:
    known = set(supported)
    return tuple(name for name in goal.required_features if name not in known)


def processing_order(goal: ExtensionsGoalState) -> tuple[tuple[Handler, Optional[Extension]], ...]:
    """Every handler's extensions (or the handler alone, without settings), in run order.

    Ascending dependencyLevel; what is disabled or uninstalled runs first, in
    reverse level order (a dependency is removed after what depends on it).
    Equal keys keep the document's order.
    """

    def key(item: tuple[Handler, Optional[Extension]]) -> int:
        handler, extension = item
        if extension is None:
            level, active = handler.dependency_level, handler.state == ENABLED
        else:
            level = extension.dependency_level
            active = handler.state == ENABLED and extension.state == ENABLED
        return level if active else -level - 1

    items: list[tuple[Handler, Optional[Extension]]] = []
    for handler in goal.handlers:
        if handler.extensions:
            items.extend((handler, extension) for extension in handler.extensions)
        else:
            items.append((handler, None))
    return tuple(sorted(items, key=key))


def hgap_supports_vm_settings(version: Optional[str]) -> bool:
    """Whether a HostGAPlugin of this version serves vmSettings worth acting on."""
    try:
        return naming.version_key(version or "") >= naming.version_key(MIN_VM_SETTINGS_HGAP_VERSION)
    except naming.NameRefused:
        return False


# --- shared pieces ------------------------------------------------------------


def _raw(value: object) -> str:
    """What an error handler keeps of a value it could not use: text, bounded."""
    return value[:_MAX_RAW] if isinstance(value, str) else ""


def _state(value: object, allowed: tuple[str, ...], role: str) -> str:
    if isinstance(value, str) and value.strip().lower() in allowed:
        return value.strip().lower()
    raise HandlerConfigError(f"{role} {quote(value)} is not one of {', '.join(allowed)}")


def _uri(value: object, role: str) -> str:
    try:
        return naming.check_url(value, role)
    except naming.NameRefused as e:
        raise HandlerConfigError(e.reason) from None


def _uris(values: Iterable[tuple[object, str]]) -> tuple[str, ...]:
    """The manifest URIs in order, empty and repeated ones dropped."""
    found: list[str] = []
    for value, role in values:
        if value is None or value == "":
            continue
        uri = _uri(value, role)
        if uri not in found:
            found.append(uri)
    return tuple(found)


def _ticks(value: object, what: str) -> int:
    if value is None or value == "":
        return 0
    try:
        return naming.bounded_int(value, "creation ticks", 2**63 - 1)
    except naming.NameRefused as e:
        raise GoalStateError(f"{what}: {e.reason}") from None


def _id_text(value: object) -> str:
    """An activity or correlation id; absent or empty is the zero GUID."""
    if isinstance(value, str) and value:
        return value[:_MAX_RAW]
    return ZERO_GUID


def _blob_type(value: object) -> str:
    # WALinuxAgent treats an unknown type as a block blob; so do we.
    return value if isinstance(value, str) and value in BLOB_TYPES else BLOCK_BLOB


def _settings(
    handler_settings: object,
    *,
    name: str,
    seq_no: int,
    state: str,
    level: int,
    public_is_text: bool,
) -> Extension:
    """An :class:`Extension` from a handlerSettings object (either channel's shape)."""
    if not isinstance(handler_settings, Mapping):
        raise HandlerConfigError(f"the settings of {quote(name)} are not a JSON object")
    public = _ci(handler_settings, "publicSettings")
    if public_is_text and isinstance(public, str):
        try:
            public = json.loads(public)
        except (ValueError, RecursionError) as e:
            raise HandlerConfigError(
                f"publicSettings of {quote(name)} are not valid JSON ({_json_problem(e)})"
            ) from None
    if public is not None and not isinstance(public, dict):
        raise HandlerConfigError(f"publicSettings of {quote(name)} are not a JSON object")
    protected = _ci(handler_settings, "protectedSettings")
    if protected is not None and not isinstance(protected, str):
        raise HandlerConfigError(f"protectedSettings of {quote(name)} are not a string")
    thumbprint = _ci(handler_settings, "protectedSettingsCertThumbprint")
    if thumbprint is not None:
        thumbprint = naming.check_thumbprint(thumbprint)
    elif protected:
        raise HandlerConfigError(
            f"protectedSettings of {quote(name)} name no certificate thumbprint"
        )
    return Extension(
        name=name,
        seq_no=seq_no,
        state=state,
        public_settings=public,
        protected_settings=protected,
        thumbprint=thumbprint,
        dependency_level=level,
    )


def _json_problem(error: BaseException) -> str:
    # json's messages name a position, never content; keep only that.
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return "not JSON"


def _ci(mapping: Mapping[str, Any], key: str) -> Any:
    """``mapping[key]`` ignoring case: vmSettings spell some keys both ways."""
    if key in mapping:
        return mapping[key]
    folded = key.casefold()
    for candidate, value in mapping.items():
        if isinstance(candidate, str) and candidate.casefold() == folded:
            return value
    return None


def _mark_duplicates(handlers: list[Handler]) -> tuple[Handler, ...]:
    """Two entries for one handler (names compare without case) are both errors."""
    counts: dict[str, int] = {}
    for handler in handlers:
        counts[handler.name.casefold()] = counts.get(handler.name.casefold(), 0) + 1
    result = []
    for handler in handlers:
        if counts[handler.name.casefold()] > 1 and handler.error is None:
            result.append(
                Handler(
                    name=handler.name,
                    version=handler.version,
                    state=handler.state,
                    is_multi_config=handler.is_multi_config,
                    extensions=_identities(handler.extensions),
                    error="the goal state names this handler more than once",
                )
            )
        else:
            result.append(handler)
    return tuple(result)


def _identities(extensions: Iterable[Extension]) -> tuple[Extension, ...]:
    """Only what names an extension in a status report: no settings."""
    return tuple(Extension(name=e.name, seq_no=e.seq_no, state=e.state) for e in extensions)


def _error_handler(
    name: object, version: object, state: object, error: AzagentError, seen: list[Extension]
) -> Handler:
    raw_state = state.strip().lower() if isinstance(state, str) else ""
    return Handler(
        name=_raw(name),
        version=_raw(version),
        state=raw_state if raw_state in HANDLER_STATES else ENABLED,
        extensions=_identities(seen),
        error=error.reason,
    )


def _unique_extension_names(extensions: Iterable[Extension]) -> None:
    seen: set[str] = set()
    for extension in extensions:
        if extension.name.casefold() in seen:
            raise HandlerConfigError(f"extension {quote(extension.name)} appears more than once")
        seen.add(extension.name.casefold())


# --- ExtensionsConfig (WireServer) ----------------------------------------------

_WHAT_XML = "ExtensionsConfig"


def parse_extensions_config(data: bytes, incarnation: Optional[int] = None) -> ExtensionsGoalState:
    """The WireServer's ExtensionsConfig; ``incarnation`` is the goal state's.

    Without ``incarnation`` the document's own goalStateIncarnation is used.
    """
    try:
        root = Element.root(
            xmlsafe.parse(data, what=_WHAT_XML, max_bytes=MAX_DOCUMENT), what=_WHAT_XML
        )
    except xmlsafe.XmlError as e:
        raise GoalStateError(e.reason) from None
    if not root.is_("", "Extensions"):
        raise GoalStateError(f"{_WHAT_XML}: root element is {root.local}, expected Extensions")
    try:
        return _extensions_config(root, incarnation)
    except (xmlsafe.XmlError, HandlerConfigError, naming.NameRefused) as e:
        raise GoalStateError(f"{_WHAT_XML}: {e.reason}") from None


def _extensions_config(root: Element, incarnation: Optional[int]) -> ExtensionsGoalState:
    if incarnation is None:
        attribute = root.attribute("", "goalStateIncarnation")
        if attribute is None:
            raise GoalStateError(f"{_WHAT_XML}: no incarnation (goalStateIncarnation is missing)")
        incarnation = naming.check_seq_no(attribute, "goalStateIncarnation")
    settings: dict[str, list[Element]] = {}
    plugin_settings = root.child("", "PluginSettings")
    for node in plugin_settings.children("", "Plugin") if plugin_settings is not None else []:
        settings.setdefault((node.attribute("", "name") or "").casefold(), []).append(node)
    plugins = root.child("", "Plugins")
    handlers = [
        _xml_handler(plugin, settings)
        for plugin in (plugins.children("", "Plugin") if plugins is not None else [])
    ]

    blob = root.child("", "StatusUploadBlob")
    blob_url = blob.text(strip=True) if blob is not None else ""
    metadata = root.child("", "InVMGoalStateMetaData")

    def meta(name: str) -> Optional[str]:
        return metadata.attribute("", name) if metadata is not None else None

    required = root.child("", "RequiredFeatures")
    features = tuple(
        node.require("", "Name").text(strip=True)
        for node in (required.children("", "RequiredFeature") if required is not None else [])
    )
    return ExtensionsGoalState(
        id=f"incarnation_{incarnation}",
        channel=WIRESERVER,
        source=FABRIC,
        created_ticks=_ticks(meta("createdOnTicks"), _WHAT_XML),
        # WALinuxAgent reports the incarnation as the goal state's sequence number.
        svd_seq_no=incarnation,
        activity_id=_id_text(meta("activityId")),
        correlation_id=_id_text(meta("correlationId")),
        status_upload_blob=_uri(blob_url, "StatusUploadBlob") if blob_url else None,
        status_blob_type=_blob_type(
            blob.attribute("", "statusBlobType") if blob is not None else None
        ),
        handlers=_mark_duplicates(handlers),
        required_features=features,
        incarnation=incarnation,
    )


def _xml_handler(plugin: Element, settings: Mapping[str, list[Element]]) -> Handler:
    raw_name = plugin.attribute("", "name")
    raw_version = plugin.attribute("", "version")
    raw_state = plugin.attribute("", "state")
    seen: list[Extension] = []
    try:
        name = naming.check_handler_name(raw_name)
        version = naming.check_version(raw_version)
        state = _state(raw_state, HANDLER_STATES, "state")
        additional = plugin.child("", "additionalLocations")
        uris = _uris(
            [
                (plugin.attribute("", "location"), "location"),
                (plugin.attribute("", "failoverlocation"), "failoverlocation"),
            ]
            + [
                (node.text(strip=True), "additionalLocation")
                for node in (
                    additional.children("", "additionalLocation") if additional is not None else []
                )
            ]
        )
        nodes = settings.get(name.casefold(), [])
        multi, extensions = _xml_settings(name, version, state, nodes, seen)
        return Handler(name, version, state, uris, multi, extensions)
    except (HandlerConfigError, naming.NameRefused, xmlsafe.XmlError) as e:
        return _error_handler(raw_name, raw_version, raw_state, e, seen)


def _xml_settings(
    name: str, version: str, state: str, nodes: list[Element], seen: list[Extension]
) -> tuple[bool, tuple[Extension, ...]]:
    if not nodes:
        return False, ()
    versions = sorted({node.attribute("", "version") or "" for node in nodes})
    if versions != [version]:
        raise HandlerConfigError(
            f"PluginSettings are for version {', '.join(map(quote, versions))},"
            f" the handler is version {version}"
        )
    if len(nodes) > 1:
        raise HandlerConfigError(f"{len(nodes)} PluginSettings name this handler, expected one")
    node = nodes[0]
    single = node.children("", "RuntimeSettings")
    multi = node.children("", "ExtensionRuntimeSettings")
    depends_on = node.children("", "DependsOn")
    if single and multi:
        raise HandlerConfigError("both RuntimeSettings and ExtensionRuntimeSettings are given")
    if single:
        if len(single) > 1:
            raise HandlerConfigError(f"{len(single)} RuntimeSettings, expected one")
        if len(depends_on) > 1:
            raise HandlerConfigError(f"{len(depends_on)} DependsOn, expected one")
        level = _xml_level(depends_on[0]) if depends_on else 0
        seq_no = naming.check_seq_no(single[0].attribute("", "seqNo"), "seqNo")
        own_state = ENABLED if state == ENABLED else DISABLED
        seen.append(Extension(name, seq_no, own_state))
        return False, (_xml_runtime_settings(single[0], name, seq_no, own_state, level),)
    levels: dict[str, int] = {}
    for dependency in depends_on:
        target = dependency.attribute("", "name")
        if not target:
            raise HandlerConfigError("a DependsOn of a multi-config handler names no extension")
        levels[target] = _xml_level(dependency)
    extensions = []
    for setting in multi:
        extension_name = naming.check_extension_name(setting.attribute("", "name"))
        seq_no = naming.check_seq_no(setting.attribute("", "seqNo"), "seqNo")
        raw = setting.attribute("", "state")
        extension_state = _state(raw, EXTENSION_STATES, "extension state") if raw else ENABLED
        seen.append(Extension(extension_name, seq_no, extension_state))
        extensions.append(
            _xml_runtime_settings(
                setting, extension_name, seq_no, extension_state, levels.get(extension_name, 0)
            )
        )
    _unique_extension_names(extensions)
    return True, tuple(extensions)


def _xml_level(depends_on: Element) -> int:
    # An empty <DependsOn /> (a real sample) means no dependency.
    level = depends_on.attribute("", "dependencyLevel")
    return naming.check_dependency_level(level) if level else 0


def _xml_runtime_settings(
    node: Element, name: str, seq_no: int, state: str, level: int
) -> Extension:
    try:
        document = json.loads(node.text())
    except (ValueError, RecursionError) as e:
        raise HandlerConfigError(
            f"the runtime settings of {quote(name)} are not valid JSON ({_json_problem(e)})"
        ) from None
    entries = document.get("runtimeSettings") if isinstance(document, dict) else None
    if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
        raise HandlerConfigError(
            f"the runtime settings of {quote(name)} are not one runtimeSettings entry"
        )
    return _settings(
        entries[0].get("handlerSettings"),
        name=name,
        seq_no=seq_no,
        state=state,
        level=level,
        public_is_text=False,
    )


# --- vmSettings (HostGAPlugin) --------------------------------------------------

_WHAT_JSON = "vmSettings"


def parse_vm_settings(data: bytes, etag: str) -> ExtensionsGoalState:
    """The HostGAPlugin's vmSettings; ``etag`` is the response's ETag header."""
    if not isinstance(data, bytes):
        raise GoalStateError(f"{_WHAT_JSON}: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_DOCUMENT:
        raise GoalStateError(f"{_WHAT_JSON}: {len(data)} bytes, over the limit of {MAX_DOCUMENT}")
    if not etag or len(etag) > _MAX_RAW or not etag.isprintable():
        raise GoalStateError(f"{_WHAT_JSON}: the ETag {quote(etag)} is unusable")
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise GoalStateError(f"{_WHAT_JSON}: not valid UTF-8 (at byte {e.start})") from None
    except (ValueError, RecursionError) as e:
        raise GoalStateError(f"{_WHAT_JSON}: not valid JSON ({_json_problem(e)})") from None
    if not isinstance(document, dict):
        raise GoalStateError(f"{_WHAT_JSON}: not a JSON object")
    try:
        return _vm_settings(document, etag)
    except (HandlerConfigError, naming.NameRefused) as e:
        raise GoalStateError(f"{_WHAT_JSON}: {e.reason}") from None


def _vm_settings(document: Mapping[str, Any], etag: str) -> ExtensionsGoalState:
    blob = _ci(document, "statusUploadBlob")
    if blob is not None and not isinstance(blob, dict):
        raise GoalStateError(f"{_WHAT_JSON}: statusUploadBlob is not an object")
    blob_url = _ci(blob, "value") if blob else None
    if blob is not None and blob_url is None:
        raise GoalStateError(f"{_WHAT_JSON}: statusUploadBlob has no value")
    features = _absent_is_empty(_ci(document, "requiredFeatures"))
    if not isinstance(features, list) or not all(
        isinstance(f, dict) and isinstance(_ci(f, "name"), str) for f in features
    ):
        raise GoalStateError(f"{_WHAT_JSON}: requiredFeatures is not a list of named features")
    entries = _absent_is_empty(_ci(document, "extensionGoalStates"))
    if not isinstance(entries, list):
        raise GoalStateError(f"{_WHAT_JSON}: extensionGoalStates is not a list")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise GoalStateError(f"{_WHAT_JSON}: extensionGoalStates[{index}] is not an object")
    hgap = _ci(document, "hostGAPluginVersion")
    source = _ci(document, "extensionGoalStatesSource")
    on_hold = _ci(document, "onHold")
    return ExtensionsGoalState(
        id=f"etag_{etag}",
        channel=HOSTGAPLUGIN,
        source=source[:_MAX_RAW] if isinstance(source, str) and source else "Unknown",
        created_ticks=_ticks(_ci(document, "extensionsLastModifiedTickCount"), _WHAT_JSON),
        svd_seq_no=_svd_seq_no(_ci(document, "inSvdSeqNo")),
        activity_id=_id_text(_ci(document, "activityId")),
        correlation_id=_id_text(_ci(document, "correlationId")),
        status_upload_blob=_uri(blob_url, "statusUploadBlob") if blob_url else None,
        status_blob_type=_blob_type(_ci(blob, "statusBlobType") if blob else None),
        handlers=_mark_duplicates([_json_handler(entry) for entry in entries]),
        required_features=tuple(_ci(f, "name") for f in features),
        on_hold=on_hold is True,
        etag=etag,
        hgap_version=hgap[:_MAX_RAW] if isinstance(hgap, str) else None,
    )


def _svd_seq_no(value: object) -> int:
    if value is None or value == "":
        return 0
    try:
        return naming.check_seq_no(value, "inSvdSeqNo")
    except naming.NameRefused as e:
        raise GoalStateError(f"{_WHAT_JSON}: {e.reason}") from None


def _json_handler(entry: Mapping[str, Any]) -> Handler:
    raw_name, raw_version, raw_state = (_ci(entry, k) for k in ("name", "version", "state"))
    seen: list[Extension] = []
    try:
        name = naming.check_handler_name(raw_name)
        version = naming.check_version(raw_version)
        state = _state(raw_state, HANDLER_STATES, "state")
        multi = _ci(entry, "isMultiConfig")
        if multi is not None and not isinstance(multi, bool):
            raise HandlerConfigError(f"isMultiConfig is not true or false: {quote(multi)}")
        additional = _absent_is_empty(_ci(entry, "additionalLocations"))
        if not isinstance(additional, list):
            raise HandlerConfigError("additionalLocations is not a list")
        uris = _uris(
            [
                (_ci(entry, "location"), "location"),
                (_ci(entry, "failoverLocation"), "failoverLocation"),
            ]
            + [(uri, "additionalLocation") for uri in additional]
        )
        extensions = _json_settings(entry, name, state, multi is True, seen)
        return Handler(name, version, state, uris, multi is True, extensions)
    except (HandlerConfigError, naming.NameRefused) as e:
        return _error_handler(raw_name, raw_version, raw_state, e, seen)


def _json_settings(
    entry: Mapping[str, Any], name: str, state: str, multi: bool, seen: list[Extension]
) -> tuple[Extension, ...]:
    settings = _absent_is_empty(_ci(entry, "settings"))
    if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
        raise HandlerConfigError("settings is not a list of objects")
    depends_on = _absent_is_empty(_ci(entry, "dependsOn"))
    if not isinstance(depends_on, list) or not all(isinstance(d, dict) for d in depends_on):
        raise HandlerConfigError("dependsOn is not a list of objects")
    if not multi:
        if len(settings) > 1:
            raise HandlerConfigError(f"a single-config handler with {len(settings)} settings")
        if len(depends_on) > 1:
            raise HandlerConfigError(f"{len(depends_on)} dependsOn entries, expected one")
        level = _json_level(depends_on[0]) if depends_on else 0
        if not settings:
            return ()
        seq_no = naming.check_seq_no(_ci(entry, "settingsSeqNo"), "settingsSeqNo")
        own_state = ENABLED if state == ENABLED else DISABLED
        seen.append(Extension(name, seq_no, own_state))
        return (
            _settings(
                settings[0],
                name=name,
                seq_no=seq_no,
                state=own_state,
                level=level,
                public_is_text=True,
            ),
        )
    levels: dict[str, int] = {}
    for dependency in depends_on:
        target = _ci(dependency, "name")
        if not isinstance(target, str) or not target:
            raise HandlerConfigError("a dependsOn entry of a multi-config handler has no name")
        levels[target] = _json_level(dependency)
    extensions = []
    for setting in settings:
        extension_name = naming.check_extension_name(_ci(setting, "extensionName"))
        seq_no = naming.check_seq_no(_ci(setting, "seqNo"), "seqNo")
        raw = _ci(setting, "extensionState")
        extension_state = (
            _state(raw, EXTENSION_STATES, "extensionState") if raw is not None else ENABLED
        )
        seen.append(Extension(extension_name, seq_no, extension_state))
        extensions.append(
            _settings(
                setting,
                name=extension_name,
                seq_no=seq_no,
                state=extension_state,
                level=levels.get(extension_name, 0),
                public_is_text=True,
            )
        )
    _unique_extension_names(extensions)
    return tuple(extensions)


def _absent_is_empty(value: object) -> Any:
    """A JSON member that may be left out; only null (or absence) stands for an empty list."""
    return [] if value is None else value


def _json_level(dependency: Mapping[str, Any]) -> int:
    level = _ci(dependency, "dependencyLevel")
    return naming.check_dependency_level(level) if level is not None else 0
