"""The controller's side of a host: an execnet gateway, the agent on it, and ``hosts check``.

:func:`connect` opens the host's gateway, refuses a host whose Python (major.minor) or
storeharness version differs from the controller's — naming the host and the install command —
and starts the agent (:mod:`.agent`) with a lease that a heartbeat thread keeps renewing.
:func:`check` measures what ``storeharness hosts check`` reports: tools, privileges, whether
netem works, and the clock offset and round trip (best of several ``time`` requests: the
offset of the sample with the smallest round trip, whose uncertainty is half that round trip).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from .agent import BOOTSTRAP
from .inventory import Host

__all__ = ["Agent", "HostCheck", "HostError", "check", "connect"]

#: Seconds an agent keeps going without hearing from the controller.
LEASE = 5.0
_CONNECT_TIMEOUT = 30.0
_CLOCK_SAMPLES = 8
_EXIT_TIMEOUT = 5.0
_RUN_TAG = re.compile(r"[A-Za-z0-9_]{1,32}")


class HostError(RuntimeError):
    """A host cannot take part: unreachable, a version mismatch, an agent that failed."""


def _execnet() -> Any:
    try:
        import execnet
    except ImportError as exc:  # pragma: no cover - execnet comes with pytest-xdist
        raise HostError(
            "worlds across hosts need execnet: pip install 'storeharness[multihost]'"
        ) from exc
    return execnet


@dataclass(frozen=True, slots=True)
class HostCheck:
    """What ``hosts check`` found on one host; times in seconds."""

    host: str
    python: str
    storeharness: str
    euid: int
    net_admin: bool
    nft: str | None
    iptables: str | None
    tc: str | None
    netem: bool | None
    netem_detail: str
    clock_offset: float
    rtt: float
    #: The uid outside the host's user namespace when it is not the machine's own (a
    #: ``netns:N`` host built without root), else None.
    outer_uid: int | None = None

    def _outside(self) -> str:
        if self.outer_uid is None:
            return ""
        return f" (of a user namespace; uid {self.outer_uid} outside)"

    def line(self) -> str:
        """One line for a person: versions, tools, netem, clock."""
        tools = ", ".join(f"{t} {'yes' if getattr(self, t) else 'no'}"
                          for t in ("nft", "iptables", "tc"))  # fmt: skip
        netem = {True: "yes", False: "no", None: "unknown"}[self.netem]
        return (
            f"{self.host}: python {self.python}, storeharness {self.storeharness}, "
            f"uid {self.euid}{self._outside()}{' with' if self.net_admin else ' without'} "
            f"CAP_NET_ADMIN, {tools}, "
            f"netem {netem} ({self.netem_detail}), clock offset {self.clock_offset * 1e3:+.2f} ms "
            f"(± {self.rtt / 2 * 1e3:.2f}), rtt {self.rtt * 1e3:.2f} ms"
        )


class Agent:
    """A connected host agent; requests are serialised, heartbeats go out every ``lease / 4``."""

    def __init__(
        self, host: Host, group: Any, channel: Any, info: dict[str, Any], lease: float,
        run: str = "",
    ) -> None:  # fmt: skip
        self.host = host
        #: The run tag the agent puts in the environment of what it starts.
        self.run = run
        self.info = info
        self.lease = lease
        self._group = group
        self._channel = channel
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beating = threading.Event()
        self._beating.set()
        self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                         name=f"heartbeat-{host.name}")  # fmt: skip
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 4):
            if self._beating.is_set():
                with self._lock:
                    if self._channel.isclosed():
                        return
                    try:
                        self._channel.send(("heartbeat",))
                    except OSError:  # the agent or its link is gone: requests will say so
                        return

    def pause_heartbeat(self) -> None:
        """Stop renewing the lease (as a cut link would); for tests of the lease."""
        self._beating.clear()

    def request(self, *msg: Any, timeout: float = _CONNECT_TIMEOUT) -> Any:
        """Send one request and return its reply; :class:`HostError` if it fails or is late."""
        with self._lock:
            try:
                self._channel.send(msg)
                reply = self._channel.receive(timeout=timeout)
            except Exception as exc:
                raise HostError(f"host {self.host.name}: request {msg[0]!r} failed: {exc}") from exc
        if isinstance(reply, tuple) and reply and reply[0] == "error":
            raise HostError(f"host {self.host.name}: {reply[1]}")
        return reply

    def clock(
        self, samples: int = _CLOCK_SAMPLES, *, monotonic: bool = False
    ) -> tuple[float, float]:
        """``(offset, rtt)``: the host's clock minus ours, from the fastest of ``samples``.

        ``monotonic``: compare ``time.monotonic()`` clocks (what ranks stamp operations with)
        instead of wall clocks.
        """
        now, kind = (time.monotonic, "monotonic") if monotonic else (time.time, "time")
        best: tuple[float, float] | None = None
        for _ in range(samples):
            t0 = now()
            remote = float(self.request(kind))
            t1 = now()
            rtt = t1 - t0
            if best is None or rtt < best[1]:
                best = (remote - (t0 + t1) / 2, rtt)
        assert best is not None
        return best

    def open_channel(self) -> Any:
        """A new execnet channel to this agent's interpreter (sent to it in a request)."""
        return self._channel.gateway.newchannel()

    def close(self) -> None:
        """Ask the agent to tear down, stop the heartbeat and close the gateway; idempotent."""
        self._stop.set()
        if not self._channel.isclosed():
            # it may be gone already; exiting the gateway ends it either way
            with contextlib.suppress(HostError):
                self.request("close", timeout=10)
        self._thread.join(5)
        _terminate(self._group)


def _terminate(group: Any) -> None:
    """Exit ``group``'s gateway and wait for its interpreter to end (killed if it lingers)."""
    group.terminate(timeout=_EXIT_TIMEOUT)


def connect(
    host: Host,
    *,
    lease: float = LEASE,
    expect_version: str | None = None,
    timeout: float = _CONNECT_TIMEOUT,
    run: str | None = None,
) -> Agent:
    """Open ``host``'s gateway, refuse a version mismatch, and start its agent.

    ``expect_version``: the storeharness version the host must have (default: ours).  ``run``:
    the run tag (default: a new one) that the agent puts in the environment of every process it
    starts and names its network faults after; the agents of one run share it.  Raises
    :class:`HostError` naming the host, what differs and the command that fixes it.
    """
    if run is not None and not _RUN_TAG.fullmatch(run):
        raise ValueError(
            f"run tag {run!r} must be 1-32 letters, digits or '_' (it names nft tables)"
        )
    execnet = _execnet()
    want = expect_version or version("storeharness")
    try:
        # a group of its own, so closing waits for this gateway's interpreter to end
        group = execnet.Group()
        gateway = group.makegateway(host.gateway)
    except Exception as exc:
        raise HostError(f"host {host.name}: cannot open gateway {host.gateway!r}: {exc}") from exc
    try:
        channel = gateway.remote_exec(BOOTSTRAP)
        info = channel.receive(timeout=timeout)
        ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
        install = f"{info['executable']} -m pip install 'storeharness=={want}'"
        if info["storeharness"] is None:
            raise HostError(
                f"host {host.name}: storeharness is not installed for {info['executable']}; "
                f"install it there: {install}"
            )
        if info["storeharness"] != want:
            raise HostError(
                f"host {host.name}: storeharness {info['storeharness']} but the controller runs "
                f"{want}; install the same version there: {install}"
            )
        if not info["python"].startswith(ours + "."):
            raise HostError(
                f"host {host.name}: Python {info['python']} ({info['executable']}) but the "
                f"controller runs Python {ours}; point the gateway at a Python {ours} "
                "(…//python=PATH) with storeharness installed"
            )
        run = run or secrets.token_hex(4)
        channel.send(("serve", lease, {"run": run, "host": host.name, "address": host.address}))
        try:
            ready = channel.receive(timeout=timeout)
        except Exception as exc:
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            raise HostError(
                f"host {host.name}: the agent did not start under {info['executable']}: {last}; "
                f"reinstall there: {install}"
            ) from exc
        if not (isinstance(ready, tuple) and ready[0] == "ready"):
            raise HostError(f"host {host.name}: the agent sent {ready!r} instead of ready")
    except BaseException:
        _terminate(group)
        raise
    return Agent(host, group, channel, info, lease, run)


def check(host: Host, *, expect_version: str | None = None) -> HostCheck:
    """Connect to ``host``, measure what ``hosts check`` reports, and disconnect."""
    agent = connect(host, expect_version=expect_version)
    try:
        found = agent.request("probe")
        offset, rtt = agent.clock()
    finally:
        agent.close()
    return HostCheck(
        host=host.name,
        python=agent.info["python"],
        storeharness=agent.info["storeharness"],
        clock_offset=offset,
        rtt=rtt,
        **found,
    )
