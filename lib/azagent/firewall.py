"""OS.EnableFirewall: only root may open TCP connections to the WireServer.

The WireServer hands out the VM's goal state, certificates and extension
settings to whoever asks from inside the VM. With the firewall on, a
connection to it (and to the HostGAPlugin, on the same address) is accepted
only from root's sockets; DNS (port 53: Azure DNS answers on the same
address) stays open to everyone, and so do UDP and ICMP.

The rules are WALinuxAgent's (accept TCP port 53, accept uid 0, drop new or
invalid TCP connections), in a table or chain of azagent's own so that they
can be replaced as a whole:

- nftables (preferred): table ``inet azagent``, loaded with ``nft -f`` as one
  transaction that deletes the previous table and creates the new one, so
  there is never a moment without rules and never two copies.
- iptables (when nft is absent): chain ``AZAGENT`` in the ``security`` table,
  filled by ``iptables-restore --noflush`` (which empties a declared chain
  first, atomically), and jumped to from ``OUTPUT``.

The text that was loaded is kept in :data:`RECORD`; it says which backend and
address it protects, so a later run knows what is in place.
"""

from __future__ import annotations

import re

from azagent import system
from azagent.errors import StageFailed
from azagent.fsutil import atomic_write

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Sequence
    from typing import Final, Optional

    from azagent.context import Context

NFT = "nft"
IPTABLES = "iptables"
TABLE = "azagent"  # nftables: table inet azagent
CHAIN = "AZAGENT"  # iptables: chain AZAGENT of the security table
RECORD = "/run/azagent/firewall.rules"
# Compiled by re (and cached) when first used: most boots have no firewall.
_HEADER = r"# azagent firewall \((nft|iptables)\): WireServer (\S+)\n"
_BIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_IPTABLES_BASE = ("iptables", "-w", "-t", "security")


def header(backend: str, address: str) -> str:
    return f"# azagent firewall ({backend}): WireServer {address}\n"


def nft_ruleset(address: str) -> str:
    """The ``nft -f`` input: replace table inet azagent in one transaction.

    ``table`` first makes sure there is something to delete (a no-op when it
    exists), so the script works whether or not an earlier run loaded it.
    """
    return (
        header(NFT, address)
        + f"table inet {TABLE}\n"
        + f"delete table inet {TABLE}\n"
        + f"table inet {TABLE} {{\n"
        + "\tchain output {\n"
        + "\t\ttype filter hook output priority 0; policy accept;\n"
        + f"\t\tip daddr {address} tcp dport 53 accept\n"
        + f"\t\tip daddr {address} meta skuid 0 accept\n"
        + f"\t\tip daddr {address} meta l4proto tcp ct state invalid,new counter drop\n"
        + "\t}\n"
        + "}\n"
    )


def iptables_rules(address: str) -> list[tuple[str, ...]]:
    """The rules of chain AZAGENT, as ``iptables -A`` arguments (WALinuxAgent's three, in order)."""
    destination = ("-d", f"{address}/32", "-p", "tcp")
    return [
        ("-A", CHAIN, *destination, "-m", "tcp", "--dport", "53", "-j", "ACCEPT"),
        ("-A", CHAIN, *destination, "-m", "owner", "--uid-owner", "0", "-j", "ACCEPT"),
        ("-A", CHAIN, *destination, "-m", "conntrack", "--ctstate", "INVALID,NEW", "-j", "DROP"),
    ]


def iptables_restore_input(address: str) -> str:
    """``iptables-restore --noflush`` input: declare (and so empty) AZAGENT, then fill it."""
    lines = [header(IPTABLES, address).rstrip("\n"), "*security", f":{CHAIN} - [0:0]"]
    lines += [" ".join(rule) for rule in iptables_rules(address)]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def rules(backend: str, address: str) -> str:
    return nft_ruleset(address) if backend == NFT else iptables_restore_input(address)


class Command:
    """One command of a backend: its arguments and what it reads on stdin."""

    __slots__ = ("argv", "stdin", "unless")

    def __init__(
        self,
        argv: tuple[str, ...],
        stdin: Optional[str] = None,
        # Run only when this check fails (exit status != 0): "add unless present".
        unless: Optional[tuple[str, ...]] = None,
    ) -> None:
        self.argv: Final = argv
        self.stdin: Final = stdin
        self.unless: Final = unless

    def shown(self) -> str:
        text = " ".join(self.argv)
        if self.stdin is not None:
            text += f" < {RECORD}"
        if self.unless is not None:
            text += f" (unless `{' '.join(self.unless)}` succeeds)"
        return text


def install_commands(backend: str, address: str) -> list[Command]:
    """What loads the rules for ``address`` on a running system, in order."""
    if backend == NFT:
        return [Command(("nft", "-f", "-"), stdin=nft_ruleset(address))]
    return [
        Command(("iptables-restore", "-w", "--noflush"), stdin=iptables_restore_input(address)),
        Command(
            (*_IPTABLES_BASE, "-A", "OUTPUT", "-j", CHAIN),
            unless=(*_IPTABLES_BASE, "-C", "OUTPUT", "-j", CHAIN),
        ),
    ]


def remove_commands(backend: str) -> list[Command]:
    """What takes the rules out again (each may fail harmlessly when they are gone)."""
    if backend == NFT:
        return [Command(("nft", "delete", "table", "inet", TABLE))]
    return [
        Command((*_IPTABLES_BASE, "-D", "OUTPUT", "-j", CHAIN)),
        Command((*_IPTABLES_BASE, "-F", CHAIN)),
        Command((*_IPTABLES_BASE, "-X", CHAIN)),
    ]


def check_commands(backend: str, address: str) -> list[tuple[str, ...]]:
    """Read-only commands that all succeed when the rules are loaded in the kernel."""
    if backend == NFT:
        return [("nft", "list", "table", "inet", TABLE)]
    checks: list[tuple[str, ...]] = [(*_IPTABLES_BASE, "-C", "OUTPUT", "-j", CHAIN)]
    checks += [(*_IPTABLES_BASE, "-C", *rule[1:]) for rule in iptables_rules(address)]
    return checks


# -- on the target system -------------------------------------------------------


def backend(ctx: Context) -> str:
    """nft when the target system has it, else iptables; StageFailed when it has neither."""
    if ctx.live:
        if system.which("nft"):
            return NFT
        if system.which("iptables") and system.which("iptables-restore"):
            return IPTABLES
    else:
        for name, kind in (("nft", NFT), ("iptables-restore", IPTABLES)):
            if any(ctx.path(f"{directory}/{name}").exists() for directory in _BIN_DIRS):
                return kind
    raise StageFailed("neither nft nor iptables is installed: cannot install firewall rules")


def wireserver_address(ctx: Context) -> ipaddress.IPv4Address:
    """The address to protect: the WireServer's host, which must be an IPv4 address."""
    import ipaddress  # here: only a boot with the firewall enabled needs them
    from urllib.parse import urlsplit

    url = ctx.endpoint("WireServer")
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        raise StageFailed(
            f"the WireServer {url} is not named by an IPv4 address: firewall rules need one"
        ) from None


def read_record(ctx: Context) -> Optional[str]:
    try:
        return ctx.path(RECORD).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def recorded(text: Optional[str]) -> Optional[tuple[str, str]]:
    """(backend, address) of a record, or None."""
    match = re.match(_HEADER, text or "")
    return (match.group(1), match.group(2)) if match else None


def protected_address(ctx: Context) -> Optional[str]:
    """The WireServer address the rules loaded this boot protect (None: no rules)."""
    found = recorded(read_record(ctx))
    return found[1] if found else None


def write_record(ctx: Context, text: str) -> None:
    atomic_write(ctx.path(RECORD), text.encode("utf-8"), mode=0o644)


def forget_record(ctx: Context) -> None:
    ctx.path(RECORD).unlink(missing_ok=True)


def in_kernel(backend_name: str, address: str) -> bool:
    """Whether the running kernel has the rules (read-only checks)."""
    return all(
        system.run(argv, check=False, what="check the firewall rules").returncode == 0
        for argv in check_commands(backend_name, address)
    )


def run_commands(commands: Sequence[Command], *, what: str, check: bool = True) -> None:
    """Run ``commands`` in order; ``check=False`` when a failure only means "already gone"."""
    for command in commands:
        if (
            command.unless is not None
            and system.run(command.unless, check=False, what=what).returncode == 0
        ):
            continue
        system.run(command.argv, stdin=command.stdin, check=check, what=what)
