"""WireServer documents: one definition of each, for the agent and the emulator.

Builders return the XML bytes the platform (or the agent) sends; parsers turn
received bytes into plain objects. Both are pure: no I/O, no HTTP. The shapes
(elements, namespaces, attributes) follow the platform's real documents, of
which tests/fixtures/walinuxagent/wire holds samples.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape, quoteattr

from azagent import xmlsafe
from azagent.errors import refusing
from azagent.xmlsafe import Element

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Optional

PROTOCOL_VERSION = "2012-11-30"
HOSTGAPLUGIN_VERSION = "2015-09-01"
XML_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>\n'

# Health states and sub-states the platform understands.
READY = "Ready"
NOT_READY = "NotReady"
SUBSTATUS_PROVISIONING = "Provisioning"
SUBSTATUS_FAILED = "ProvisioningFailed"

# The platform rejects long descriptions; 512 characters is a safe cap.
MAX_DESCRIPTION = 512


def _text(value: object) -> str:
    return escape(str(value))


class ConfigUris:
    """The per-incarnation configuration documents a goal state points to."""

    __slots__ = (
        "certificates",
        "config_name",
        "extensions_config",
        "full_config",
        "hosting_environment",
        "shared_config",
    )

    def __init__(
        self,
        *,
        hosting_environment: str,
        shared_config: str,
        extensions_config: Optional[str],
        full_config: str,
        certificates: Optional[str],
        config_name: str,
    ) -> None:
        self.hosting_environment: Final = hosting_environment
        self.shared_config: Final = shared_config
        self.extensions_config: Final = extensions_config
        self.full_config: Final = full_config
        self.certificates: Final = certificates
        self.config_name: Final = config_name


class GoalState:
    __slots__ = ("container_id", "expected_state", "incarnation", "instance_id", "uris")

    def __init__(
        self,
        incarnation: int,
        container_id: str,
        instance_id: str,
        uris: ConfigUris,
        expected_state: str = "Started",
    ) -> None:
        self.incarnation: Final = incarnation
        self.container_id: Final = container_id
        self.instance_id: Final = instance_id
        self.uris: Final = uris
        self.expected_state: Final = expected_state


class HealthReport:
    __slots__ = ("container_id", "description", "incarnation", "instance_id", "state", "substatus")

    def __init__(  # noqa: PLR0917 (the document's fields, in its order)
        self,
        incarnation: int,
        container_id: str,
        instance_id: str,
        state: str,  # READY or NOT_READY
        substatus: Optional[str] = None,
        description: Optional[str] = None,
    ) -> None:
        self.incarnation: Final = incarnation
        self.container_id: Final = container_id
        self.instance_id: Final = instance_id
        self.state: Final = state
        self.substatus: Final = substatus
        self.description: Final = description


class Versions:
    __slots__ = ("preferred", "supported")

    def __init__(self, preferred: str, supported: tuple[str, ...] = ()) -> None:
        self.preferred: Final = preferred
        self.supported: Final = supported


def versions_xml(
    preferred: str = PROTOCOL_VERSION, supported: tuple[str, ...] = ("2010-12-15", "2010-28-10")
) -> bytes:
    lines = [XML_DECLARATION, "<Versions>\n  <Preferred>\n"]
    lines.append(f"    <Version>{_text(preferred)}</Version>\n  </Preferred>\n  <Supported>\n")
    lines += [f"    <Version>{_text(version)}</Version>\n" for version in supported]
    lines.append("  </Supported>\n</Versions>\n")
    return "".join(lines).encode()


def goal_state_xml(goal: GoalState) -> bytes:
    uris = goal.uris
    optional = ""
    if uris.extensions_config is not None:
        optional += f"<ExtensionsConfig>{_text(uris.extensions_config)}</ExtensionsConfig>"
    certificates = ""
    if uris.certificates is not None:
        certificates = f"<Certificates>{_text(uris.certificates)}</Certificates>"
    return (
        XML_DECLARATION + '<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:noNamespaceSchemaLocation="goalstate10.xsd">'
        "<Version>2012-11-30</Version>"
        f"<Incarnation>{goal.incarnation}</Incarnation>"
        "<Machine><ExpectedState>Started</ExpectedState>"
        "<StopRolesDeadlineHint>300000</StopRolesDeadlineHint>"
        "<LBProbePorts><Port>16001</Port></LBProbePorts>"
        "<ExpectHealthReport>FALSE</ExpectHealthReport></Machine>"
        "<Container>"
        f"<ContainerId>{_text(goal.container_id)}</ContainerId>"
        "<RoleInstanceList><RoleInstance>"
        f"<InstanceId>{_text(goal.instance_id)}</InstanceId>"
        f"<State>{_text(goal.expected_state)}</State>"
        "<Configuration>"
        f"<HostingEnvironmentConfig>{_text(uris.hosting_environment)}</HostingEnvironmentConfig>"
        f"<SharedConfig>{_text(uris.shared_config)}</SharedConfig>"
        f"{optional}"
        f"<FullConfig>{_text(uris.full_config)}</FullConfig>"
        f"{certificates}"
        f"<ConfigName>{_text(uris.config_name)}</ConfigName>"
        "</Configuration></RoleInstance></RoleInstanceList></Container></GoalState>\n"
    ).encode()


def hosting_environment_xml(incarnation: int, instance: str, thumbprints: tuple[str, ...]) -> bytes:
    """HostingEnvironmentConfig as the platform sends it today (one entry per certificate)."""
    stored = "".join(
        f"<StoredCertificate name={quoteattr(f'Cert{i}My')} "
        f"certificateId={quoteattr('sha1:' + thumbprint)} "
        'storeName="My" configurationLevel="System" />'
        for i, thumbprint in enumerate(thumbprints)
    )
    return (
        XML_DECLARATION
        + f'<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="{incarnation}">'
        f"<StoredCertificates>{stored}</StoredCertificates>"
        f"<Incarnation number={quoteattr(str(incarnation))} instance={quoteattr(instance)} "
        'guid="{00000000-0000-0000-0000-000000000000}" />'
        "</HostingEnvironmentConfig>\n"
    ).encode()


def shared_config_xml(incarnation: int, instance: str, address: str) -> bytes:
    return (
        XML_DECLARATION + f'<SharedConfig version="1.0.0.0" goalStateIncarnation="{incarnation}">'
        f"<Incarnation number={quoteattr(str(incarnation))} instance={quoteattr(instance)} "
        'guid="{00000000-0000-0000-0000-000000000000}" />'
        f"<Instances><Instance id={quoteattr(instance)} address={quoteattr(address)}>"
        '<FaultDomains randomId="0" updateId="0" updateCount="0" />'
        "<InputEndpoints /></Instance></Instances></SharedConfig>\n"
    ).encode()


def health_xml(report: HealthReport) -> bytes:
    """The health report body; the description is escaped and capped."""
    details = ""
    if report.substatus is not None:
        details = f"<Details><SubStatus>{_text(report.substatus)}</SubStatus>"
        if report.description is not None:
            description = report.description[:MAX_DESCRIPTION]
            details += f"<Description>{_text(description)}</Description>"
        details += "</Details>"
    return (
        XML_DECLARATION + '<Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
        f"<GoalStateIncarnation>{report.incarnation}</GoalStateIncarnation>"
        f"<Container><ContainerId>{_text(report.container_id)}</ContainerId>"
        "<RoleInstanceList><Role>"
        f"<InstanceId>{_text(report.instance_id)}</InstanceId>"
        f"<Health><State>{_text(report.state)}</State>{details}</Health>"
        "</Role></RoleInstanceList></Container></Health>"
    ).encode()


def role_properties_xml(container_id: str, instance_id: str, thumbprint: str) -> bytes:
    return (
        XML_DECLARATION + "<RoleProperties><Container>"
        f"<ContainerId>{_text(container_id)}</ContainerId>"
        "<RoleInstances><RoleInstance>"
        f"<Id>{_text(instance_id)}</Id>"
        "<Properties>"
        f'<Property name="CertificateThumbprint" value={quoteattr(thumbprint)} />'
        "</Properties></RoleInstance></RoleInstances></Container></RoleProperties>"
    ).encode()


# -- parsers -------------------------------------------------------------------


_NUMBER = re.compile(r"[0-9]{1,18}")


def _root(data: bytes, what: str, local: str) -> Element:
    root = Element.root(xmlsafe.parse(data, what=what), what=what)
    if root.local != local:
        raise xmlsafe.XmlStructureError(f"{what}: root element is {root.local}, expected {local}")
    return root


def _int(element: Element) -> int:
    text = element.text(strip=True)
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if not _NUMBER.fullmatch(text):
        raise xmlsafe.XmlStructureError(f"{element.what}: {element.path}: not a number")
    return int(text)


@refusing(xmlsafe.XmlStructureError, "versions")
def parse_versions(data: bytes) -> Versions:
    root = _root(data, "versions", "Versions")
    preferred = root.require("", "Preferred").require("", "Version").text(strip=True)
    supported_element = root.child("", "Supported")
    supported = tuple(
        v.text(strip=True)
        for v in (supported_element.children("", "Version") if supported_element else [])
    )
    return Versions(preferred, supported)


@refusing(xmlsafe.XmlStructureError, "goal state")
def parse_goal_state(data: bytes) -> GoalState:
    root = _root(data, "goal state", "GoalState")
    container = root.require("", "Container")
    role = container.require("", "RoleInstanceList").require("", "RoleInstance")
    configuration = role.require("", "Configuration")

    def uri(name: str) -> Optional[str]:
        element = configuration.child("", name)
        return element.text(strip=True) if element is not None else None

    def required_uri(name: str) -> str:
        return configuration.require("", name).text(strip=True)

    return GoalState(
        incarnation=_int(root.require("", "Incarnation")),
        container_id=container.require("", "ContainerId").text(strip=True),
        instance_id=role.require("", "InstanceId").text(strip=True),
        uris=ConfigUris(
            hosting_environment=required_uri("HostingEnvironmentConfig"),
            shared_config=required_uri("SharedConfig"),
            extensions_config=uri("ExtensionsConfig"),
            full_config=required_uri("FullConfig"),
            certificates=uri("Certificates"),
            config_name=required_uri("ConfigName"),
        ),
    )


@refusing(xmlsafe.XmlStructureError, "health report")
def parse_health(data: bytes) -> HealthReport:
    root = _root(data, "health report", "Health")
    container = root.require("", "Container")
    role = container.require("", "RoleInstanceList").require("", "Role")
    health = role.require("", "Health")
    details = health.child("", "Details")
    substatus = description = None
    if details is not None:
        element = details.child("", "SubStatus")
        substatus = element.text(strip=True) if element is not None else None
        element = details.child("", "Description")
        description = element.text() if element is not None else None
    state = health.require("", "State").text(strip=True)
    if state not in (READY, NOT_READY):
        raise xmlsafe.XmlStructureError(f"health report: State must be {READY} or {NOT_READY}")
    return HealthReport(
        incarnation=_int(root.require("", "GoalStateIncarnation")),
        container_id=container.require("", "ContainerId").text(strip=True),
        instance_id=role.require("", "InstanceId").text(strip=True),
        state=state,
        substatus=substatus,
        description=description,
    )
