"""A warm process per workspace: `ratchet warm` starts one Python process that has imported what a
cycle imports (torch, MLflow, DVC, matplotlib: about 5 s on a 2-core CPU, half of a cycle's cost
beyond training and evaluation), and `ratchet retrain` in that workspace forks from it instead of
importing them again.

The command a user types stays the process they wait on: it connects to the warm process's socket,
`.ratchet/warm.sock`, and hands over its arguments, working directory, environment and its stdin,
stdout and stderr themselves (file descriptors over the socket), so the forked child prints where
the command would have, and answers with its exit status. Ctrl-C and SIGTERM to the command reach
the child. Anything that does not fit is run in the command's own process as before: no warm
process, one that stopped, or one started by other code (another ratchet source, interpreter or
sys.path: the child would not be the program asked for), which is said in one line, and any
command run with RATCHET_WARM=off.

The warm process imports and nothing else: no thread of its own, no CUDA, no database connection,
so what a child inherits is what an import leaves. It stops after `idle` seconds without a command
(children it forked go on), on `ratchet warm --stop`, or on SIGTERM; it removes its socket.
Environment variables a library reads while it is imported (OMP_NUM_THREADS, for torch) are the
warm process's; every other is the command's.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ratchet import state
from ratchet.errors import RatchetError

SOCKET = "warm.sock"  # in .ratchet/
LOG = "warm.log"  # in .ratchet/: what the warm process says, and each command it forked
COMMANDS = frozenset({"retrain"})  # the commands a warm process runs: those that import the stack
OFF = "RATCHET_WARM"  # set to "off": commands run in their own process, warm process or not
IDLE_SECONDS = 1800  # stop after this long without a command
READY_SECONDS = 120  # how long `ratchet warm` waits for the imports (a loaded 2-core machine)


@dataclass(frozen=True)
class Identity:
    """What makes a process the program a command asked for: the interpreter, where imports come
    from (sys.path but its first entry, the started script's own directory), and ratchet's own
    source (any edit changes it)."""

    executable: str
    path: tuple[str, ...]
    source: str

    @staticmethod
    def here() -> Identity:
        from ratchet.stages.inputs import code_version

        return Identity(os.path.realpath(sys.executable), tuple(sys.path[1:]), code_version().source)

    def to_json(self) -> dict[str, object]:
        return {"executable": self.executable, "path": list(self.path), "source": self.source}

    @staticmethod
    def from_json(raw: object) -> Identity:
        if not isinstance(raw, dict) or not isinstance(raw.get("path"), list):
            raise ValueError(f"not an identity: {raw!r}")
        return Identity(str(raw["executable"]), tuple(str(p) for p in raw["path"]), str(raw["source"]))


@dataclass(frozen=True)
class Request:
    """A command handed over: what it was called with, where, with what environment, by whom."""

    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str]
    identity: Identity

    def to_json(self) -> dict[str, object]:
        return {
            "argv": list(self.argv),
            "cwd": self.cwd,
            "env": self.env,
            "identity": self.identity.to_json(),
        }

    @staticmethod
    def from_json(raw: dict[str, object]) -> Request:
        argv, env = raw.get("argv"), raw.get("env")
        if not isinstance(argv, list) or not isinstance(env, dict):
            raise ValueError("not a request")
        return Request(
            tuple(str(a) for a in argv),
            str(raw["cwd"]),
            {str(k): str(v) for k, v in env.items()},
            Identity.from_json(raw.get("identity")),
        )


def preload() -> None:
    """What a cycle imports, imported once (the modules, not their work)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import torch._dynamo  # noqa: F401 - the optimizer's first step imports it

    from ratchet import registry
    from ratchet.data import versioning

    for module in ("cycle", "plots", "stages.evaluate", "stages.prepare", "stages.train"):
        importlib.import_module(f"ratchet.{module}")
    registry.preload()
    versioning.preload()


def _socket_path(root: Path) -> Path:
    return root / state.STATE_DIR / SOCKET


@contextlib.contextmanager
def _in_directory(path: Path) -> Iterator[None]:
    # a unix socket's address is at most ~100 bytes: bind and connect by a name relative to
    # .ratchet/, so that a workspace at any depth has one
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _connect(root: Path) -> socket.socket | None:
    path = _socket_path(root)
    if not path.exists():
        return None
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _in_directory(path.parent):
            client.connect(SOCKET)
    except OSError:  # a socket file left by a process that is gone
        client.close()
        return None
    return client


def _hand_over(conn: socket.socket, fds: list[int]) -> None:
    """A request's first byte, carrying `fds` (the command's streams) as ancillary data; the
    request itself follows as a line of any length."""
    socket.send_fds(conn, [b"!"], fds)


def _send(conn: socket.socket, message: dict[str, object]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _lines(conn: socket.socket) -> Iterator[dict[str, object]]:
    buffer = b""
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)


# ---- the command's side ------------------------------------------------------------------------


def forward(root: Path, argv: Sequence[str]) -> int | None:
    """Run `ratchet ARGV`, a command on the workspace at `root`, in the workspace's warm process
    if it has one that fits; its exit status, or None where this process should run it itself."""
    if not argv or argv[0] not in COMMANDS or os.environ.get(OFF) == "off":
        return None
    try:
        streams = [sys.stdin.fileno(), sys.stdout.fileno(), sys.stderr.fileno()]
    except (AttributeError, ValueError, OSError):  # a stream closed or replaced: nothing to hand over
        return None
    conn = _connect(root)
    if conn is None:
        return None
    with conn:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        _hand_over(conn, streams)
        _send(conn, Request(tuple(argv), os.getcwd(), dict(os.environ), Identity.here()).to_json())
        replies = _lines(conn)
        first = next(replies, None)
        if first is None or "refused" in first:
            why = first["refused"] if first else "it closed the connection"
            print(f"ratchet: the warm process was not used ({why}): running here", file=sys.stderr)
            return None
        child = int(str(first["pid"]))
        saved = {sig: signal.signal(sig, lambda sig, _frame: _pass_on(child, sig)) for sig in PASSED_ON}
        try:
            for reply in replies:
                if "exit" in reply:
                    return int(str(reply["exit"]))
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
    print(
        f"ratchet: error: process {child}, forked for this command, ended without an exit status",
        file=sys.stderr,
    )
    return 1


PASSED_ON = (signal.SIGINT, signal.SIGTERM)  # what the command hands on to its forked child


def _pass_on(child: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, sig)


# ---- the warm process --------------------------------------------------------------------------


def start(root: Path, idle: float = IDLE_SECONDS) -> int:
    """Start the workspace's warm process in the background and wait until it takes commands;
    its pid. One that is already running is kept."""
    running = status(root)
    if running is not None:
        return running
    log = state.directory(root) / LOG
    with log.open("a", encoding="utf-8") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ratchet.cli", "warm", "--serve", "--idle", str(idle), "-w", str(root)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the terminal's process group: Ctrl-C there is not for it
        )
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        pid = status(root)  # this one's, or one started at the same time (this one then exits)
        if pid is not None:
            return pid
        if process.poll() is not None:
            raise RatchetError(
                f"the warm process exited ({process.returncode}) before it was ready: see {log}"
            )
        time.sleep(0.1)
    process.kill()
    raise RatchetError(f"the warm process was not ready after {READY_SECONDS} s: see {log}")


def status(root: Path) -> int | None:
    """The pid of the workspace's warm process, or None without one."""
    conn = _connect(root)
    if conn is None:
        return None
    with conn:
        _hand_over(conn, [])
        _send(conn, {"status": True})
        reply = next(_lines(conn), None)
    return int(str(reply["pid"])) if reply else None


def stop(root: Path) -> int | None:
    """Stop the workspace's warm process; its pid, or None when there was none."""
    pid = status(root)
    if pid is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _socket_path(root).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


Command = Callable[[Sequence[str]], int]  # `ratchet ARGV` to its exit status, wound up (cli.finished)


def serve(root: Path, idle: float, command: Command) -> int:
    """The warm process itself (`ratchet warm --serve`): import, then fork a child per command
    until `idle` seconds pass without one, or SIGTERM; each child runs `command`."""
    started = time.perf_counter()
    me = Identity.here()  # before the imports, which may add to sys.path: as a command sees it
    preload()
    path = _socket_path(root)
    if status(root) is not None:
        raise RatchetError(f"{root} has a warm process already")
    path.unlink(missing_ok=True)  # left by a warm process that is gone
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with _in_directory(path.parent):
        listener.bind(SOCKET)
    inode = path.stat().st_ino
    listener.listen(16)
    listener.settimeout(idle)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped as they exit
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(0))
    print(f"{_now()} warm process {os.getpid()} ready in {time.perf_counter() - started:.1f}s", flush=True)
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                print(f"{_now()} idle for {idle:.0f}s: stopping", flush=True)
                return 0
            with conn:
                _answer(conn, listener, me, command)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == inode:  # ours, not a successor's
                path.unlink()


def _answer(conn: socket.socket, listener: socket.socket, me: Identity, command: Command) -> None:
    conn.settimeout(10)  # a command hands its request over at once; a stuck one must not hold us
    fds: list[int] = []
    try:
        _, fds, _, _ = socket.recv_fds(conn, 1, 3)
        raw = next(_lines(conn), None)
        if raw is None or "status" in raw:
            _send(conn, {"pid": os.getpid()})
            return
        request = Request.from_json(raw)
        if request.identity != me or len(fds) != 3:
            why = "another ratchet source" if request.identity.source != me.source else "another Python"
            _send(conn, {"refused": f"it runs {why}; restart it: `ratchet warm --stop`, then `ratchet warm`"})
            return
        print(f"{_now()} forked for: ratchet {' '.join(request.argv)}", flush=True)
        if os.fork() == 0:
            listener.close()
            _child(conn, fds, request, command)
    except (OSError, ValueError, KeyError) as exc:  # a caller gone, or not a ratchet command: next
        print(f"{_now()} a request failed: {type(exc).__name__}: {exc}", flush=True)
    finally:
        for fd in fds:
            os.close(fd)


def _child(conn: socket.socket, fds: list[int], request: Request, command: Command) -> NoReturn:
    """The command, in a fresh fork: the command's streams, directory, environment and signals."""
    code = 1
    try:
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request.cwd)
        os.environ.clear()
        os.environ.update(request.env)
        sys.argv = ["ratchet", *request.argv]
        if isinstance(sys.stdout, io.TextIOWrapper):  # as the command's own: line by line to a terminal
            sys.stdout.reconfigure(line_buffering=os.isatty(1))
        atexit._clear()  # handlers the imports registered are the warm process's, not this command's
        conn.settimeout(None)
        _send(conn, {"pid": os.getpid()})
        code = command(request.argv)
    finally:
        with contextlib.suppress(OSError):
            _send(conn, {"exit": code})
        os._exit(code)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
