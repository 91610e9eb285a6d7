"""An ``ssh=`` smoke test: an sshd per namespace host, agents reached through real ssh.

Each host namespace runs its own ``sshd -D -e`` with a private config, host key and authorized
key under the test's directory, listening only on the host's data address; the system's sshd
is never started.  ``/run/sshd`` (sshd's privilege-separation directory) is a tmpfs of that
sshd's own mount namespace, so the machine's ``/run`` is untouched.  The controller is not on
the data plane (it lives in the root namespace), so the ssh client reaches each address through
a ``ProxyCommand`` that relays from inside the host's namespace — as a jump host would.
"""

from __future__ import annotations

import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from storeharness.harness import scenario
from storeharness.harness.hosts import netns
from storeharness.harness.launch.session import HostSession
from storeharness.harness.run import run_case

from ..launch import remote_ranks

pytest.importorskip("execnet")
SSHD = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/sbin")
SSH, KEYGEN = shutil.which("ssh"), shutil.which("ssh-keygen")
NEEDS = (
    "sshd is not installed: apt-get install openssh-server (the system sshd need not run)"
    if SSHD is None or SSH is None or KEYGEN is None
    else netns.missing()
    or (None if netns.privileged() else "the sshd smoke test logs in as root: run as root")
)
pytestmark = [
    pytest.mark.multihost,
    pytest.mark.skipif(NEEDS is not None, reason=f"ssh hosts: {NEEDS}"),
]
_START_TIMEOUT = 10.0

#: Bytes between the ssh client (stdin/stdout) and ``argv[1]:argv[2]``, run inside a host's
#: namespace as the client's ProxyCommand.
RELAY = """
import os, selectors, socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.settimeout(None)
sel = selectors.DefaultSelector()
sel.register(0, selectors.EVENT_READ)
sel.register(sock, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj == 0:
            data = os.read(0, 65536)
            if not data:
                sock.shutdown(socket.SHUT_WR)
                sel.unregister(0)
            else:
                sock.sendall(data)
        else:
            data = sock.recv(65536)
            if not data:
                sys.exit(0)
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
"""

SSHD_CONFIG = """
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
"""

SSH_CONFIG = """
Host 198.18.*
  User root
  IdentityFile {dir}/id
  IdentitiesOnly yes
  UserKnownHostsFile {dir}/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
  LogLevel ERROR
  ProxyCommand {ip} netns exec {via} {python} {dir}/relay.py %h %p
"""


@dataclass
class SshHosts:
    """Two namespace hosts with an sshd each, and the ``hosts.toml`` that reaches them."""

    net: netns.NetnsNetwork
    toml: Path
    sshds: list[subprocess.Popen[str]]


def _keygen(path: Path) -> str:
    assert KEYGEN is not None
    subprocess.run([KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "storeharness-test", "-f",
                    str(path)], check=True, timeout=30)  # fmt: skip
    return path.with_suffix(".pub").read_text().strip()


def _listening(sshd: subprocess.Popen[str], deadline: float) -> None:
    """Wait for sshd's "Server listening" line on stderr (it logs there with ``-e``)."""
    assert sshd.stderr is not None
    said = []
    with selectors.DefaultSelector() as sel:
        sel.register(sshd.stderr, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                continue
            line = sshd.stderr.readline()
            if not line:
                break
            said.append(line.strip())
            if line.startswith("Server listening on"):
                return
    raise AssertionError(f"sshd did not listen within {_START_TIMEOUT} s: {said}")


def _host_table(index: int, host: netns.NetnsHost, ssh_config: Path) -> str:
    """Host ``s<index>`` of the hosts.toml: an ``ssh=`` gateway with our private ssh config."""
    gateway = f"ssh=root@{host.address}//python={sys.executable}//ssh_config={ssh_config}"
    roles = 'roles = ["store"]\n' if index == 0 else ""
    return (
        f'[hosts.s{index}]\ngateway = "{gateway}"\naddress = "{host.address}"\nslots = 2\n{roles}'
    )


@pytest.fixture
def ssh_hosts(tmp_path: Path) -> Iterator[SshHosts]:
    assert SSHD is not None
    d = tmp_path
    host_key = _keygen(d / "host_key")
    (d / "authorized_keys").write_text(_keygen(d / "id") + "\n")
    (d / "sshd_config").write_text(SSHD_CONFIG.format(dir=d))
    (d / "relay.py").write_text(RELAY)
    net = netns.build(2)
    sshds: list[subprocess.Popen[str]] = []
    try:
        (d / "known_hosts").write_text("".join(f"{h.address} {host_key}\n" for h in net.hosts))
        (d / "ssh_config").write_text(
            SSH_CONFIG.format(
                dir=d, ip=shutil.which("ip"), via=net.hosts[0].namespace, python=sys.executable
            )
        )
        deadline = time.monotonic() + _START_TIMEOUT
        for h in net.hosts:
            # `ip netns exec` gives the command a mount namespace of its own: /run/sshd
            # exists only there
            script = (
                "mount -t tmpfs -o mode=0755 sshd-run /run && mkdir -m 0755 /run/sshd && "
                f'exec {SSHD} -D -e -f "$1" -o ListenAddress={h.address}'
            )
            sshds.append(subprocess.Popen(
                [*h.exec_argv(), "sh", "-c", script, "sshd", str(d / "sshd_config")],
                stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            ))  # fmt: skip
        for sshd in sshds:
            _listening(sshd, deadline)
        toml = d / "hosts.toml"
        toml.write_text(
            "".join(_host_table(i, h, d / "ssh_config") for i, h in enumerate(net.hosts))
        )
        yield SshHosts(net, toml, sshds)
    finally:
        for sshd in sshds:
            sshd.terminate()
        for sshd in sshds:
            try:
                sshd.wait(5)
            except subprocess.TimeoutExpired:
                sshd.kill()
                sshd.wait(5)
            if sshd.stderr is not None:
                sshd.stderr.close()
        netns.teardown(net.tag)


_over_ssh = scenario(world_size=4, name="over_ssh")(remote_ranks.where_am_i)


def test_a_world_spans_two_hosts_reached_over_ssh(ssh_hosts: SshHosts) -> None:
    with HostSession(str(ssh_hosts.toml)) as session:
        assert session.unavailable is None
        result = run_case(_over_ssh.cases(["tcp"], spanning=True)[0], hosts=session)
        agents = [session.agent(h) for h in session.hosts()]
        assert [a.host.gateway.split("//")[0] for a in agents] == [
            f"ssh=root@{h.address}" for h in ssh_hosts.net.hosts
        ]
        # each agent is a child of its host's sshd (a login session), not of this process
        sshd_pids = {p.pid for p in ssh_hosts.sshds}
        assert all(_has_ancestor(a.info["pid"], sshd_pids) for a in agents)
    assert result.passed, result.report()
    assert result.world is not None
    values = result.world.values()
    expected = [("s0", "198.18.0.1"), ("s1", "198.18.0.2")] * 2
    assert [v[:2] for v in values] == expected
    assert all("198.18.0.1:" in v[3] for v in values)  # the store's server on s0


def _has_ancestor(pid: int, ancestors: set[int]) -> bool:
    """Whether one of ``ancestors`` is ``pid``'s parent, grandparent, ... (read from /proc)."""
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return False
        if pid in ancestors:
            return True
    return False
