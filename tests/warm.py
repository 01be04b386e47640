"""A warm interpreter for the suite's script runs: torch, Lightning and Hydra imported once, each run a fork.

Every `python train.py ...` a test starts spends most of its seconds importing torch and Lightning (~2.5 s on a
quiet day, ~6 s on a slow one), and the suite starts dozens. Here one server process imports them and waits on a
Unix socket; `python -S tests/warm.py train.py ARGS` (the client: stdlib only, a few ms) hands it its argv, cwd,
environment and its stdin/stdout/stderr, and the server forks a runner that runs the script as `__main__` with
those. The runner is a process of its own: it exits with the script's code, and the client exits with the same
code (or the same signal), forwards SIGINT/SIGTERM to it, and a runner whose client is gone (a test's timeout) is
killed. What the script sees differs from a cold start only in what was imported before it ran.

Only `python <file>.py ...` and `python -m nanovlm.<module> ...` go warm; anything else the client runs with the
real interpreter (`-c`, `-X`, the tests that check what a script imports). NANOVLM_WARM unset: every run is cold.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys

SOCKET_ENV = "NANOVLM_WARM"
HEADER = struct.Struct("!I")  # the request's length, sent with the three file descriptors


def warm_target(args: list[str]) -> tuple[str, str] | None:
    """("path", script) or ("module", name) for the argument lists that run warm, else None."""
    if args and args[0].endswith(".py") and not args[0].startswith("-"):
        return "path", args[0]
    if len(args) >= 2 and args[0] == "-m" and args[1].split(".")[0] == "nanovlm":
        return "module", args[1]
    return None


# --- client -----------------------------------------------------------------------------------------------------


def _receive_line(conn: socket.socket, buffer: bytearray) -> str | None:
    while b"\n" not in buffer:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


def client(args: list[str]) -> None:
    """Run `python ARGS` through the server, or exec the real interpreter when it cannot go warm."""
    path = os.environ.get(SOCKET_ENV)
    conn = None
    if path and warm_target(args):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(path)
        except OSError:
            conn = None
    if conn is None:
        os.execv(sys.executable, [sys.executable, *args])
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    request = json.dumps({"args": args, "cwd": os.getcwd(), "env": dict(os.environ), "cores": cores}).encode()
    socket.send_fds(conn, [HEADER.pack(len(request))], [0, 1, 2])
    conn.sendall(request)
    buffer = bytearray()
    pid = int((_receive_line(conn, buffer) or "pid 0").split()[1])
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda s, _frame: pid and os.kill(pid, s))
    line = _receive_line(conn, buffer)
    if line is None:
        sys.stderr.write("tests/warm.py: the warm server closed the connection before the script ended\n")
        sys.exit(1)
    code = int(line.split()[1])
    if code < 0:  # the runner died of a signal: so does the client, as a cold process would
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


# --- server -----------------------------------------------------------------------------------------------------


def _receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _flags, _addr = socket.recv_fds(conn, HEADER.size, 3)
    (length,) = HEADER.unpack(header)
    data = bytearray()
    while len(data) < length:
        chunk = conn.recv(length - len(data))
        if not chunk:
            raise ConnectionError("client left mid-request")
        data += chunk
    return json.loads(data), fds


def _become_the_script(request: dict, fds: list[int]) -> None:
    """In the runner: take the client's stdio, cwd, CPU affinity, environment and argv, then run the script as
    __main__."""
    import io
    import random
    import runpy

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    if request.get("cores") and hasattr(os, "sched_setaffinity"):  # the cores a subprocess of the client would get
        os.sched_setaffinity(0, request["cores"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # New stream objects on the client's descriptors, buffered as a fresh interpreter's would be.
    sys.stdin = sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115
    if os.environ.get("PYTHONUNBUFFERED"):
        sys.stdout = io.TextIOWrapper(open(1, "wb", buffering=0, closefd=False), write_through=True)  # noqa: SIM115
    else:
        sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, closefd=False)  # noqa: SIM115
    sys.__stdout__ = sys.stdout
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
    random.seed()  # a fresh interpreter's seeds, not the server's state shared by every fork
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    kind, target = warm_target(request["args"])  # type: ignore[misc]
    if kind == "path":
        sys.argv = request["args"]
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        runpy.run_path(os.path.abspath(target), run_name="__main__")  # __main__.__file__ absolute, as since 3.9
    else:
        sys.argv = [target, *request["args"][2:]]
        sys.path[0] = request["cwd"]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    raise SystemExit(0)  # through the server's frames to the interpreter's own exit: atexit, threads, flushes


def _handle(conn: socket.socket) -> None:
    """In the handler (a fork per connection): fork the runner, tell the client its pid, then its exit code."""
    import select

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    request, fds = _receive_request(conn)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _become_the_script(request, fds)
    for fd in fds:
        os.close(fd)
    conn.sendall(f"pid {pid}\n".encode())
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        ready, _, _ = select.select([pidfd, conn], [], [])
        if pidfd not in ready:  # the client is gone (killed on a timeout): so goes the script
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(OSError):  # a client already gone
        conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())


def serve(path: str) -> None:
    """Import what the scripts import, then fork a handler for each connection until stdin closes."""
    import gc
    import select

    import hydra  # noqa: F401
    import lightning  # noqa: F401
    import torch  # noqa: F401

    import nanovlm.evaluate.checkpoint
    import nanovlm.run.training  # noqa: F401

    gc.freeze()  # as train.py does after these imports: the forks' garbage collections skip them
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:  # until the suite closes our stdin (also when pytest dies without its atexit)
        readable, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            return
        if listener not in readable:
            continue
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            _handle(conn)  # a runner leaves it through SystemExit (or the script's own exception)
            os._exit(0)
        conn.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    else:
        client(sys.argv[1:])
