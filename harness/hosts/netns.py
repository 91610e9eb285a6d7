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
the building process is recorded (:func:`owners_dir`), so :func:`clean_stale` removes exactly
the runs whose builder is gone.

With ``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN`` (root) the namespaces are the machine's own, listed
by ``ip netns``.  Without them, where the kernel allows unprivileged user namespaces, the same
layout is built inside a *keeper* (:mod:`._userns`): a process in a user, mount and network
namespace of its own that dies with its builder.  :meth:`NetnsHost.exec_argv` then enters the
keeper first (``nsenter``), and :func:`teardown` kills the keeper and every process still in its
user namespace, which removes everything.  :func:`missing` names what is absent when neither
works, so callers can skip with that reason.
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
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _userns

__all__ = [
    "NS_PREFIX",
    "SUBNET",
    "NetnsError",
    "NetnsHost",
    "NetnsNetwork",
    "build",
    "check_subnet_unrouted",
    "clean_stale",
    "enter_argv",
    "host_address",
    "host_namespaces",
    "missing",
    "namespaces",
    "netns_hosts",
    "owners_dir",
    "privileged",
    "stale_tags",
    "teardown",
]

#: Namespaces this module creates are named ``storeharness-<tag>-...``.
NS_PREFIX = "storeharness-"
#: The benchmarking range (RFC 2544): never routed on the internet, existing here only inside
#: the namespaces a run creates.
SUBNET = ipaddress.IPv4Network("198.18.0.0/15")
#: Who built each run's namespaces (``<tag>``: pid and start time, and the keeper of a run built
#: in a user namespace), so leftovers can be told from a run still going; root's records.
OWNERS = Path("/run/storeharness/netns")
#: More hosts than this on one 2-core machine is a mistake, not a test.
MAX_HOSTS = 64
_IP_TIMEOUT = 10.0
_KILL_TIMEOUT = 10.0
_CAP_NET_ADMIN, _CAP_SYS_ADMIN = 12, 21
#: The keepers this process started, by run tag (their pipes keep them alive).
_keepers: dict[str, _userns.Keeper] = {}


class NetnsError(RuntimeError):
    """Building or tearing down namespaces failed; the message names the command and its error."""


@dataclass(frozen=True, slots=True)
class NetnsHost:
    """One host namespace: its index, namespace name and data-plane address."""

    index: int
    namespace: str
    address: str
    #: The prefix that enters the keeper first (a run built in a user namespace), else empty.
    enter: tuple[str, ...] = ()

    def exec_argv(self) -> list[str]:
        """The command prefix that runs a program inside this host (``ip netns exec NS``, after
        ``nsenter`` into the keeper for a run built in a user namespace)."""
        return [*self.enter, _ip(), "netns", "exec", self.namespace]


@dataclass(frozen=True, slots=True)
class NetnsNetwork:
    """What :func:`build` created: the run tag, the switch namespace and the hosts."""

    tag: str
    switch: str
    hosts: tuple[NetnsHost, ...]
    #: The keeper's pid when built inside a user namespace (without root), else None.
    keeper: int | None = None

    def namespaces(self) -> list[str]:
        """Every namespace of this network, the switch first."""
        return [self.switch, *(h.namespace for h in self.hosts)]


def privileged() -> bool:
    """Whether this process may add the machine's own namespaces (``CAP_SYS_ADMIN`` and
    ``CAP_NET_ADMIN`` effective); without them :func:`build` works in a user namespace."""
    try:
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    wanted = (1 << _CAP_NET_ADMIN) | (1 << _CAP_SYS_ADMIN)
    return caps & wanted == wanted


def missing() -> str | None:
    """Why namespaces cannot be built here (a reason to skip with), or None when they can:
    as root directly, otherwise inside an unprivileged user namespace."""
    if _which_ip() is None:
        return "the `ip` command (iproute2) is not installed: apt-get install iproute2"
    if privileged():
        return None
    why = _userns.missing()
    if why is None:
        return None
    return (
        "building network namespaces needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) or an "
        f"unprivileged user namespace; running as uid {os.geteuid()} without those "
        f"capabilities, and {why}"
    )


def _which_ip() -> str | None:
    return shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")


def _ip() -> str:
    path = _which_ip()
    if path is None:
        raise NetnsError("the `ip` command (iproute2) is not installed: apt-get install iproute2")
    return path


def _run(*args: str, check: bool = True, enter: Sequence[str] = ()) -> str:
    """Run ``ip ARGS`` (after the ``enter`` prefix); a failure raises :class:`NetnsError`
    naming the command and stderr."""
    cmd = [*enter, _ip(), *args]
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


def _listed(prefix: str, enter: Sequence[str] = ()) -> list[str]:
    out = _run("-j", "netns", "list", enter=enter) or "[]"
    return sorted(
        str(ns["name"]) for ns in json.loads(out) if str(ns.get("name", "")).startswith(prefix)
    )


def namespaces(tag: str | None = None) -> list[str]:
    """Namespaces named by this module (of run ``tag`` only, when given), as ``ip netns`` lists
    them: the machine's, and those inside the live keepers of runs built in user namespaces."""
    prefix = NS_PREFIX + (f"{tag}-" if tag else "")
    found = _listed(prefix)
    for run in [tag] if tag else _recorded():
        enter = enter_argv(run)
        if enter:
            try:
                found += _listed(prefix, enter)
            except NetnsError:
                continue  # the keeper ended between the check and the listing: nothing there
    return sorted(found)


def enter_argv(tag: str) -> list[str]:
    """The command prefix that enters run ``tag``'s keeper (``nsenter ...``) when the run was
    built inside a user namespace and its keeper is alive; empty otherwise (built as root,
    keeper gone, or not built)."""
    keeper = (_read_owner(tag) or {}).get("keeper")
    if not keeper or _userns.start_time(int(keeper["pid"])) != keeper["start"]:
        return []
    return _userns.enter_argv(tag, int(keeper["pid"]))


def host_namespaces(n: int, tag: str) -> list[str]:
    """The names of the ``n`` host namespaces of run ``tag`` (``storeharness-<tag>-h<I>``)."""
    return [f"{NS_PREFIX}{tag}-h{i}" for i in range(n)]


def host_address(index: int, subnet: ipaddress.IPv4Network = SUBNET) -> str:
    """The data-plane address of host ``index``: the subnet's ``index + 1``-th address."""
    return str(subnet.network_address + index + 1)


def build(
    n: int,
    tag: str | None = None,
    subnet: ipaddress.IPv4Network = SUBNET,
    *,
    user_namespace: bool | None = None,
) -> NetnsNetwork:
    """Create a switch namespace and ``n`` host namespaces; on any failure, remove them all.

    ``user_namespace``: build inside a keeper's user namespace (True), as the machine's own
    namespaces (False), or the latter exactly when :func:`privileged` (None, the default).

    Raises :class:`NetnsError` (a command failed, the subnet is routed in the root namespace,
    no keeper could be started) or :class:`ValueError` (``n`` out of range, ``tag`` not a
    short word).
    """
    if not 1 <= n <= MAX_HOSTS:
        raise ValueError(f"netns: the number of hosts must be 1..{MAX_HOSTS}, got {n}")
    tag = tag or new_tag()
    if not (tag.isascii() and tag.replace("_", "").isalnum() and len(tag) <= 16):
        raise ValueError(f"netns: run tag {tag!r} must be 1-16 letters, digits or '_'")
    check_subnet_unrouted(subnet)
    if user_namespace is None:
        user_namespace = not privileged()
    switch = f"{NS_PREFIX}{tag}-switch"
    names = [switch, *host_namespaces(n, tag)]
    enter: list[str] = []
    keeper = None
    try:
        _write_owner(tag, names)  # before any namespace: one without an owner record is not ours
        if user_namespace:
            keeper = _start_keeper(tag, names)
            enter = _userns.enter_argv(tag, keeper)
        hosts = tuple(
            NetnsHost(i, ns, host_address(i, subnet), tuple(enter))
            for i, ns in enumerate(names[1:])
        )
        _run("netns", "add", switch, enter=enter)
        _run("-n", switch, "link", "set", "lo", "up", enter=enter)
        _run("-n", switch, "link", "add", "br0", "type", "bridge", enter=enter)
        _run("-n", switch, "link", "set", "br0", "up", enter=enter)
        for h in hosts:
            _run("netns", "add", h.namespace, enter=enter)
            _run("-n", h.namespace, "link", "set", "lo", "up", enter=enter)
            peer = f"p{h.index}"
            _run("-n", h.namespace, "link", "add", "eth0", "type", "veth", "peer", "name", peer,
                 "netns", switch, enter=enter)  # fmt: skip
            _run("-n", switch, "link", "set", peer, "master", "br0", "up", enter=enter)
            _run("-n", h.namespace, "addr", "add", f"{h.address}/{subnet.prefixlen}", "dev",
                 "eth0", enter=enter)  # fmt: skip
            _run("-n", h.namespace, "link", "set", "eth0", "up", enter=enter)
    except BaseException:
        teardown(tag)
        raise
    return NetnsNetwork(tag, switch, hosts, keeper)


def _start_keeper(tag: str, names: list[str]) -> int:
    """Start run ``tag``'s keeper, record it beside the builder, and return its pid."""
    try:
        keeper = _userns.start(tag, _IP_TIMEOUT)
    except _userns.KeeperError as exc:
        raise NetnsError(f"netns: cannot build run {tag} without root: {exc}") from exc
    _keepers[tag] = keeper
    _write_owner(tag, names, {"pid": keeper.pid, "start": keeper.started,
                              "userns": keeper.userns})  # fmt: skip
    return keeper.pid


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
    record = _read_owner(tag) or {}
    if record.get("keeper") or tag in _keepers:  # ours even if its record was never written
        return _teardown_keeper(tag, record)
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
    _drop_owner(tag)
    return names


def _teardown_keeper(tag: str, record: dict[str, Any]) -> list[str]:
    """Teardown of a run built inside a user namespace: kill, by pid, its keeper and every
    process still in the keeper's user namespace; the namespaces go with them.

    Returns the run's namespaces as recorded if anything of the run was still there (the
    keeper, or a process inside), else an empty list.
    """
    deadline = time.monotonic() + _KILL_TIMEOUT
    own = _keepers.pop(tag, None)
    keeper = record.get("keeper")
    if keeper is None:
        assert own is not None  # teardown comes here only with one or the other
        keeper = {"pid": own.pid, "start": own.started, "userns": own.userns}
    keeper_pid = int(keeper["pid"])
    alive = _userns.start_time(keeper_pid) == keeper["start"]
    pids = [pid for pid in _userns.members(int(keeper["userns"]), tag) if pid != keeper_pid]
    if own is not None:
        own.stop(_KILL_TIMEOUT)  # ours: killed and reaped
    elif alive:
        pids.append(keeper_pid)  # a keeper whose builder lost track of it
    left = _userns.kill(pids, deadline)
    if left:
        raise NetnsError(
            f"netns: processes {left} of run {tag} (in its user namespace) did not end within "
            f"{_KILL_TIMEOUT} s of SIGKILL; look at /proc/PID/status (stopped under a tracer?)"
        )
    _drop_owner(tag)
    return list(record.get("namespaces", [])) if (pids or alive) else []


def _start_time(pid: int) -> str | None:
    """Process ``pid``'s start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owners_dir() -> Path:
    """Where this user's runs are recorded: :data:`OWNERS` for root; for anyone else a
    directory of their own (under ``$XDG_RUNTIME_DIR``, else the temporary directory)."""
    if os.geteuid() == 0:
        return OWNERS
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return Path(base, "storeharness", "netns")
    return Path(tempfile.gettempdir(), f"storeharness-{os.geteuid()}", "netns")


def _write_owner(tag: str, names: Sequence[str] = (), keeper: dict[str, Any] | None = None) -> None:
    """Record this process as run ``tag``'s builder (with its keeper, when it has one)."""
    where = owners_dir()
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    if where.stat().st_uid != os.geteuid():
        raise NetnsError(
            f"netns: the run records directory {where} belongs to uid {where.stat().st_uid}, not "
            f"to us (uid {os.geteuid()}); remove it or set XDG_RUNTIME_DIR to a directory of yours"
        )
    me, started = os.getpid(), _start_time(os.getpid())
    if keeper is None:  # "PID START": what every version reads
        text = f"{me} {started}\n"
    else:
        record = {"pid": me, "start": started, "namespaces": list(names), "keeper": keeper}
        text = json.dumps(record) + "\n"
    part = where / f".{tag}.{me}"
    part.write_text(text)
    os.replace(part, where / tag)  # whole or absent: a half-written record would read as dead


def _read_owner(tag: str) -> dict[str, Any] | None:
    try:
        text = (owners_dir() / tag).read_text()
    except OSError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        # "PID START", as earlier versions wrote it: a run of theirs may share this machine
        # and must not be taken for a dead one
        words = text.split()
        if len(words) != 2 or not words[0].isdigit():
            return None
        return {"pid": int(words[0]), "start": words[1]}
    return record if isinstance(record, dict) else None


def _drop_owner(tag: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (owners_dir() / tag).unlink()


def _recorded() -> list[str]:
    """Run tags with a record in :func:`owners_dir`."""
    try:
        return sorted(p.name for p in owners_dir().iterdir() if not p.name.startswith("."))
    except OSError:
        return []


def _owner_alive(tag: str) -> bool:
    record = _read_owner(tag)
    return record is not None and _start_time(int(record["pid"])) == record["start"]


def stale_tags() -> list[str]:
    """Run tags whose namespaces (or keeper) are still there but whose building process ended.

    The building process is recorded (pid and start time, :func:`owners_dir`) before the first
    namespace exists, so a run that is still going is never called stale.  A run built in a
    user namespace is found by its record: its keeper ended with its builder, but processes
    inside may still hold its namespaces.
    """
    tags = {tag for tag in _recorded() if (_read_owner(tag) or {}).get("keeper")}
    if privileged():  # the machine's own namespaces: only root's runs make them, and only
        # root could remove them (another user would find no record and call them stale)
        tags |= {ns[len(NS_PREFIX) :].split("-", 1)[0] for ns in _listed(NS_PREFIX)}
    return sorted(tag for tag in tags if not _owner_alive(tag))


def clean_stale() -> list[str]:
    """:func:`teardown` every run whose builder is gone (a SIGKILLed test run); their names."""
    return [ns for tag in stale_tags() for ns in teardown(tag)]


@contextlib.contextmanager
def netns_hosts(
    n: int, tag: str | None = None, *, user_namespace: bool | None = None
) -> Iterator[NetnsNetwork]:
    """:func:`build` ``n`` hosts for the ``with`` block, and :func:`teardown` them after it."""
    net = build(n, tag, user_namespace=user_namespace)
    try:
        yield net
    finally:
        teardown(net.tag)
