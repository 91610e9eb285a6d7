"""``python -m storeharness.harness._forkserver_main``: the template that forks TCPStore servers.

``CONTROL_FD`` forks our server (or the fault proxy, ``harness/proxy.py``); ``CONTROL_FD
--torch`` imports torch instead and forks torch's TCPStore master (libuv or legacy), as
``targets/torch.py``'s ``TorchServer`` runs it.  A proxy's request carries a fourth
descriptor, the pipe its replies go to (its stdout); its stdin is its command pipe.

Starting a server as a fresh interpreter costs most of a case's endpoint time (importing
``stores`` and uvloop).  This process imports them once, then waits on a Unix socket for
requests; each request carries a listening socket, the read end of a "watch" pipe and the write
end of a "status" pipe (``SCM_RIGHTS``), and the template forks one server per request:

- the child keeps only those descriptors (the watch pipe becomes its stdin, so it stops serving
  when its owner closes the other end, or dies), and serves a fresh, empty store on the socket,
  exactly as ``python -m storeharness.stores.tcp --listen-fd`` would;
- the template answers with the child's pid and a pidfd for it (so its owner signals that very
  process, never a reused pid), reaps it when it exits and writes its wait status (4 bytes) to
  the status pipe, which it then closes.

Every case still gets its own process, port and state; only the interpreter's start-up is
shared.  The template is single-threaded (forking is safe), and exits when its control socket
closes: its owner is gone (and so is every forked rank of the owner's that inherited it).  Kept
apart from ``targets/forkserver.py`` (the owner's side) because the package imports that
module, and running an already imported module with ``-m`` makes the interpreter warn.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import traceback
from typing import Any

from ..stores.tcp import _standalone
from ..stores.tcp import server as _server
from ..stores.tcp.codec import Limits

#: Bytes of one request's JSON (its settings); descriptors travel beside it.
MAX_REQUEST = 1 << 16
#: The template's own descriptors (its wakeup pipe, its selector): a forked server closes them.
_PRIVATE: list[int] = []


def _child(
    control: socket.socket,
    listen_fd: int,
    watch_fd: int,
    settings: dict[str, object],
    out_fd: int | None = None,
) -> None:
    """In the forked child: become the server (never returns)."""
    code = 0
    try:
        control.close()
        os.dup2(watch_fd, 0)
        os.close(watch_fd)
        if out_fd is not None:
            os.dup2(out_fd, 1)
            os.close(out_fd)
        if settings.get("kind") == "proxy":
            _serve_proxy(listen_fd, str(settings["upstream"]))
        elif settings.get("kind") == "torch":
            _serve_torch(listen_fd, bool(settings.get("use_libuv", True)))
        else:
            limits = Limits(**settings.get("limits", {}))  # type: ignore[arg-type]
            accelerate = settings.get("accelerate")
            sock = _server.adopt_listener(listen_fd, 0)
            _standalone._serve_process(sock, limits, True, accelerate)  # type: ignore[arg-type]
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _serve_torch(listen_fd: int, use_libuv: bool) -> None:
    """torch's TCPStore master on the socket, until stdin (the watch pipe) closes."""
    import datetime
    import importlib

    dist: Any = importlib.import_module("torch.distributed")
    host, port = _address_of(listen_fd)
    # the master's own client connects to the address the socket is bound to (a host's data
    # address when a world spans hosts; loopback otherwise)
    store = dist.TCPStore(
        host if host not in ("0.0.0.0", "") else "127.0.0.1", port, None, True,
        datetime.timedelta(seconds=3600),
        wait_for_workers=False, master_listen_fd=listen_fd, use_libuv=use_libuv,
    )  # fmt: skip
    while os.read(0, 4096):
        pass
    del store


def _serve_proxy(listen_fd: int, upstream: str) -> None:
    """The fault proxy, driven by lines on stdin (its command pipe), answering on stdout."""
    from . import _proxy_main

    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115  (the new fd 0 and 1)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    _proxy_main.main(["--listen-fd", str(listen_fd), "--upstream", upstream])


def _address_of(fd: int) -> tuple[str, int]:
    sock = socket.socket(fileno=fd)
    try:
        host, port = sock.getsockname()[:2]
        return str(host), int(port)
    finally:
        sock.detach()


def _port_of(fd: int) -> int:
    return _address_of(fd)[1]


def _serve_request(control: socket.socket, children: dict[int, int]) -> bool:
    """Fork one server for the request waiting on ``control``; ``False`` when it closed."""
    try:
        data, fds, _, _ = socket.recv_fds(control, MAX_REQUEST, 4)
    except OSError:
        return False
    if not data:
        for fd in fds:
            os.close(fd)
        return False
    if len(fds) not in (3, 4):
        for fd in fds:
            os.close(fd)
        control.sendall(_reply({"error": f"a request carries 3 or 4 descriptors, got {len(fds)}"}))
        return True
    listen_fd, watch_fd, status_fd = fds[:3]
    out_fd = fds[3] if len(fds) == 4 else None
    try:
        settings = json.loads(data)
        if not isinstance(settings, dict):
            raise ValueError(f"the request is {settings!r}, not an object")
    except ValueError as exc:
        for fd in fds:
            os.close(fd)
        control.sendall(_reply({"error": f"a bad request: {exc}"}))
        return True
    pid = os.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in [*children.values(), *_PRIVATE]:  # not this server's: other servers' status
            with contextlib.suppress(OSError):  # pipes, the template's wakeup pipe and selector
                os.close(fd)
        os.close(status_fd)
        _child(control, listen_fd, watch_fd, settings, out_fd)
    os.close(listen_fd)
    os.close(watch_fd)
    if out_fd is not None:
        os.close(out_fd)
    children[pid] = status_fd
    pidfd = os.pidfd_open(pid)
    try:
        socket.send_fds(control, [_reply({"pid": pid})], [pidfd])
    finally:
        os.close(pidfd)
    return True


def _reply(obj: dict[str, object]) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack("!I", len(body)) + body


def _reap(children: dict[int, int]) -> None:
    """Collect every exited child and tell its owner how it ended (its status pipe)."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = children.pop(pid, None)
        if fd is not None:
            with contextlib.suppress(OSError):  # its owner stopped listening
                os.write(fd, struct.pack("!i", status))
            os.close(fd)


def main(argv: list[str] | None = None) -> None:
    """Serve fork requests on the control socket (fd ``argv[0]``) until it closes."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2) or not args[0].isdigit() or args[1:] not in ([], ["--torch"]):
        raise SystemExit(
            "usage: python -m storeharness.harness._forkserver_main CONTROL_FD [--torch]"
        )
    if args[1:] == ["--torch"]:
        import torch.distributed  # noqa: F401  (imported once here, not in every child)
    else:
        _server._new_loop().close()  # import uvloop (when installed) now, not in every child
    control = socket.socket(fileno=int(args[0]))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # the wakeup fd does the work
    children: dict[int, int] = {}
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, "control")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    _PRIVATE.extend([wake_r, wake_w, selector.fileno()])
    control.sendall(_reply({"ready": os.getpid()}))
    running = True
    while running:
        for key, _ in selector.select():
            if key.data == "wake":
                os.read(wake_r, 4096)
                _reap(children)
            elif not _serve_request(control, children):
                running = False
        _reap(children)
    # The owner is gone: its servers see their watch pipes close and stop on their own.
    for fd in children.values():
        with contextlib.suppress(OSError):
            os.close(fd)


if __name__ == "__main__":
    main()
