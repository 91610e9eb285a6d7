"""On a host: the run's network faults, with the host's own nft and tc.

Runs in the agent.  Drops and loss go in one nftables table per run, ``inet storeharness_<run>``,
in an ``input`` chain: each host drops what it *receives* from the peers cut off from it.  On
the receiving side, because a drop on the sender's ``output`` hook is not silent: ``sendto``
then fails with EPERM, so the sender would know — a real partition or lossy link tells it
nothing.  A packet crosses one such rule once (loss on both ends would compound).  Every rule
matches the peers' data-plane addresses *and* the store's ports (as destination or as source
port, so both directions of a connection)::

    meta l4proto { tcp, udp } ip saddr { 198.18.0.2 } th dport { 29500 } counter drop
    meta l4proto { tcp, udp } ip saddr { 198.18.0.2 } th sport { 29500 } numgen random mod
        10000 < 3000 counter drop

never the control path: a port the agent's own ssh connection uses is refused, and when the
agent runs under sshd the first rule accepts that connection's packets outright.

Rate and latency are tc on the interface holding the host's data address: an ``htb`` root
(handle ``5348:``, "SH", with ``default 0`` so unclassified traffic passes unshaped), one class
per peer, ``u32`` filters sending the store's ports to that peer into it, and for latency a
``netem`` leaf in the class.  Where the kernel has no ``sch_netem``, latency is refused with
tc's own reason; nothing is faked.  Heal deletes the table and the root qdisc.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
from typing import Any

__all__ = [
    "TABLE_PREFIX",
    "TC_HANDLE",
    "HostNet",
    "NetError",
    "clean_stale",
    "counts",
    "table_name",
]

TABLE_PREFIX = "storeharness_"
#: The major handle of the root qdisc we add ("SH"): how clean tells our qdiscs from others.
TC_HANDLE = "5348"
_TIMEOUT = 10.0
_FAST = "10gbit"  # a class for latency alone: shaped only by netem


class NetError(RuntimeError):
    """A network fault could not be applied or removed; the message names the command."""


def table_name(run: str) -> str:
    """The nftables table of run ``run`` (family ``inet``)."""
    return TABLE_PREFIX + run


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pkg = {"nft": "nftables", "tc": "iproute2", "ip": "iproute2"}[name]
        raise NetError(f"`{name}` is not installed on this host: apt-get install {pkg}")
    return path


def _run(cmd: list[str], stdin: str | None = None, check: bool = True) -> str:
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise NetError(f"`{' '.join(cmd)}` did not finish in {_TIMEOUT} s") from exc
    if check and done.returncode != 0:
        err = done.stderr.strip().splitlines()
        raise NetError(
            f"`{' '.join(cmd)}` failed (exit {done.returncode}): {err[-1] if err else ''}"
            + (f"\n{stdin}" if stdin else "")
        )
    return done.stdout


def _resolve(addresses: list[str]) -> tuple[list[str], list[str]]:
    """IPv4 and IPv6 addresses of ``addresses`` (IPs, or names resolved on this host)."""
    v4: set[str] = set()
    v6: set[str] = set()
    for name in addresses:
        try:
            ips = [ipaddress.ip_address(name)]
        except ValueError:
            try:
                infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
            except socket.gaierror as exc:
                raise NetError(f"cannot resolve the data address {name!r} here: {exc}") from exc
            ips = [ipaddress.ip_address(info[4][0]) for info in infos]
        for ip in ips:
            (v4 if ip.version == 4 else v6).add(str(ip))
    return sorted(v4), sorted(v6)


def _control_path() -> tuple[str, int, str, int] | None:
    """``(client ip, client port, our ip, our port)`` of the ssh connection we run under."""
    words = os.environ.get("SSH_CONNECTION", "").split()
    if len(words) != 4 or not (words[1].isdigit() and words[3].isdigit()):
        return None
    return words[0], int(words[1]), words[2], int(words[3])


def _check_ports(ports: list[int]) -> list[int]:
    if not ports or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
        raise NetError(f"network faults need the store's ports (1..65535), got {ports!r}")
    control = _control_path()
    if control is not None and {control[1], control[3]} & set(ports):
        raise NetError(
            f"refusing rules on ports {sorted(ports)}: port {control[3]} or {control[1]} carries "
            "this agent's own ssh connection (the control path)"
        )
    return sorted(set(ports))


def _set(items: list[str] | list[int]) -> str:
    return "{ " + ", ".join(map(str, items)) + " }"


class HostNet:
    """The network faults of run ``run`` on this host, whose data address is ``address``."""

    def __init__(self, run: str, address: str) -> None:
        self.run = run
        self.address = address
        self.table = table_name(run)
        self.has_table = False
        self.shaped: str | None = None  # the device with our root qdisc
        self.classes: dict[str, int] = {}  # peer ip -> class minor
        self.filtered: set[tuple[str, int]] = set()  # (peer ip, port) sent to its class

    # ---------------------------------------------------------------- nftables

    def _ensure_table(self) -> None:
        if self.has_table:
            return
        lines = [
            f"add table inet {self.table}",
            f"add chain inet {self.table} input "
            "{ type filter hook input priority 0; policy accept; }",
        ]
        control = _control_path()
        if control is not None:  # never the control path: its packets pass before any drop
            client, cport, ours, oport = control
            fam = "ip6" if ":" in ours else "ip"
            lines.append(
                f"add rule inet {self.table} input {fam} saddr {client} tcp sport {cport} "
                f"{fam} daddr {ours} tcp dport {oport} accept"
            )
        _run([_tool("nft"), "-f", "-"], "\n".join(lines) + "\n")
        self.has_table = True

    def _rules(self, peers: list[str], ports: list[int], extra: str) -> str:
        v4, v6 = _resolve(peers)
        ports = _check_ports(ports)
        lines = []
        for fam, ips in (("ip", v4), ("ip6", v6)):
            if not ips:
                continue
            for end in ("dport", "sport"):
                lines.append(
                    f"add rule inet {self.table} input meta l4proto {{ tcp, udp }} "
                    f"{fam} saddr {_set(ips)} th {end} {_set(ports)} {extra}counter drop"
                )
        return "\n".join(lines) + "\n"

    def drop(self, peers: list[str], ports: list[int]) -> str:
        """Drop the store's traffic from ``peers`` to this host; a line saying what was added."""
        if not peers:
            return "nothing to drop"
        script = self._rules(peers, ports, "")
        self._ensure_table()
        _run([_tool("nft"), "-f", "-"], script)
        return f"drop from {', '.join(peers)} (ports {_set(ports)})"

    def loss(self, peers: list[str], ports: list[int], p: float) -> str:
        """Drop each packet of the store's traffic from ``peers`` with probability ``p``."""
        if not peers:
            return "nothing to thin"
        n = round(p * 10000)
        script = self._rules(peers, ports, f"numgen random mod 10000 < {n} ")
        self._ensure_table()
        _run([_tool("nft"), "-f", "-"], script)
        return f"lose {n / 100:g} % from {', '.join(peers)} (ports {_set(ports)})"

    # ---------------------------------------------------------------- tc

    def _device(self) -> str:
        """The interface that holds this host's data address."""
        v4, v6 = _resolve([self.address])
        wanted = set(v4) | set(v6)
        links = json.loads(_run([_tool("ip"), "-j", "addr", "show"]) or "[]")
        for link in links:
            for addr in link.get("addr_info", []):
                if addr.get("local") in wanted:
                    return str(link["ifname"])
        raise NetError(
            f"the data address {self.address} is on no interface of this host: rate and latency "
            "shape the interface that holds it (is the inventory's address this host's own?)"
        )

    def _tc(self, *args: str) -> str:
        return _run([_tool("tc"), *args])

    def shape(
        self,
        peers: list[str],
        ports: list[int],
        bps: int | None = None,
        delay: float | None = None,
        jitter: float = 0.0,
    ) -> str:
        """Limit (``bps``) and/or delay (``delay`` ± ``jitter`` s) the store's traffic to
        ``peers``; a peer shaped before has its class changed.  Latency without netem raises
        :class:`NetError` with tc's reason, after removing what this call added."""
        v4, v6 = _resolve(peers)
        ports = _check_ports(ports)
        dev = self.shaped or self._device()
        if self.shaped is None:
            self._tc("qdisc", "add", "dev", dev, "root", "handle", f"{TC_HANDLE}:", "htb",
                     "default", "0")  # fmt: skip
            self.shaped = dev
            try:
                return self._shape(dev, v4 + v6, ports, bps, delay, jitter)
            except NetError:  # nothing else of ours is on this root yet: remove it
                self._tc("qdisc", "del", "dev", dev, "root")
                self.shaped = None
                self.classes.clear()
                self.filtered.clear()
                raise
        return self._shape(dev, v4 + v6, ports, bps, delay, jitter)

    def _shape(
        self,
        dev: str,
        ips: list[str],
        ports: list[int],
        bps: int | None,
        delay: float | None,
        jitter: float,
    ) -> str:
        done = []
        for ip in ips:
            rate = f"{bps}bit" if bps else _FAST
            new = ip not in self.classes
            minor = self.classes.get(ip, 0x10 + len(self.classes))
            classid = f"{TC_HANDLE}:{minor:x}"
            verb = "add" if new else "change"
            if new or bps:
                self._tc("class", verb, "dev", dev, "parent", f"{TC_HANDLE}:", "classid", classid,
                         "htb", "rate", rate, "ceil", rate)  # fmt: skip
            if delay:
                netem = ["netem", "delay", f"{delay * 1e3:g}ms"]
                if jitter:
                    netem.append(f"{jitter * 1e3:g}ms")
                try:
                    self._tc("qdisc", "replace", "dev", dev, "parent", classid, "handle",
                             f"{minor + 0x100:x}:", *netem)  # fmt: skip
                except NetError as exc:
                    if new:  # no filter points at it yet: nothing was shaped
                        self._tc("class", "del", "dev", dev, "classid", classid)
                    raise NetError(
                        f"latency needs the kernel's netem qdisc (sch_netem), which tc could "
                        f"not create on {dev}: {str(exc).splitlines()[0].split(': ', 1)[-1]}"
                    ) from exc
            self.classes[ip] = minor
            proto, match = ("ipv6", "ip6") if ":" in ip else ("ip", "ip")
            plen = 128 if ":" in ip else 32
            for port in ports:
                if (ip, port) in self.filtered:  # a peer shaped before, on these ports too
                    continue
                self.filtered.add((ip, port))
                for end in ("dport", "sport"):
                    self._tc("filter", "add", "dev", dev, "parent", f"{TC_HANDLE}:",
                             "protocol", proto, "prio", "1", "u32",
                             "match", match, "dst", f"{ip}/{plen}",
                             "match", match, end, str(port), "0xffff",
                             "flowid", classid)  # fmt: skip
            done.append(ip)
        what = [f"{bps} bit/s"] if bps else []
        if delay:
            what.append(f"{delay:g} s ± {jitter:g} delay")
        return f"{' and '.join(what)} on {dev} to {', '.join(done)} (ports {_set(ports)})"

    # ---------------------------------------------------------------- heal

    def heal(self) -> str:
        """Remove this run's table and shaping from this host; what was removed."""
        removed = []
        if self.has_table or _table_exists(self.table):
            _run([_tool("nft"), "delete", "table", "inet", self.table])
            removed.append(f"table inet {self.table}")
        self.has_table = False
        if self.shaped is not None:
            _run([_tool("tc"), "qdisc", "del", "dev", self.shaped, "root"])
            removed.append(f"qdisc {TC_HANDLE}: on {self.shaped}")
        self.shaped = None
        self.classes.clear()
        self.filtered.clear()
        return ", ".join(removed) or "nothing to remove"


def _tables() -> list[str]:
    nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if nft is None:
        return []
    out = json.loads(_run([nft, "-j", "list", "tables"]) or "{}")
    return [
        str(item["table"]["name"])
        for item in out.get("nftables", [])
        if "table" in item and item["table"].get("family") == "inet"
    ]


def _table_exists(name: str) -> bool:
    return name in _tables()


def _our_qdiscs() -> list[str]:
    tc = shutil.which("tc") or shutil.which("tc", path="/usr/sbin:/sbin")
    if tc is None:
        return []
    found = json.loads(_run([tc, "-j", "qdisc", "show"]) or "[]")
    return sorted(
        str(q["dev"]) for q in found if q.get("root") and q.get("handle") == f"{TC_HANDLE}:"
    )


def clean_stale(live: set[str], shaping_live: bool) -> dict[str, list[str]]:
    """Remove, in this network namespace, the tables of runs not in ``live`` and (unless a
    live run may be shaping here, ``shaping_live``) every root qdisc we add."""
    tables = [t for t in _tables() if t.startswith(TABLE_PREFIX)]
    removed: dict[str, list[str]] = {"tables": [], "qdiscs": []}
    for table in tables:
        if table[len(TABLE_PREFIX) :] not in live:
            _run([_tool("nft"), "delete", "table", "inet", table])
            removed["tables"].append(table)
    if not shaping_live:
        for dev in _our_qdiscs():
            with contextlib.suppress(NetError):  # its device may have gone meanwhile
                _run([_tool("tc"), "qdisc", "del", "dev", dev, "root"])
                removed["qdiscs"].append(dev)
    return removed


def counts() -> dict[str, Any]:
    """Our tables and root qdiscs in this network namespace (what tests count)."""
    return {
        "tables": [t for t in _tables() if t.startswith(TABLE_PREFIX)],
        "qdiscs": _our_qdiscs(),
    }
