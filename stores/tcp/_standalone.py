"""A TCPStore server in a process of its own, and the standalone ``python -m
storeharness.stores.tcp`` (its options: ``--help``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys

from .._errors import StoreError
from .._process import stop_process
from ._token import TOKEN_ENV, resolve_token
from .codec import Limits
from .server import TCPServer, _new_loop, adopt_listener, bind_listener

__all__ = ["PROG", "ServerProcess", "main"]


_LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(Limits))


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def _limit_options(limits: Limits) -> list[str]:
    """``limits`` as the server's command-line options (``--max-key N ...``), every field."""
    return [arg for name in _LIMIT_FIELDS for arg in (_option(name), str(getattr(limits, name)))]


class ServerProcess:
    """A TCPStore server in a process of its own, on a socket this process bound.

    The child serves until this object's ``stop()`` or this process's exit (it watches a pipe
    from us and stops on EOF), so it cannot outlive its owner.  Every field of ``limits`` is
    passed on; the token (``token=`` or :data:`TOKEN_ENV`) through the child's environment,
    never its command line.
    """

    def __init__(
        self,
        sock: socket.socket,
        limits: Limits | None = None,
        accelerate: bool | None = None,
        token: str | None = None,
    ) -> None:
        self.port: int = sock.getsockname()[1]
        lim = limits or Limits()
        speed = {None: "auto", True: "yes", False: "no"}[accelerate]
        env = dict(os.environ)
        secret = resolve_token(token)
        if secret is None:
            env.pop(TOKEN_ENV, None)
        else:
            env[TOKEN_ENV] = secret
        args = [
            sys.executable, "-m", "storeharness.stores.tcp", "--listen-fd", str(sock.fileno()),
            *_limit_options(lim), "--accelerate", speed,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, pass_fds=[sock.fileno()], env=env)
        sock.close()  # the child holds it now; the port stays bound, so no race

    def __repr__(self) -> str:
        return f"ServerProcess(port={self.port}, pid={self.proc.pid})"

    def stop(self) -> None:
        """Close its stdin (it stops serving), then SIGTERM, then SIGKILL; idempotent."""
        stop_process(self.proc)


def _serve_process(
    sock: socket.socket,
    limits: Limits,
    watch_stdin: bool,
    accelerate: bool | None = None,
    token: str | None = None,
) -> None:
    server = TCPServer(sock, limits, accelerate=accelerate, token=token)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        until: asyncio.Future[None] = loop.create_future()

        def finish() -> None:
            if not until.done():
                until.set_result(None)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, finish)
        if watch_stdin:

            def on_stdin() -> None:
                if not os.read(0, 4096):
                    loop.remove_reader(0)
                    finish()

            loop.add_reader(0, on_stdin)
        await server.serve(until)

    loop = _new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


PROG = "python -m storeharness.stores.tcp"


def main(argv: list[str] | None = None) -> None:
    """The standalone server; a bad option or a port in use ends it with one line (status 2
    or 1), not a traceback."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a TCPStore (torch c10d wire protocol) until interrupted.",
        epilog=f"Set {TOKEN_ENV} to require that token of clients (ours send it; torch's "
        "clients cannot, so they are refused while a token is set).",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, loopback only; 0.0.0.0 or :: for "
        "every interface, as a torch TCPStore master listens)",
    )
    parser.add_argument("--port", type=int, default=29500, help="port to bind (0: any)")
    parser.add_argument("--listen-fd", type=int, help="serve an already bound socket instead")
    defaults = Limits()
    group = parser.add_argument_group("limits (Limits; lower them for untrusted peers)")
    for f in dataclasses.fields(Limits):  # every field, so a new limit cannot be left behind
        default = getattr(defaults, f.name)
        group.add_argument(
            _option(f.name),
            type=type(default),
            default=default,
            metavar=f.metadata["unit"].upper(),
            help=f"{f.metadata['unit']} {f.metadata['help']} (default: %(default)s)",
        )
    parser.add_argument(
        "--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR"
    )
    parser.add_argument(
        "--accelerate",
        choices=["auto", "yes", "no"],
        default="auto",
        help="the C hot path: when built (auto), required (yes), or pure Python (no)",
    )
    args = parser.parse_args(argv)
    accelerate = {"auto": None, "yes": True, "no": False}[args.accelerate]
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    try:
        limits = Limits(**{name: getattr(args, name) for name in _LIMIT_FIELDS})
        token = resolve_token(None)
        if args.listen_fd is not None:
            sock = adopt_listener(args.listen_fd, 0)
        else:
            sock = bind_listener(args.port, host=args.host, hint="--port 0 picks a free one")
    except (StoreError, ValueError, TypeError) as exc:
        raise SystemExit(f"{PROG}: {exc}") from None
    if args.listen_fd is not None:
        _serve_process(sock, limits, True, accelerate, token)
        return
    host, port = sock.getsockname()[:2]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    print(f"serving TCPStore on {where}{' (token required)' if token else ''}", flush=True)
    _serve_process(sock, limits, False, accelerate, token)


if __name__ == "__main__":
    main()
