"""The node's local control socket, its client, and the status snapshot file.

Server (:func:`serve_control`): an AF_UNIX stream socket, mode 0600, built from
``trio.socket`` and ``trio.SocketListener`` (trio has no high-level Unix
listener). It lives at ``DATA_DIR/control.sock`` when that path fits AF_UNIX's
108-byte ``sun_path``; otherwise in a short per-user runtime directory
(``$XDG_RUNTIME_DIR/p2pupdate/`` or ``/tmp/p2pupdate-<uid>/``, mode 0700, which
must be ours) under a name hashed from the data dir. Either way the chosen
path is written to ``DATA_DIR/control.path``, which is what clients read. It
is never an abstract socket (those ignore file modes and are per network
namespace). A stale socket file left by a dead node is removed on start; a
live one means another node runs on this data dir, which is a UsageError.

Protocol: the client sends one JSON object on one line, ``{"op": "...", ...}``;
the server answers one JSON object on one line, ``{"ok": bool, "error"?: str,
...}``. A connection may carry several requests in turn. Requests are capped
at :data:`MAX_REQUEST` bytes; a line that is not a JSON object with a string
``op`` gets an error answer, never a crash. Every connection runs in its own
task with a read timeout, so one silent client cannot block the others. The
handler (the node's) gets the request dict and returns the answer dict; a
``UsageError`` it raises becomes ``{"ok": false, "usage": true, "error": ...}``,
any other failure ``{"ok": false, "error": ...}``.

Status snapshot: :func:`write_status_snapshot` / :func:`read_status_snapshot`
keep ``DATA_DIR/status.json`` (atomically replaced), written by the node now
and then so ``p2pupdate status`` can show the last known state of a node that
is not running.

This module knows nothing about what the ops mean; the node's handler does.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.errors import P2PUpdateError, StateFileError, UsageError
from p2pupdate.shell.fsutil import atomic_write_bytes, read_bytes_limited, read_json_file

__all__ = [
    "CONTROL_PATH_FILE",
    "CONTROL_SOCKET_NAME",
    "MAX_REQUEST",
    "MAX_RESPONSE",
    "STATUS_FILE",
    "ControlError",
    "ControlHandler",
    "NodeNotRunning",
    "choose_socket_path",
    "control_request",
    "control_request_sync",
    "find_socket_path",
    "read_status_snapshot",
    "serve_control",
    "write_status_snapshot",
]

CONTROL_SOCKET_NAME = "control.sock"
CONTROL_PATH_FILE = "control.path"
STATUS_FILE = "status.json"
# Request and answer sizes, and concurrent clients: Limits (config.py) says why.
MAX_REQUEST = DEFAULT_LIMITS.max_control_request
MAX_RESPONSE = DEFAULT_LIMITS.max_control_response
# A status snapshot file is a status answer plus a timestamp.
MAX_STATUS_FILE = MAX_RESPONSE
# sun_path is 108 bytes on Linux, including the terminating NUL we leave room for.
_SUN_PATH_MAX = 107
_MAX_CLIENTS = DEFAULT_LIMITS.max_control_clients
# A client that sends nothing for this long is disconnected.
DEFAULT_READ_TIMEOUT = 10.0
# Answers are small; a client that does not read one for this long is dropped.
_WRITE_TIMEOUT = 10.0

ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

_log = logging.getLogger("p2pupdate.control")


class NodeNotRunning(P2PUpdateError):
    """No node answers on the control socket of this data dir."""


class ControlError(P2PUpdateError):
    """The node answered the control request with something unreadable."""


# ---------------------------------------------------------------- socket path


def _fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= _SUN_PATH_MAX


def _runtime_dir() -> Path:
    """A short per-user directory only we can enter, created if missing."""
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    candidates = []
    if xdg and Path(xdg).is_absolute() and Path(xdg).is_dir():
        candidates.append(Path(xdg) / "p2pupdate")
    candidates.append(Path("/tmp") / f"p2pupdate-{os.getuid()}")
    for base in candidates:
        # The socket name is 16 hex digits + ".sock"; the bind temp name is shorter.
        if _fits(base / ("x" * 16 + ".sock")):
            _make_private_dir(base)
            return base
    raise UsageError("no runtime directory short enough for the control socket")


def _make_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UsageError(f"cannot create runtime directory {path}: {exc.strerror}") from None
    st = path.lstat()
    # In a shared /tmp someone else could have made it first: refuse anything not ours.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UsageError(
            f"runtime directory {path} is not a private directory of this user "
            "(expected mode 0700, owned by us, not a symlink)"
        )


def choose_socket_path(data_dir: Path) -> Path:
    """Where a node on ``data_dir`` puts its control socket (see module doc)."""
    data_dir = data_dir.absolute()
    local = data_dir / CONTROL_SOCKET_NAME
    if _fits(local):
        return local
    return _runtime_dir() / f"{_dir_hash(data_dir)}.sock"


def _dir_hash(data_dir: Path) -> str:
    return hashlib.sha256(os.fsencode(data_dir.absolute())).hexdigest()[:16]


def find_socket_path(data_dir: Path) -> Path:
    """The socket path a running node recorded, or the default in the data dir."""
    record = data_dir / CONTROL_PATH_FILE
    try:
        text = read_bytes_limited(record, 4096).decode("utf-8", "surrogateescape").strip()
    except FileNotFoundError:
        return data_dir.absolute() / CONTROL_SOCKET_NAME
    except (OSError, ValueError) as exc:
        raise NodeNotRunning(f"cannot read {record}: {exc}") from None
    if not text:
        return data_dir.absolute() / CONTROL_SOCKET_NAME
    return Path(text)


# ---------------------------------------------------------------- server


def _is_live_socket(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        # A Unix connect completes or fails at once; the timeout only guards a full backlog.
        sock.settimeout(1.0)
        try:
            sock.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except TimeoutError:
            return True
    return True


def _prepare_path(path: Path, data_dir: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"control socket path {path} exists and is not a socket; remove it")
    if _is_live_socket(path):
        raise UsageError(f"another node is already running with data dir {data_dir}")
    _log.info("removing stale control socket %s", path)
    path.unlink(missing_ok=True)


def _bind_private(path: Path) -> socket.socket:
    """Bind a listening socket at ``path`` with mode 0600 from the first moment.

    bind() creates the file with the process umask, and changing the umask is
    process-wide; so bind under a random temporary name, chmod, then rename it
    into place (a Unix socket is reached through its inode, renames keep it).
    """
    tmp = path.with_name(f".{secrets.token_hex(4)}.s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(os.fspath(tmp))
        try:
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


def _open_socket(data_dir: Path, socket_path: Path | None) -> tuple[Path, Path, socket.socket, int]:
    data_dir = data_dir.absolute()
    path = socket_path.absolute() if socket_path is not None else choose_socket_path(data_dir)
    if not _fits(path):
        raise UsageError(f"control_socket {path}: longer than AF_UNIX allows (107 bytes)")
    if not path.parent.is_dir():
        raise UsageError(f"control_socket {path}: directory {path.parent} does not exist")
    _prepare_path(path, data_dir)
    try:
        raw = _bind_private(path)
    except OSError as exc:
        if socket_path is not None or path.parent != data_dir:
            raise UsageError(f"cannot create control socket {path}: {exc.strerror}") from None
        # Some file systems (network, FUSE, shared folders) refuse sockets: use the runtime dir.
        _log.warning("cannot create %s (%s); using the runtime directory", path, exc.strerror)
        return _open_socket(data_dir, _runtime_dir() / f"{_dir_hash(data_dir)}.sock")
    return data_dir, path, raw, path.stat().st_ino


async def serve_control(
    data_dir: Path,
    handler: ControlHandler,
    *,
    socket_path: Path | None = None,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control socket of ``data_dir`` until cancelled.

    ``socket_path`` overrides the chosen location (the ``control_socket``
    setting). ``task_status.started`` gets the socket path once it listens.
    On exit the socket file and ``control.path`` are removed if still ours.
    """
    data_dir, path, raw, inode = _open_socket(data_dir, socket_path)
    record = data_dir / CONTROL_PATH_FILE
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
    try:
        atomic_write_bytes(record, os.fsencode(path) + b"\n")
        _log.info("control socket listening at %s", path)
        limiter = trio.CapacityLimiter(_MAX_CLIENTS)
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                        _log.warning("control socket accept failed (%s); retrying", exc)
                        await trio.sleep(0.1)
                        continue
                    raise
                nursery.start_soon(_serve_client, stream, handler, limiter, read_timeout)
    finally:
        # No await here: a checkpoint in a cancelled scope would skip the cleanup.
        listener.socket.close()
        _cleanup(path, inode, record)


def _cleanup(path: Path, inode: int, record: Path) -> None:
    # Only remove what is still ours: a newer node may have taken the path over.
    try:
        if path.lstat().st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass
    try:
        if record.read_bytes().strip() == os.fsencode(path):
            record.unlink()
    except FileNotFoundError:
        pass


async def _serve_client(
    stream: trio.SocketStream,
    handler: ControlHandler,
    limiter: trio.CapacityLimiter,
    read_timeout: float,
) -> None:
    async with stream:
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await _send(stream, {"ok": False, "error": "node busy: too many control clients"})
            return
        try:
            reader = _LineReader(stream, MAX_REQUEST)
            while True:
                with trio.move_on_after(read_timeout) as scope:
                    line = await reader.readline()
                if scope.cancelled_caught:
                    return
                if line is None:
                    return
                if isinstance(line, _TooLong):
                    await _send(
                        stream, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}
                    )
                    return
                if not await _send(stream, await _answer(line, handler)):
                    return
        except trio.BrokenResourceError:
            return
        finally:
            limiter.release()


async def _send(stream: trio.SocketStream, answer: dict[str, Any]) -> bool:
    data = json.dumps(answer, separators=(",", ":")).encode() + b"\n"
    with trio.move_on_after(_WRITE_TIMEOUT):
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True
    return False


async def _answer(line: bytes, handler: ControlHandler) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return {"ok": False, "error": "request is not valid JSON"}
    if not isinstance(request, dict):
        return {"ok": False, "error": "request must be a JSON object"}
    op = request.get("op")
    if not isinstance(op, str) or not op:
        return {"ok": False, "error": 'request has no "op" string'}
    try:
        answer: object = await handler(request)
    except UsageError as exc:
        return {"ok": False, "usage": True, "error": str(exc)}
    except P2PUpdateError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:
        # A bug in one op must not take the control socket (or the node) down.
        _log.exception("control op %r failed", op)
        return {"ok": False, "error": f"internal error in {op!r}: {exc!r}"}
    if not isinstance(answer, dict):
        _log.error("control op %r returned %r, not a dict", op, type(answer))
        return {"ok": False, "error": f"internal error in {op!r}: bad answer"}
    reply: dict[str, Any] = {"ok": True, **answer}
    try:
        json.dumps(reply)
    except (TypeError, ValueError) as exc:
        _log.error("control op %r returned an answer JSON cannot encode: %s", op, exc)
        return {"ok": False, "error": f"internal error in {op!r}: bad answer"}
    return reply


class _TooLong:
    pass


class _LineReader:
    """Newline-delimited reads with a hard cap on a line's length."""

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._buf = bytearray()

    async def readline(self) -> bytes | _TooLong | None:
        """The next line without its newline; None at EOF; _TooLong past the cap."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                if nl > self._limit:
                    return _TooLong()
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > self._limit:
                return _TooLong()
            data = await self._stream.receive_some(65536)
            if not data:
                # EOF: a last line without newline still counts (e.g. `printf ... | nc -U`).
                if self._buf.strip():
                    line = bytes(self._buf)
                    self._buf.clear()
                    return line
                return None
            self._buf += data


# ---------------------------------------------------------------- client


async def control_request(data_dir: Path, request: dict[str, Any]) -> dict[str, Any]:
    """Send one request to the node on ``data_dir`` and return its answer.

    Raises NodeNotRunning when no node listens there, ControlError when the
    answer is unreadable. Callers bound the wait with ``trio.fail_after``.
    """
    path = find_socket_path(data_dir)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.connect(os.fspath(path))
    except OSError as exc:
        sock.close()
        if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)) or exc.errno in (
            errno.ENOENT,
            errno.ECONNREFUSED,
            errno.ENOTDIR,
        ):
            raise NodeNotRunning(
                f"no node is running with data dir {data_dir} (nothing listens on {path})"
            ) from None
        raise NodeNotRunning(f"cannot reach the node's control socket {path}: {exc}") from None
    async with trio.SocketStream(sock) as stream:
        try:
            await stream.send_all(json.dumps(request).encode() + b"\n")
            line = await _LineReader(stream, MAX_RESPONSE).readline()
        except trio.BrokenResourceError as exc:
            raise ControlError(f"the node closed the control connection: {exc}") from None
    if line is None:
        raise ControlError("the node closed the control connection without answering")
    if isinstance(line, _TooLong):
        raise ControlError(f"the node's answer is longer than {MAX_RESPONSE} bytes")
    try:
        answer = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise ControlError("the node's answer is not valid JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise ControlError('the node\'s answer is not a JSON object with "ok"')
    return answer


def control_request_sync(
    data_dir: Path, request: dict[str, Any], timeout: float = 300.0
) -> dict[str, Any]:
    """:func:`control_request` for synchronous callers, giving up after ``timeout`` s."""

    async def run() -> dict[str, Any]:
        try:
            with trio.fail_after(timeout):
                return await control_request(data_dir, request)
        except trio.TooSlowError:
            raise ControlError(f"the node did not answer within {timeout:g} s") from None

    return trio.run(run)


# ---------------------------------------------------------------- status snapshot


def write_status_snapshot(data_dir: Path, status: dict[str, Any]) -> None:
    """Atomically replace ``DATA_DIR/status.json`` with ``status`` plus ``written_at``.

    Blocking (it fsyncs): from async code call it via ``trio.to_thread.run_sync``.
    """
    record = dict(status)
    record["written_at"] = time.time()
    data = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    atomic_write_bytes(data_dir / STATUS_FILE, data + b"\n")


def read_status_snapshot(data_dir: Path) -> dict[str, Any] | None:
    """The last snapshot the node wrote, None if there is none; StateFileError if corrupt."""
    path = data_dir / STATUS_FILE
    status = read_json_file(path, MAX_STATUS_FILE)
    if status is None:
        return None
    if not isinstance(status, dict):
        raise StateFileError(f"{path} does not hold a JSON object")
    return status
