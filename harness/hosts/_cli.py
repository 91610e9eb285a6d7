"""``storeharness hosts check FILE|netns:N|ssh:H1,H2|local``: can every host take part?"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from . import netns
from .control import HostError, check
from .inventory import Host, parse_hosts

__all__ = ["check_command"]


@contextlib.contextmanager
def _hosts(spec: str, tag: str | None) -> Iterator[list[Host]]:
    """The hosts of ``spec``; for ``netns:N`` the namespaces are built, and removed after."""
    if not spec.startswith("netns:"):
        yield parse_hosts(spec)
        return
    hosts = parse_hosts(spec)  # checks N before anything is built
    why = netns.missing()
    if why is not None:
        raise HostError(f"--hosts {spec}: cannot build namespaces: {why}")
    tag = tag or netns.new_tag()
    with netns.netns_hosts(len(hosts), tag):
        yield parse_hosts(spec, tag=tag)


def check_command(spec: str, say: Callable[[str], None], tag: str | None = None) -> bool:
    """Check every host of ``spec``, one line each; True when all of them can take part.

    ``tag``: the run tag of the ``netns:N`` namespaces (default: a new one).

    Raises :class:`.inventory.InventoryError` for a bad ``spec`` (a usage error).
    """
    ok = True
    try:
        with _hosts(spec, tag) as hosts:
            for host in hosts:
                try:
                    say(check(host).line())
                except HostError as exc:
                    ok = False
                    say(f"{host.name}: REFUSED: {exc}")
    except (HostError, netns.NetnsError) as exc:
        say(f"storeharness hosts check: {exc}")
        return False
    return ok
