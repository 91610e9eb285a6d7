"""``python -m storeharness.harness._proxy_main``: the child :class:`~.proxy.ProxyProcess` runs.

A :class:`~.proxy.Proxy` on an inherited listening socket, driven by one-line commands on stdin
(``delay S``, ``blackhole``, ``heal``, ``drop``), each answered by one line on stdout; it exits
when its stdin closes.  Kept apart from ``proxy.py`` because the package imports that module,
and running an already imported module with ``-m`` makes the interpreter warn.
"""

from __future__ import annotations

import argparse
import socket
import sys

from .proxy import Proxy


def main(argv: list[str] | None = None) -> None:
    """Serve the proxy until stdin closes, answering each command line with one line."""
    parser = argparse.ArgumentParser(description="A fault-injecting TCP proxy (harness use).")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    proxy = Proxy(host, int(port), socket.socket(fileno=args.listen_fd))
    try:
        for line in sys.stdin:
            words = line.split()
            try:
                if words == ["blackhole"]:
                    proxy.blackhole()
                    reply = "ok"
                elif words == ["heal"]:
                    proxy.heal()
                    reply = "ok"
                elif words == ["drop"]:
                    reply = f"ok {proxy.drop()}"
                elif len(words) == 2 and words[0] == "delay":
                    proxy.set_delay(float(words[1]))
                    reply = "ok"
                else:
                    reply = f"error: unknown command {line.strip()!r}"
            except ValueError as exc:
                reply = f"error: {exc}"
            print(reply, flush=True)
    finally:
        proxy.close()


if __name__ == "__main__":
    main()
