"""Write a file so that it is either the old file or the whole new one, never a torn one.

The data goes to a temporary file beside the target, is flushed to disk, and is renamed over
the target. The new file gets the old file's mode (a new file: the umask's). SIGTERM or SIGHUP
during the write removes the temporary before the process dies of the signal, and each write
removes temporaries of ours that a killed process left in that folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import stat
import tempfile
import threading
import time

_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"
_OURS = re.compile(r"\.gpunn-([A-Za-z0-9_]+)-(\d+)-.*\.partial\Z")
_LEGACY = re.compile(r"\.tmp-[A-Za-z0-9_]{8}\.partial\Z")  # what gpunn 0.1 named its temporaries
_STALE_SECONDS = {"other host": 24 * 3600, "legacy": 3600}
_FATAL_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class _Terminated(BaseException):
    """A fatal signal arrived while a temporary file existed."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _umask() -> int:
    try:
        with open("/proc/self/status") as status:  # Linux: read without changing it
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def _is_stale(name: str, directory: str) -> bool:
    ours, legacy = _OURS.match(name), _LEGACY.match(name)
    if not ours and not legacy:
        return False
    try:
        age = time.time() - os.stat(os.path.join(directory, name)).st_mtime
    except OSError:
        return False
    if legacy:
        return age > _STALE_SECONDS["legacy"]
    host, pid = ours.group(1), int(ours.group(2))
    if host != _HOST:  # another machine on a shared folder: only its age tells
        return age > _STALE_SECONDS["other host"]
    return pid != os.getpid() and not _alive(pid)


def remove_stale_temporaries(directory: str) -> list[str]:
    """Remove temporaries of ours whose writer is gone; return their names."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if _is_stale(name, directory):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed


@contextlib.contextmanager
def _fatal_signals_unwind():
    """Turn SIGTERM/SIGHUP into an exception (so cleanup runs), then die of the signal as the
    default handler would. Only in the main thread and where no handler was installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _FATAL_SIGNALS}
    ours = [signum for signum, handler in previous.items() if handler == signal.SIG_DFL]

    def unwind(signum, frame):
        raise _Terminated(signum)

    for signum in ours:
        signal.signal(signum, unwind)
    try:
        yield
    except _Terminated as terminated:
        for signum in ours:
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), terminated.signum)
        raise
    finally:
        for signum in ours:
            signal.signal(signum, previous[signum])


def _path_error(error: OSError, path: str) -> OSError:
    """The same kind of OSError, naming the user's path instead of our temporary's. An OSError
    raised without an errno (by a writer, a file system layer) keeps its own words."""
    if error.errno is None or error.strerror is None:
        return type(error)(f"cannot write {path}: {error or type(error).__name__}")
    return type(error)(error.errno, f"cannot write {path}: {error.strerror}")


def user_path(path, owner: str = "save") -> str:
    """``path`` (a str, bytes or os.PathLike) as a str; TypeError naming what it got otherwise."""
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"{owner}: path must be a str, bytes or os.PathLike file name, got "
                        f"{type(path).__name__} {str(path)[:50]!r}") from None


def atomic_write(path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    OSErrors name ``path`` (never the temporary): FileNotFoundError when its folder does not
    exist, IsADirectoryError when ``path`` is a folder, PermissionError, and so on.
    """
    path = user_path(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, f"cannot write {path}: it is a folder; give a file name")
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"cannot write {path}: the folder {directory} does not exist")
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    remove_stale_temporaries(directory)
    with _fatal_signals_unwind():
        try:
            handle, temporary = tempfile.mkstemp(prefix=f".gpunn-{_HOST}-{os.getpid()}-", suffix=".partial",
                                                 dir=directory)
        except OSError as error:
            raise _path_error(error, path) from None
        try:
            with os.fdopen(handle, "wb") as file:
                if hasattr(os, "fchmod"):
                    os.fchmod(file.fileno(), mode)
                write(file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            if isinstance(error, OSError):
                raise _path_error(error, path) from error
            raise
