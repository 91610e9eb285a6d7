"""In CI the multihost tests must run, not skip: namespaces, iproute2 and nft are all there."""

from __future__ import annotations

import shutil

import pytest

from storeharness.harness.hosts import netns

from ...stores.etcd_support import in_ci


@pytest.mark.multihost
def test_ci_can_build_namespace_hosts_and_apply_host_faults() -> None:
    if not in_ci():
        pytest.skip("outside CI (CI=true) a machine without namespaces skips the multihost tests")
    assert netns.missing() is None, f"CI must run the multihost tests, but: {netns.missing()}"
    assert shutil.which("nft"), "CI must run the host-fault tests: .ci/run installs nftables"
    assert shutil.which("tc"), "CI must run the rate-limit tests: tc (iproute2) is missing"
    assert shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin"), (
        "CI must run the ssh smoke test: .ci/run installs openssh-server"
    )
