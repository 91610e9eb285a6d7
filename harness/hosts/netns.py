"""Network namespaces as hosts: a switch namespace with a bridge, N host namespaces wired to it.

The layout (``../shared/MULTIHOST.md``, measured on this machine kind)::

    storeharness-<tag>-switch     br0 (a bridge), lo, and one veth end pI per host
    storeharness-<tag>-hI         lo and eth0 (the other veth end) with 198.18.0.(I+1)/15

Every veth is created *inside* the namespaces (``ip -n HOST link add eth0 type veth peer name pI
netns SWITCH``), so the root namespace never sees an interface, an address or a route of the test
subnet: store traffic between hosts stays inside namespaces this run created.  Before building,
:func:`check_subnet_unrouted` refuses a subnet that the root namespace routes or holds an address
in (traffic meant for a namespace could otherwise leave the machine).

Everything is named after a *run tag*, so :func:`teardown` finds what one run created — and only
that — even when the run was interrupted: it kills the processes still inside those namespaces
(by pid, from ``ip netns pids``, never by name) and deletes the namespaces, which removes their
veths, addresses and rules with them.  A run killed before its teardown leaves its namespaces;
the building process is recorded under :data:`OWNERS`, so :func:`clean_stale` removes exactly
the runs whose builder is gone.  Root is needed (``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN``);
:func:`missing` names what is absent so callers can skip with that reason.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "NS_PREFIX",
    "SUBNET",
    "NetnsError",
    "NetnsHost",
    "NetnsNetwork",
    "build",
    "check_subnet_unrouted",
    "clean_stale",
    "host_address",
    "host_namespaces",
    "missing",
    "namespaces",
    "netns_hosts",
    "stale_tags",
    "teardown",
]

#: Namespaces this module creates are named ``storeharness-<tag>-...``.
NS_PREFIX = "storeharness-"
#: The benchmarking range (RFC 2544): never routed on the internet, existing here only inside
#: the namespaces a run creates.
SUBNET = ipaddress.IPv4Network("198.18.0.0/15")
#: Who built each run's namespaces (``<tag>``: pid and start time), so leftovers can be told
#: from a run still going.
OWNERS = Path("/run/storeharness/netns")
#: More hosts than this on one 2-core machine is a mistake, not a test.
MAX_HOSTS = 64
_IP_TIMEOUT = 10.0


class NetnsError(RuntimeError):
    """Building or tearing down namespaces failed; the message names the command and its error."""


@dataclass(frozen=True, slots=True)
class NetnsHost:
    """One host namespace: its index, namespace name and data-plane address."""

    index: int
    namespace: str
    address: str

    def exec_argv(self) -> list[str]:
        """The command prefix that runs a program inside this host (``ip netns exec NS``)."""
        return [_ip(), "netns", "exec", self.namespace]


@dataclass(frozen=True, slots=True)
class NetnsNetwork:
    """What :func:`build` created: the run tag, the switch namespace and the hosts."""

    tag: str
    switch: str
    hosts: tuple[NetnsHost, ...]

    def namespaces(self) -> list[str]:
        """Every namespace of this network, the switch first."""
        return [self.switch, *(h.namespace for h in self.hosts)]


def missing() -> str | None:
    """Why namespaces cannot be built here (a reason to skip with), or None when they can."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed: apt-get install iproute2"
    if os.geteuid() != 0:
        return (
            "building network namespaces needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN); running as "
            f"uid {os.geteuid()} (unprivileged user namespaces are not supported yet)"
        )
    return None


def _ip() -> str:
    path = shutil.which("ip")
    if path is None:
        raise NetnsError("the `ip` command (iproute2) is not installed: apt-get install iproute2")
    return path


def _run(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS``; a failure raises :class:`NetnsError` naming the command and stderr."""
    cmd = [_ip(), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_IP_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"`{' '.join(cmd)}` did not finish in {_IP_TIMEOUT} s") from exc
    if check and done.returncode != 0:
        raise NetnsError(
            f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


def _overlapping(text: str, subnet: ipaddress.IPv4Network) -> bool:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:  # "default", "unreachable ..." and such
        return False
    return isinstance(net, ipaddress.IPv4Network) and net.overlaps(subnet)


def check_subnet_unrouted(subnet: ipaddress.IPv4Network = SUBNET) -> None:
    """Refuse (:class:`NetnsError`) if the root namespace routes ``subnet`` or has an address in it.

    A default route does not count: it is what sends unknown destinations away, and addresses of
    this subnet only ever exist inside our namespaces.  A specific route or a local address would
    mean the subnet is in use here, and traffic meant for a namespace could reach real hosts.
    """
    routes = json.loads(_run("-j", "-4", "route", "show", "table", "all") or "[]")
    for route in routes:
        dst = str(route.get("dst", ""))
        if _overlapping(dst, subnet):
            raise NetnsError(
                f"the test subnet {subnet} is routed in the root namespace ({dst} dev "
                f"{route.get('dev', '?')}): refusing to build namespaces that could send store "
                "traffic off this machine; remove that route or pick another subnet"
            )
    links = json.loads(_run("-j", "-4", "addr", "show") or "[]")
    for link in links:
        for addr in link.get("addr_info", []):
            local = f"{addr.get('local')}/{addr.get('prefixlen')}"
            if _overlapping(local, subnet):
                raise NetnsError(
                    f"the root namespace has the address {local} on {link.get('ifname')} inside "
                    f"the test subnet {subnet}: refusing to build namespaces; remove it"
                )


def new_tag() -> str:
    """A fresh run tag (8 hex digits): the name part that finds this run's namespaces."""
    return secrets.token_hex(4)


def namespaces(tag: str | None = None) -> list[str]:
    """Namespaces named by this module (of run ``tag`` only, when given), as ``ip netns`` lists."""
    prefix = NS_PREFIX + (f"{tag}-" if tag else "")
    out = _run("-j", "netns", "list") or "[]"
    return sorted(
        str(ns["name"]) for ns in json.loads(out) if str(ns.get("name", "")).startswith(prefix)
    )


def host_namespaces(n: int, tag: str) -> list[str]:
    """The names of the ``n`` host namespaces of run ``tag`` (``storeharness-<tag>-h<I>``)."""
    return [f"{NS_PREFIX}{tag}-h{i}" for i in range(n)]


def host_address(index: int, subnet: ipaddress.IPv4Network = SUBNET) -> str:
    """The data-plane address of host ``index``: the subnet's ``index + 1``-th address."""
    return str(subnet.network_address + index + 1)


def build(n: int, tag: str | None = None, subnet: ipaddress.IPv4Network = SUBNET) -> NetnsNetwork:
    """Create a switch namespace and ``n`` host namespaces; on any failure, remove them all.

    Raises :class:`NetnsError` (a command failed, the subnet is routed in the root namespace)
    or :class:`ValueError` (``n`` out of range, ``tag`` not a short word).
    """
    if not 1 <= n <= MAX_HOSTS:
        raise ValueError(f"netns: the number of hosts must be 1..{MAX_HOSTS}, got {n}")
    tag = tag or new_tag()
    if not (tag.isascii() and tag.replace("_", "").isalnum() and len(tag) <= 16):
        raise ValueError(f"netns: run tag {tag!r} must be 1-16 letters, digits or '_'")
    check_subnet_unrouted(subnet)
    switch = f"{NS_PREFIX}{tag}-switch"
    hosts = tuple(
        NetnsHost(i, ns, host_address(i, subnet)) for i, ns in enumerate(host_namespaces(n, tag))
    )
    net = NetnsNetwork(tag, switch, hosts)
    try:
        _write_owner(tag)  # before any namespace: one without an owner record is not ours
        _run("netns", "add", switch)
        _run("-n", switch, "link", "set", "lo", "up")
        _run("-n", switch, "link", "add", "br0", "type", "bridge")
        _run("-n", switch, "link", "set", "br0", "up")
        for h in hosts:
            _run("netns", "add", h.namespace)
            _run("-n", h.namespace, "link", "set", "lo", "up")
            peer = f"p{h.index}"
            _run("-n", h.namespace, "link", "add", "eth0", "type", "veth", "peer", "name", peer,
                 "netns", switch)  # fmt: skip
            _run("-n", switch, "link", "set", peer, "master", "br0", "up")
            _run("-n", h.namespace, "addr", "add", f"{h.address}/{subnet.prefixlen}", "dev", "eth0")
            _run("-n", h.namespace, "link", "set", "eth0", "up")
    except BaseException:
        teardown(tag)
        raise
    return net


def _pids(namespace: str) -> list[int]:
    out = _run("netns", "pids", namespace, check=False)
    return [int(word) for word in out.split() if word.isdigit()]


def teardown(tag: str) -> list[str]:
    """Remove every namespace of run ``tag`` and kill what still runs inside; returns their names.

    Processes are found by namespace (``ip netns pids``) and killed by pid with SIGKILL: they
    belong to a run that is over, and a namespace with a process in it outlives ``ip netns del``.
    Raises :class:`NetnsError` if a namespace of the run is still listed afterwards.
    """
    if not tag:
        raise ValueError("netns: teardown needs the run tag (an empty tag would match every run)")
    names = namespaces(tag)
    for ns in names:
        for pid in _pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    errors = []
    for ns in names:
        try:
            _run("netns", "del", ns)
        except NetnsError as exc:
            errors.append(str(exc))
    left = namespaces(tag)
    if left:
        raise NetnsError(f"netns: namespaces of run {tag} left after teardown: {left}; {errors}")
    with contextlib.suppress(FileNotFoundError):
        (OWNERS / tag).unlink()
    return names


def _start_time(pid: int) -> str | None:
    """Process ``pid``'s start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _write_owner(tag: str) -> None:
    OWNERS.mkdir(parents=True, exist_ok=True)
    part = OWNERS / f".{tag}.{os.getpid()}"
    part.write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    os.replace(part, OWNERS / tag)  # whole or absent: a half-written record would read as dead


def _owner_alive(tag: str) -> bool:
    try:
        pid, started = (OWNERS / tag).read_text().split()
    except (OSError, ValueError):
        return False
    return _start_time(int(pid)) == started


def stale_tags() -> list[str]:
    """Run tags whose namespaces are still listed but whose building process has ended.

    The building process is recorded (pid and start time) under :data:`OWNERS` before the first
    namespace exists, so a run that is still going is never called stale.
    """
    tags = {ns[len(NS_PREFIX) :].split("-", 1)[0] for ns in namespaces()}
    return sorted(tag for tag in tags if not _owner_alive(tag))


def clean_stale() -> list[str]:
    """:func:`teardown` every run whose builder is gone (a SIGKILLed test run); their names."""
    return [ns for tag in stale_tags() for ns in teardown(tag)]


@contextlib.contextmanager
def netns_hosts(n: int, tag: str | None = None) -> Iterator[NetnsNetwork]:
    """:func:`build` ``n`` hosts for the ``with`` block, and :func:`teardown` them after it."""
    net = build(n, tag)
    try:
        yield net
    finally:
        teardown(net.tag)
