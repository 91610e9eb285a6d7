"""``storeharness hosts check HOSTS`` (can every host take part?) and ``hosts clean``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from . import netns
from .control import HostError, check, connect
from .inventory import Host, parse_hosts

__all__ = ["check_command", "clean_command"]


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


def clean_command(what: str, say: Callable[[str], None]) -> bool:
    """Remove what interrupted runs left; True when nothing failed.

    ``netns``: the namespaces of runs whose process is gone.  Hosts (a hosts.toml,
    ``ssh:H1,H2``, ``local``, ``netns:N``): on each host, through an agent, the processes of
    runs that have no live agent there (found by their ``STOREHARNESS_RUN`` tag, killed by pid),
    their nft tables, the qdiscs we add and their workdirs (:func:`._hostrun.clean`); for
    ``netns:N`` the stale namespaces too.  Raises :class:`.inventory.InventoryError` (a
    ``ValueError``) for a bad hosts value.
    """
    if what != "netns":
        ok = True
        if what.startswith("netns:"):
            ok = clean_command("netns", say)
        return _clean_hosts(what, say) and ok
    why = netns.missing()
    if why is not None:
        say(f"storeharness hosts clean: {why}")
        return False
    try:
        removed = netns.clean_stale()
    except netns.NetnsError as exc:
        say(f"storeharness hosts clean: {exc}")
        return False
    say(f"removed {len(removed)} namespace(s) of finished runs" + "".join(
        f"\n  {name}" for name in removed))  # fmt: skip
    return True


def _clean_hosts(spec: str, say: Callable[[str], None]) -> bool:
    ok = True
    try:
        with _hosts(spec, None) as hosts:
            for host in hosts:
                try:
                    agent = connect(host)
                except HostError as exc:
                    ok = False
                    say(f"{host.name}: REFUSED: {exc}")
                    continue
                try:
                    done = agent.request("clean")
                except HostError as exc:
                    ok = False
                    say(f"{host.name}: clean failed: {exc}")
                    continue
                finally:
                    agent.close()
                say(
                    f"{host.name}: killed {len(done['processes'])} process(es) "
                    f"{done['processes']}, removed nft tables {done['tables']}, qdiscs on "
                    f"{done['qdiscs']}, workdirs {done['workdirs']}"
                )
    except (HostError, netns.NetnsError) as exc:
        say(f"storeharness hosts clean: {exc}")
        return False
    return ok
