"""The fault proxy's own process: commands on stdin, replies on stdout, a clean start and stop."""

from __future__ import annotations

import pytest

from storeharness.harness.proxy import ProxyProcess
from storeharness.stores import TCPStore
from storeharness.stores.tcp import ServerProcess, bind_listener


def test_the_proxy_process_starts_without_warnings_and_obeys_commands(
    capfd: pytest.CaptureFixture[str],
) -> None:
    server = ServerProcess(bind_listener(0))
    proxy = ProxyProcess("127.0.0.1", server.port)
    try:
        client = TCPStore("127.0.0.1", proxy.port, timeout=30)
        client.set("k", "through the proxy")
        assert proxy.command("delay 0") == "ok"
        assert proxy.command("drop") == "ok 2"  # the client's connection, both ends
        with pytest.raises(RuntimeError, match="unknown command 'jump'"):
            proxy.command("jump")
        client.close()
    finally:
        proxy.close()
        server.stop()
    assert proxy.proc.returncode == 0  # it stopped when its stdin closed
    # Run with -m, a module its package had already imported warns (RuntimeWarning: '...'
    # found in sys.modules) on the child's stderr, which is ours: neither the proxy's entry
    # point nor the server's (python -m storeharness.stores.tcp) may be such a module.
    err = capfd.readouterr().err
    assert "Warning" not in err, err
