"""Namespace hosts without root: the same layout inside a keeper's user namespace.

As root the keeper is asked for (``user_namespace=True``); the last test runs worlds and host
faults as an unprivileged user (uid 65534), and counts what is left after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from storeharness.harness.cli import main
from storeharness.harness.hosts import _userns, netns

from ...stores.etcd_support import in_ci
from ..procs import TAG, exits_within, tagged
from .test_netns import _first_line

NEEDS = netns.missing() or _userns.missing()
needs_userns = pytest.mark.skipif(NEEDS is not None, reason=f"netns hosts in a user ns: {NEEDS}")
pytestmark = pytest.mark.multihost
ROOT = Path(__file__).parents[3]
NOBODY = 65534


def _machine_namespaces(tag: str) -> list[str]:
    """The run's namespaces as the machine's own ``ip netns`` lists them (not the keeper's)."""
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True)
    return [ns["name"] for ns in json.loads(out.stdout or "[]") if tag in ns["name"]]


@pytest.fixture
def unet() -> Iterator[netns.NetnsNetwork]:
    net = netns.build(2, user_namespace=True)
    try:
        yield net
    finally:
        netns.teardown(net.tag)


@needs_userns
def test_hosts_are_built_the_way_this_process_can() -> None:
    """Root builds the machine's own namespaces; anyone else a keeper (run unprivileged too)."""
    with netns.netns_hosts(1) as net:
        assert (net.keeper is None) == netns.privileged()
        assert netns.namespaces(net.tag) == sorted(net.namespaces())
        inside = subprocess.run(
            [*net.hosts[0].exec_argv(), "ip", "-j", "-4", "addr", "show", "eth0"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        assert inside.returncode == 0, inside.stderr
        assert json.loads(inside.stdout)[0]["addr_info"][0]["local"] == "198.18.0.1"
    assert netns.namespaces(net.tag) == []


@needs_userns
def test_in_a_user_namespace_only_the_keeper_sees_the_hosts(unet: netns.NetnsNetwork) -> None:
    assert unet.keeper is not None
    assert _machine_namespaces(unet.tag) == []  # nothing in the machine's /run/netns
    assert netns.namespaces(unet.tag) == sorted(unet.namespaces())
    code = "import os; print(os.getuid(), os.stat('/proc/self/ns/user').st_ino)"
    done = subprocess.run([*unet.hosts[1].exec_argv(), sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=10)  # fmt: skip
    assert done.returncode == 0, done.stderr
    uid, userns = map(int, done.stdout.split())
    assert uid == 0  # root of the keeper's user namespace
    assert (
        userns
        == os.stat(f"/proc/{unet.keeper}/ns/user").st_ino
        != os.stat("/proc/self/ns/user").st_ino
    )


#: A process inside a host that says so, then waits (an interrupted run's rank, say).
STRAY = "import sys; print('inside', flush=True); sys.stdin.read()"


@needs_userns
def test_teardown_kills_the_keeper_and_what_runs_inside() -> None:
    net = netns.build(2, user_namespace=True)
    try:
        stray = subprocess.Popen(
            [*net.hosts[0].exec_argv(), sys.executable, "-c", STRAY],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert _first_line(stray, 10) == "inside\n"
        assert (netns.owners_dir() / net.tag).exists()
    finally:
        removed = netns.teardown(net.tag)
    assert sorted(removed) == sorted(net.namespaces())
    assert stray.wait(10) == -9  # found through its user namespace, killed by pid
    assert net.keeper is not None and _userns.start_time(net.keeper) is None
    assert not (netns.owners_dir() / net.tag).exists()
    assert netns.namespaces(net.tag) == [] and netns.teardown(net.tag) == []


BUILDER = """
from storeharness.harness.hosts import netns
net = netns.build(2, user_namespace=True)
print(net.tag, net.keeper, flush=True)
input()
"""


@needs_userns
def test_a_killed_builders_keeper_ends_and_clean_removes_what_was_inside(
    capsys: pytest.CaptureFixture[str],
) -> None:
    builder = subprocess.Popen([sys.executable, "-c", BUILDER], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        tag, keeper = _first_line(builder, 30).split()
        # a process inside, as an agent waiting out its lease would be
        stray = subprocess.Popen(
            [*netns.enter_argv(tag), "ip", "netns", "exec", f"storeharness-{tag}-h1",
             sys.executable, "-c", STRAY],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert _first_line(stray, 10) == "inside\n"
        assert tag not in netns.stale_tags()
    finally:
        builder.kill()  # as a SIGKILLed test run: no teardown
        builder.wait(10)
    assert exits_within(int(keeper), 10)  # its lifeline closed with the builder
    assert stray.poll() is None and tag in netns.stale_tags()
    assert main(["hosts", "clean", "netns"]) == 0
    assert f"  storeharness-{tag}-h1\n" in capsys.readouterr().out
    assert stray.wait(10) == -9
    assert tag not in netns.stale_tags() and not (netns.owners_dir() / tag).exists()


def test_a_sysctl_that_turns_user_namespaces_off_is_named(tmp_path: Path) -> None:
    assert _userns._switch_off(tmp_path) is None  # no such switches on this "kernel"
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "max_user_namespaces").write_text("0\n")
    assert _userns._switch_off(tmp_path) == (
        "no user namespaces may be created (sysctl user.max_user_namespaces = 0): as root, "
        "`sysctl -w user.max_user_namespaces=15000`; or run as root"
    )


WITHOUT = """
from storeharness.harness.hosts import netns
print(netns.missing())
"""


@needs_userns
def test_without_root_or_user_namespaces_missing_says_which_sysctl() -> None:
    """A real refusal: in a user namespace of its own where no more may be made, as uid 0
    without capabilities (``setpriv`` empties them)."""
    script = (
        "echo 0 > /proc/sys/user/max_user_namespaces && exec setpriv --bounding-set=-all "
        f"--inh-caps=-all {sys.executable} -c '{WITHOUT}'"
    )
    done = subprocess.run(["unshare", "-Ur", "sh", "-c", script], capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "building network namespaces needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) or an "
        "unprivileged user namespace; running as uid 0 without those capabilities, and no user "
        "namespaces may be created (sysctl user.max_user_namespaces = 0): as root, "
        "`sysctl -w user.max_user_namespaces=15000`; or run as root"
    )


def _unreachable_for_nobody() -> str | None:
    """Why uid 65534 cannot run this interpreter and read this checkout from inside a user
    namespace of its own (where files of unmapped owners are reached as "other"), or None."""
    done = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "unshare",
         "-Ur", sys.executable, "-c", f"import os, storeharness; os.listdir({str(ROOT)!r})"],
        capture_output=True, text=True, timeout=30, cwd="/",
    )  # fmt: skip
    if done.returncode == 0:
        return None
    said = (done.stderr.strip() or f"exit {done.returncode}").splitlines()[-1]
    return (
        f"uid {NOBODY} cannot run {sys.executable} with storeharness from {ROOT}: {said}; let "
        "it reach them (e.g. `chmod o+x /root` when the interpreter lives under /root)"
    )


@needs_userns
@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65534 needs root")
def test_an_unprivileged_user_runs_worlds_and_host_faults_and_leaves_nothing() -> None:
    """As uid 65534: a 6-rank world over 3 hosts on tcp, and the host-fault scenarios whose
    tools are new there (a partition: nft; a rate limit: tc; inside the user namespace)."""
    if shutil.which("nft") is None and not Path("/usr/sbin/nft").exists():
        pytest.skip("nft is not installed: apt-get install nftables")
    unreachable = _unreachable_for_nobody()
    if unreachable is not None:
        assert not in_ci(), f"CI must run the unprivileged test: {unreachable}"
        pytest.skip(unreachable)
    home = Path(tempfile.mkdtemp(prefix="storeharness-nobody-"))
    os.chown(home, NOBODY, NOBODY)
    mark = uuid.uuid4().hex
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",  # an ordinary user's: no sbin
        "HOME": str(home),
        "TMPDIR": str(home),
        "PYTHONDONTWRITEBYTECODE": "1",
        TAG: mark,
    }
    try:
        run = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "0",
             "-m", "multihost", "--hosts", "netns:3", "--store", "tcp",
             "-k", "not lossy and not killed",
             f"{Path(__file__).relative_to(ROOT)}::test_hosts_are_built_the_way_this_process_can",
             "tests/harness/launch/test_spanning.py::"
             "test_six_ranks_spread_over_three_hosts_meet_on_the_store_hosts_server",
             "scenarios/hosts.py"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
        assert "4 passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]
        assert tagged(mark) == []  # no process of the run: keepers, agents, ranks, servers
        records = home / f"storeharness-{NOBODY}" / "netns"
        assert not records.exists() or list(records.iterdir()) == []
        runs = home / "storeharness-runs"
        assert not runs.exists() or list(runs.iterdir()) == []
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a process as uid 65534 needs root")
def test_cleaning_leaves_another_users_run_alone() -> None:
    """Its live-run records are under its own temporary directory, so from here its run would
    look stale: a root ``hosts clean`` running beside an unprivileged run must not kill it."""
    from storeharness.harness.hosts import _hostprocs

    run = uuid.uuid4().hex[:12]
    env = {**os.environ, **_hostprocs.tagged(run, "h0")}
    theirs = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable,
         "-c", STRAY], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip
    ours = subprocess.Popen([sys.executable, "-c", STRAY], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert _first_line(theirs, 10) == _first_line(ours, 10) == "inside\n"
        stale = _hostprocs.stale_pids()
        assert stale.get(ours.pid) == run  # ours, with no live agent: stale
        assert theirs.pid not in stale
    finally:
        for proc in (theirs, ours):
            proc.kill()
            proc.wait(10)


@needs_userns
def test_hosts_check_says_an_agent_is_root_of_a_user_namespace(unet: netns.NetnsNetwork) -> None:
    pytest.importorskip("execnet")
    from storeharness.harness.hosts import control
    from storeharness.harness.hosts.inventory import netns_hosts

    host = netns_hosts(2, unet.tag)[1]
    assert host.gateway.startswith("popen//python=") and "/nsenter -t " in host.gateway
    found = control.check(host)
    assert (found.euid, found.net_admin, found.outer_uid) == (0, True, os.getuid())
    assert f"uid 0 (of a user namespace; uid {os.getuid()} outside) with CAP_NET_ADMIN" in (
        found.line()
    )


@needs_userns
@pytest.mark.parametrize("fails", ["bridge", "record"])
def test_a_build_failing_after_its_keeper_started_stops_it(
    monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    """A kernel without the bridge module fails the build inside the keeper; a full disk fails
    recording the keeper: either way the failure is raised, and the keeper and the run's
    record are gone."""
    real_run, real_write, keepers = netns._run, netns._write_owner, []

    def run(*args: str, check: bool = True, enter: Sequence[str] = ()) -> str:
        if fails == "bridge" and "bridge" in args:
            keepers.append(int(enter[list(enter).index("-t") + 1]))
            raise netns.NetnsError("`ip link add br0 type bridge` failed: Unknown device type.")
        return real_run(*args, check=check, enter=enter)

    def write(tag: str, names: Sequence[str] = (), keeper: dict[str, Any] | None = None) -> None:
        if fails == "record" and keeper is not None:
            keepers.append(int(keeper["pid"]))
            raise OSError(28, "No space left on device")
        real_write(tag, names, keeper)

    monkeypatch.setattr(netns, "_run", run)
    monkeypatch.setattr(netns, "_write_owner", write)
    tag = netns.new_tag()
    with pytest.raises((netns.NetnsError, OSError), match=r"Unknown device type|No space left"):
        netns.build(2, tag=tag, user_namespace=True)
    assert len(keepers) == 1 and _userns.start_time(keepers[0]) is None
    assert not (netns.owners_dir() / tag).exists() and tag not in netns._keepers
