"""The inventory: which hosts a world may use, from a ``hosts.toml`` or a ``--hosts`` shortcut.

A ``hosts.toml`` has one table per host, named by the host::

    [hosts.rack1-a]
    gateway = "ssh=rack1-a//python=/opt/venv/bin/python"  # how execnet reaches it
    address = "10.1.0.11"     # data plane: where ranks and the store talk (faults match it)
    slots = 8                 # ranks it may run (default 1)
    roles = ["store"]         # "store": may serve the store (default: none)

Shortcuts give the same records: ``local`` (this machine, loopback), ``ssh:h1,h2`` (each name
is also its data address; the remote ``python3`` must have storeharness installed) and
``netns:N`` (the namespaces :func:`.netns.build` creates for a run tag; gateways are
``popen//python=ip netns exec NS <this interpreter>``, preceded by ``nsenter`` into the run's
keeper when it was built without root).  The first host of a shortcut has the
``store`` role.  Every bad field is refused with :class:`InventoryError` naming the file, the
host, the field and what is allowed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import netns

__all__ = ["GATEWAY_KINDS", "ROLES", "Host", "InventoryError", "load", "parse_hosts", "parse_toml"]

#: The execnet transports a gateway spec may start with.
GATEWAY_KINDS = ("popen", "ssh", "socket", "vagrant_ssh")
#: Roles a host may have.
ROLES = ("store",)
#: Rank slots of a ``local`` or ``netns:N`` host (several ranks per namespace, as on a machine).
SHORTCUT_SLOTS = 4
_FIELDS = ("gateway", "address", "slots", "roles")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class InventoryError(ValueError):
    """A ``hosts.toml`` or ``--hosts`` value that cannot be used; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class Host:
    """One host of the inventory.

    ``namespace`` is set for ``netns:N`` hosts (the namespace :func:`.netns.build` creates).
    """

    name: str
    gateway: str
    address: str
    slots: int = 1
    roles: frozenset[str] = field(default_factory=frozenset)
    namespace: str | None = None


def _check_gateway(spec: str, where: str) -> str:
    kind = spec.split("//", 1)[0].split("=", 1)[0]
    if kind not in GATEWAY_KINDS:
        raise InventoryError(
            f"{where}: field 'gateway' must be an execnet spec starting with one of "
            f"{', '.join(k + '...' for k in GATEWAY_KINDS)} (e.g. 'ssh=HOST//python=python3'), "
            f"got {spec!r}"
        )
    for part in spec.split("//")[1:]:
        if not part or ("=" not in part and part not in ("nice", "dont_write_bytecode")):
            raise InventoryError(
                f"{where}: field 'gateway' has a malformed option {part!r} in {spec!r} "
                "(options are KEY=VALUE, joined with //)"
            )
    return spec


def _check_address(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InventoryError(
            f"{where}: field 'address' must be the host's data-plane IP address or DNS name, "
            f"got {value!r}"
        )
    try:
        ipaddress.ip_address(value)
    except ValueError:
        labels = value.rstrip(".").split(".")
        if not all(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", x) for x in labels):
            raise InventoryError(
                f"{where}: field 'address' {value!r} is neither an IP address nor a DNS name"
            ) from None
    return value


def _host(name: str, table: Any, where: str) -> Host:
    where = f"{where}: host {name!r}"
    if not _NAME.match(name):
        raise InventoryError(
            f"{where}: a host name is 1-63 letters, digits, '.', '_' or '-' (first a letter or "
            "digit)"
        )
    if not isinstance(table, Mapping):
        raise InventoryError(f"{where}: must be a table ([hosts.{name}]), got {table!r}")
    unknown = sorted(set(table) - set(_FIELDS))
    if unknown:
        raise InventoryError(
            f"{where}: unknown field {unknown[0]!r} (the fields are {', '.join(_FIELDS)})"
        )
    for required in ("gateway", "address"):
        if required not in table:
            raise InventoryError(f"{where}: field {required!r} is missing")
    gateway = table["gateway"]
    if not isinstance(gateway, str):
        raise InventoryError(f"{where}: field 'gateway' must be a string, got {gateway!r}")
    slots = table.get("slots", 1)
    if type(slots) is not int or slots < 1:
        raise InventoryError(f"{where}: field 'slots' must be an integer >= 1, got {slots!r}")
    roles = table.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise InventoryError(f"{where}: field 'roles' must be a list of strings, got {roles!r}")
    for role in roles:
        if role not in ROLES:
            raise InventoryError(
                f"{where}: field 'roles' has unknown role {role!r} (known: {', '.join(ROLES)})"
            )
    return Host(
        name=name,
        gateway=_check_gateway(gateway, where),
        address=_check_address(table["address"], where),
        slots=slots,
        roles=frozenset(roles),
    )


def parse_toml(text: str, source: str = "hosts.toml") -> list[Host]:
    """The hosts of a ``hosts.toml`` text, in file order; ``source`` names it in errors.

    Raises :class:`InventoryError` for bad TOML, a missing ``[hosts.NAME]`` table, an unknown
    or badly typed field, or two hosts with one data address.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{source}: not valid TOML: {exc}") from exc
    unknown = sorted(set(doc) - {"hosts"})
    if unknown:
        raise InventoryError(
            f"{source}: unknown top-level key {unknown[0]!r} (hosts go in [hosts.NAME] tables)"
        )
    tables = doc.get("hosts")
    if not isinstance(tables, dict) or not tables:
        raise InventoryError(f"{source}: no hosts: add a [hosts.NAME] table per host")
    hosts = [_host(name, table, source) for name, table in tables.items()]
    seen: dict[str, str] = {}
    for h in hosts:
        if h.address in seen:
            raise InventoryError(
                f"{source}: hosts {seen[h.address]!r} and {h.name!r} have the same address "
                f"{h.address!r}: each host needs its own data-plane address"
            )
        seen[h.address] = h.name
    return hosts


def load(path: str | os.PathLike[str]) -> list[Host]:
    """The hosts of the ``hosts.toml`` at ``path`` (:class:`InventoryError` if unreadable)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InventoryError(f"cannot read hosts file {os.fspath(path)!r}: {exc}") from exc
    return parse_toml(text, os.fspath(path))


def netns_hosts(n: int, tag: str, python: str | None = None) -> list[Host]:
    """The hosts :func:`.netns.build` ``(n, tag)`` creates, reached with ``ip netns exec``
    (after ``nsenter`` into the run's keeper when it was built in a user namespace)."""
    exe = python or sys.executable
    enter = netns.enter_argv(tag)
    return [
        Host(
            name=f"h{i}",
            gateway="popen//python=" + shlex.join([*enter, "ip", "netns", "exec", ns, exe]),
            address=netns.host_address(i),
            slots=SHORTCUT_SLOTS,
            roles=frozenset({"store"}) if i == 0 else frozenset(),
            namespace=ns,
        )
        for i, ns in enumerate(netns.host_namespaces(n, tag))
    ]


def parse_hosts(spec: str, *, tag: str | None = None) -> list[Host]:
    """A ``--hosts`` value: a shortcut (``local``, ``ssh:h1,h2``, ``netns:N``) or a hosts.toml path.

    ``netns:N`` hosts are named for run ``tag`` (a new one when not given).  Raises
    :class:`InventoryError` naming what was wrong.
    """
    if spec == "local":
        return [
            Host("local", f"popen//python={sys.executable}", "127.0.0.1",
                 os.cpu_count() or 1, frozenset({"store"}))
        ]  # fmt: skip
    if spec.startswith("ssh:"):
        names = spec[4:].split(",")
        if not all(names):
            raise InventoryError(f"--hosts {spec!r}: expected ssh:HOST[,HOST...], no empty names")
        if len(set(names)) != len(names):
            raise InventoryError(f"--hosts {spec!r}: a host is named twice")
        hosts = []
        for i, name in enumerate(names):
            where = f"--hosts {spec!r}"
            _check_address(name, where)
            roles = frozenset({"store"}) if i == 0 else frozenset()
            hosts.append(Host(name, f"ssh={name}//python=python3", name, 1, roles))
        return hosts
    if spec.startswith("netns:"):
        count = spec[6:]
        if not count.isdigit() or not 1 <= int(count) <= netns.MAX_HOSTS:
            raise InventoryError(
                f"--hosts {spec!r}: expected netns:N with N a number of hosts 1..{netns.MAX_HOSTS}"
            )
        return netns_hosts(int(count), tag or netns.new_tag())
    if spec.endswith(".toml") or os.path.exists(spec):
        return load(spec)
    raise InventoryError(
        f"--hosts {spec!r}: expected local, ssh:HOST[,HOST...], netns:N or a hosts.toml path"
    )
