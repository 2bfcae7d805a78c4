"""Several daphne processes on one listening socket (OCR_WEB_PROCESSES; scripts/run.sh).

One daphne process runs Python on one core at a time: with 4 clients GETting a task it was
saturated at about 140 requests/s. This launcher binds HOST:PORT once and starts N daphne
processes that all accept on that socket, handed over as systemd hands over sockets (file
descriptor 3, LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID; daphne's `-e systemd:...` endpoint: the `fd:` endpoint of
daphne's `--fd` is not in this Twisted), so the kernel spreads connections over them. WebSocket
and SSE streams work on any of them (events travel through Redis).

SIGTERM, SIGINT or SIGHUP stops every daphne (SIGKILL after 8 s); each daphne also gets SIGTERM
if this launcher dies (PR_SET_PDEATHSIG), so that nothing outlives it.

Usage: web.py HOST PORT PROCESSES [daphne options...]
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time

logger = logging.getLogger("ocrsite.web")
PR_SET_PDEATHSIG = 1


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


LISTEN_FD = 3  # SD_LISTEN_FDS_START


def as_listen_fd(sock: socket.socket) -> None:
    """Put the listening socket on file descriptor 3, where the children look for it."""
    if sock.fileno() == LISTEN_FD:
        sock.set_inheritable(True)
    else:
        try:
            os.fstat(LISTEN_FD)
        except OSError:
            pass
        else:
            raise SystemExit(f"file descriptor {LISTEN_FD} is in use: cannot hand the socket over")
        os.dup2(sock.fileno(), LISTEN_FD, inheritable=True)


def in_child() -> None:
    """Runs in each daphne between fork and exec: the socket is ours; die with the launcher."""
    os.putenv("LISTEN_PID", str(os.getpid()))
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    host, port, count, *options = sys.argv[1:]
    sock = listen(host, int(port))
    as_listen_fd(sock)
    domain = "INET6" if sock.family == socket.AF_INET6 else "INET"
    os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="http")  # Twisted wants the names too
    daphne = os.path.join(os.path.dirname(sys.executable), "daphne")
    command = [daphne, "-e", f"systemd:domain={domain}:index=0", *options, "ocrsite.asgi:application"]
    children = [
        subprocess.Popen(command, pass_fds=[LISTEN_FD], preexec_fn=in_child)  # noqa: PLW1509
        for _ in range(max(1, int(count)))
    ]
    if sock.fileno() != LISTEN_FD:
        os.close(LISTEN_FD)
    sock.close()  # the children hold it
    logger.info("%d daphne processes on %s:%s (pids %s)", len(children), host, port, [c.pid for c in children])

    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 8
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
