"""Host-level faults from the controller: which host does what, through its agent.

The runner calls three functions, with the run's agents keyed by host name:

- :func:`unsupported` ``(fault, probes)``: why ``fault`` cannot run on these hosts (no nft, no
  tc, no netem, no ``CAP_NET_ADMIN``), or None; a scenario skips with that reason;
- :func:`apply` ``(agents, fault, token, ports)``: do it, and return the event line to log;
- :func:`heal` ``(agents, token)``: remove every network fault of the run from every host.

A cut between hosts A and B is two sets of rules: A drops what it receives from B, and B what it
receives from A (dropped on arrival, the loss is silent, as on a real link, and applied once per
packet); rate and latency shape what each host sends.  Rules
match the peers' data-plane addresses (``Host.address``) and the store's ``ports`` — as
destination or source port, so both directions of a connection — and never the control path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import permutations
from typing import Any, Protocol

from .._hostfaults import (
    HealNetwork,
    HostFault,
    Isolate,
    KillHost,
    Latency,
    Loss,
    Partition,
    PauseHost,
    Rate,
    ResumeHost,
    check_host_fault,
    describe_host_fault,
    unknown_hosts,
)
from .control import HostError
from .inventory import Host

__all__ = ["AgentLike", "apply", "heal", "unsupported"]

_TIMEOUT = 30.0


class AgentLike(Protocol):
    """What this module needs of a :class:`.control.Agent`."""

    host: Host
    run: str

    def request(self, *msg: Any, timeout: float = ...) -> Any: ...


def _pairs(fault: HostFault, names: list[str]) -> list[tuple[str, str]]:
    """The directed pairs ``(sender, receiver)`` whose store traffic ``fault`` acts on."""
    if isinstance(fault, Partition):
        side = {name: i for i, group in enumerate(fault.groups) for name in group}
        return [(a, b) for a, b in permutations(side, 2) if side[a] != side[b]]
    if isinstance(fault, Isolate | KillHost):
        return [(a, b) for a, b in permutations(names, 2) if fault.host in (a, b)]
    if isinstance(fault, Loss | Rate | Latency):
        if fault.between is None:
            return list(permutations(names, 2))
        a, b = fault.between
        return [(a, b), (b, a)]
    return []


def _by_sender(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a, b in pairs:
        out.setdefault(a, []).append(b)
    return out


def _by_receiver(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    return _by_sender((b, a) for a, b in pairs)


def _involved(fault: HostFault, names: list[str]) -> list[str]:
    """The hosts that must act for ``fault`` (whose tools and privileges matter)."""
    if isinstance(fault, PauseHost | ResumeHost):
        return [fault.host]
    if isinstance(fault, HealNetwork):
        return list(names)
    return sorted({a for pair in _pairs(fault, names) for a in pair}, key=names.index)


def _get(probe: Any, key: str) -> Any:
    return probe.get(key) if isinstance(probe, Mapping) else getattr(probe, key, None)


def unsupported(fault: HostFault, probes: Mapping[str, Any]) -> str | None:
    """Why ``fault`` cannot run on the hosts of ``probes``, or None when it can.

    ``probes``: host name → what its agent's ``probe`` request answered (or a
    :class:`.control.HostCheck`).  The reason names the host and what it lacks, e.g. the tc
    error that shows this kernel has no ``sch_netem``, so a scenario can skip with it.
    """
    names = list(probes)
    bad = unknown_hosts(fault, names)
    if bad is not None:
        return bad
    what = describe_host_fault(fault)
    if isinstance(fault, PauseHost | ResumeHost | HealNetwork):
        return None  # signals to the run's own processes; heal removes only what was added
    needs = ["nft"] if isinstance(fault, Partition | Isolate | Loss | KillHost) else ["tc"]
    for name in _involved(fault, names):
        probe = probes[name]
        if not _get(probe, "net_admin"):
            uid = _get(probe, "euid")
            return (f"{what} cannot run on host {name}: it needs CAP_NET_ADMIN (root) for "
                    f"nft and tc; the agent runs as uid {uid} without it")  # fmt: skip
        for tool in needs:
            if not _get(probe, tool):
                pkg = "nftables" if tool == "nft" else "iproute2"
                return (f"{what} cannot run on host {name}: `{tool}` is not installed there "
                        f"(apt-get install {pkg})")  # fmt: skip
        if isinstance(fault, Latency) and _get(probe, "netem") is not True:
            detail = _get(probe, "netem_detail")
            if _get(probe, "netem") is None:
                return (f"{what} cannot run on host {name}: cannot tell whether netem "
                        f"works: {detail}")  # fmt: skip
            return (f"{what} cannot run on host {name}: latency needs the kernel's netem qdisc "
                    f"(sch_netem), which it lacks: {detail}")  # fmt: skip
    return None


def _check(agents: Mapping[str, AgentLike], fault: HostFault, token: str) -> list[str]:
    problems = check_host_fault(fault)
    if problems:
        raise ValueError("; ".join(problems))
    names = list(agents)
    bad = unknown_hosts(fault, names)
    if bad is not None:
        raise ValueError(bad)
    strangers = [name for name, agent in agents.items() if agent.run != token]
    if strangers:
        raise ValueError(
            f"{describe_host_fault(fault)}: the agents of {', '.join(strangers)} serve run "
            f"{agents[strangers[0]].run!r}, not {token!r}; connect them with run={token!r}"
        )
    return names


def _ask(agents: Mapping[str, AgentLike], name: str, *msg: Any) -> Any:
    return agents[name].request(*msg, timeout=_TIMEOUT)


def _on_arrival(
    agents: Mapping[str, AgentLike], pairs: list[tuple[str, str]], op: str, params: dict[str, Any]
) -> str:
    """Ask each receiver of ``pairs`` to apply net ``op`` to what its senders send; which
    links, as ``h0,h2→h1 ...``."""
    done = []
    for receiver, senders in _by_receiver(pairs).items():
        peers = [agents[s].host.address for s in senders]
        _ask(agents, receiver, "net", op, {"peers": peers, **params})
        done.append(f"{','.join(senders)}→{receiver}")
    return " ".join(done)


def _cut(
    agents: Mapping[str, AgentLike], pairs: list[tuple[str, str]], port_list: list[int]
) -> str:
    return f"dropped {_on_arrival(agents, pairs, 'drop', {'ports': port_list})} (ports {port_list})"


def apply(
    agents: Mapping[str, AgentLike], fault: HostFault, token: str, ports: Sequence[int]
) -> str:
    """Apply ``fault`` through the run's ``agents`` (host name → agent); the event line to log.

    ``token``: the run tag the agents were connected with; ``ports``: the store's data ports,
    the only ones the rules match.  Raises :class:`ValueError` for a fault naming a host the
    world lacks (or agents of another run), and :class:`.control.HostError` when a host refuses
    (its message says why: no netem, no nft, ...).  Latency is checked on every host before
    any is touched, so a refusal leaves nothing half-applied.
    """
    names = _check(agents, fault, token)
    port_list = sorted({int(p) for p in ports})
    what = describe_host_fault(fault)
    if isinstance(fault, Latency):
        probes = {n: _ask(agents, n, "probe") for n in _involved(fault, names)}
        why = unsupported(fault, probes)
        if why is not None:
            raise HostError(why)
    if isinstance(fault, Partition | Isolate):
        return f"{what}: {_cut(agents, _pairs(fault, names), port_list)}"
    if isinstance(fault, KillHost):
        killed = _ask(agents, fault.host, "procs", "signal", "SIGKILL")
        cut = _cut(agents, _pairs(fault, names), port_list)
        return f"{what}: SIGKILL to {len(killed)} process(es) {killed} on {fault.host}; link {cut}"
    if isinstance(fault, PauseHost | ResumeHost):
        sig = "SIGSTOP" if isinstance(fault, PauseHost) else "SIGCONT"
        reached = _ask(agents, fault.host, "procs", "signal", sig)
        return f"{what}: {sig} to {len(reached)} process(es) {reached} on {fault.host}"
    if isinstance(fault, HealNetwork):
        return f"{what}: {heal(agents, token)}"
    pairs = _pairs(fault, names)
    if isinstance(fault, Loss):  # on arrival, as drops are
        links = _on_arrival(agents, pairs, "loss", {"ports": port_list, "p": fault.p})
        return f"{what}: on {links} (ports {port_list})"
    done = []
    for sender, receivers in _by_sender(pairs).items():  # tc shapes what a host sends
        params: dict[str, Any] = {
            "peers": [agents[r].host.address for r in receivers],
            "ports": port_list,
        }
        if isinstance(fault, Rate):
            _ask(agents, sender, "net", "shape", {**params, "bps": fault.bps})
        else:
            shape = {**params, "delay": fault.seconds, "jitter": fault.jitter}
            _ask(agents, sender, "net", "shape", shape)
        done.append(f"{sender}→{','.join(receivers)}")
    return f"{what}: on {' '.join(done)} (ports {port_list})"


def heal(agents: Mapping[str, AgentLike], token: str) -> str:
    """Remove run ``token``'s rules and shaping from every host; what each host removed.

    Every host is asked even when one fails; then :class:`.control.HostError` names them all.
    """
    strangers = [name for name, agent in agents.items() if agent.run != token]
    if strangers:  # refused before any host is touched
        raise ValueError(
            f"heal: the agents of {', '.join(strangers)} serve run "
            f"{agents[strangers[0]].run!r}, not {token!r}"
        )
    done, failed = [], []
    for name, agent in agents.items():
        try:
            done.append(f"{name}: {agent.request('net', 'heal', timeout=_TIMEOUT)}")
        except HostError as exc:
            failed.append(str(exc))
    if failed:
        raise HostError("heal failed on some hosts: " + "; ".join(failed))
    return "healed " + "; ".join(done)
