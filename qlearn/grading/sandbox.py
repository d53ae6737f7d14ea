"""The sandbox a submission runs in: bubblewrap (``bwrap``), or nothing when the instructor says so.

``command(...)`` returns the argument list that starts ``python -m qlearn.grading.runner`` inside a
bubblewrap sandbox whose only contents are:

    read-only   the system's programs and libraries (/usr, and /bin, /lib, ... where they are real
                folders), a few files of /etc (the loader cache, time zone, fonts, passwd/group),
                the Python installation that runs the grader (prefix and site-packages), and the
                ``qlearn`` package itself at /opt/qlearn/qlearn (not the rest of the project: no
                solutions, no docs, no tests)
    writable    /home/student (a size-limited tmpfs holding only ``submission.ipynb``, the copy of
                the one notebook being graded), /tmp and /dev/shm (two more size-limited tmpfs); all
                vanish with the sandbox. The sandbox's root and /dev are remounted read-only
    nothing     else: no network (a new, empty network namespace), no other process (a new PID
                namespace, ``--die-with-parent``), no other user (uid 65534 in a new user namespace,
                every capability dropped, no further user namespaces), a new session (no terminal)

The options travel through a pipe (``--args FD``), so ``/proc/1/cmdline`` inside the sandbox shows
``bwrap --args N -- python -s -m qlearn.grading.runner`` and not where anything lives outside. Resource limits (memory,
processes, file size, CPU time) are set, soft and hard, by the runner before any learner code runs:
a hard limit cannot be raised again without a capability, and the sandbox has none.
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import qlearn

__all__ = ["SandboxUnavailable", "INSTALL_HINT", "bwrap", "available", "command", "popen", "visible_sources",
           "namespace_options", "system_options", "SCRATCH", "SUBMISSION"]

SCRATCH = "/home/student"  # the sandbox's working folder (tmpfs)
SUBMISSION = SCRATCH + "/submission.ipynb"
PACKAGE_PARENT = "/opt/qlearn"  # qlearn/ is mounted here, read-only
SANDBOX_UID = 65534  # "nobody"
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: `sudo apt-get install bubblewrap`; Fedora: `sudo dnf install "
    "bubblewrap`), or run `bash .ci/install_bubblewrap.sh`; it also needs unprivileged user namespaces "
    "(`sysctl kernel.unprivileged_userns_clone=1` on older Debian kernels) unless the grader runs as root"
)
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "fonts", "passwd", "group",
        "nsswitch.conf", "alternatives", "mime.types", "matplotlibrc")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create its namespaces here (the message says how to fix it)."""


def bwrap() -> str | None:
    """The path of the ``bwrap`` executable, or None."""
    return shutil.which("bwrap")


def _package_dir() -> Path:
    return Path(qlearn.__file__).resolve().parent


def _python_dirs() -> list[Path]:
    dirs = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.base_exec_prefix),
            Path(os.path.realpath(sys.executable)).parent.parent}
    for p in site.getsitepackages() + [site.getusersitepackages()]:
        if p in sys.path and Path(p).is_dir():
            dirs.add(Path(p))
    found = sorted({d.resolve() for d in dirs if d.is_dir() and d != Path("/")})
    # a folder inside another one already listed is covered by it
    return [d for d in found if not any(o != d and o in d.parents for o in found)]


def namespace_options() -> list[str]:
    """The isolation every sandbox gets: new user (uid 65534, no capability, no nested user
    namespace), network, PID, IPC, UTS and cgroup namespaces; dies with the grader; no terminal."""
    return [
        "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--disable-userns", "--cap-drop", "ALL", "--die-with-parent", "--new-session",
        "--hostname", "sandbox", "--clearenv", "--proc", "/proc", "--dev", "/dev",
    ]


def system_options() -> list[str]:
    """Read-only binds of the system's programs and libraries and of a few files of /etc."""
    args: list[str] = []
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = Path("/") / name
        if p.is_symlink():  # merged /usr: /bin -> usr/bin
            args += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            args += ["--ro-bind", str(p), str(p)]
    for name in _ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def visible_sources() -> list[Path]:
    """The folders of this machine a submission can read (for the grader's own safety checks)."""
    out = [Path("/usr"), _package_dir(), *_python_dirs()]
    out += [Path("/") / n for n in ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
            if (Path("/") / n).is_dir() and not (Path("/") / n).is_symlink()]
    return out


def _env(tmp_mb: int) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin:" + str(Path(os.path.realpath(sys.executable)).parent),
        "HOME": SCRATCH, "TMPDIR": "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "PYTHONPATH": PACKAGE_PARENT, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg", "MPLCONFIGDIR": "/tmp/mpl",
        "IPYTHONDIR": SCRATCH + "/.ipython", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1", "QLEARN_GRADING": "1",
    }


def command(file_fd: int, tmp_mb: int = 64, size_option: bool = True) -> list[str]:
    """The bwrap options for one sandboxed runner (they travel through ``--args FD``; the command,
    ``python -s -m qlearn.grading.runner``, follows on the command line); ``file_fd`` is an open file
    descriptor of the submission's bytes (copied into the sandbox)."""
    size = ["--size", str(tmp_mb * 2**20)] if size_option else []
    args = [
        *namespace_options(), *system_options(),
        *size, "--tmpfs", "/tmp",
        *size, "--tmpfs", "/dev/shm",
        *size, "--tmpfs", SCRATCH,
    ]
    for d in _python_dirs():
        args += ["--ro-bind", str(d), str(d)]
    args += ["--ro-bind", str(_package_dir()), f"{PACKAGE_PARENT}/qlearn"]
    args += ["--file", str(file_fd), SUBMISSION, "--chdir", SCRATCH]
    args += ["--remount-ro", "/dev", "--remount-ro", "/"]  # the root and /dev are tmpfs too: freeze them
    for k, v in _env(tmp_mb).items():
        args += ["--setenv", k, v]
    return args


def _args_pipe(args: list[str]) -> int:
    """A pipe's read end from which bwrap reads ``args`` (NUL-separated; written by a thread so that a
    long list cannot block on a full pipe)."""
    r, w = os.pipe()
    data = b"".join(a.encode() + b"\0" for a in args)

    def write() -> None:
        try:
            os.write(w, data) if len(data) < 60000 else _write_all(w, data)
        except OSError:
            pass
        finally:
            os.close(w)

    threading.Thread(target=write, daemon=True).start()
    return r


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def popen(file_path: Path, tmp_mb: int, runner: tuple[str, ...] = ("-m", "qlearn.grading.runner", "--stdin"),
          **kwargs) -> subprocess.Popen:
    """Start the sandbox (``kwargs`` go to Popen: stdin, stdout, stderr, ...)."""
    exe = bwrap()
    if exe is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed: " + INSTALL_HINT)
    with open(file_path, "rb") as f:
        args = command(f.fileno(), tmp_mb, size_option=_SIZE_OK[0])
        r = _args_pipe(args)
        try:
            return subprocess.Popen([exe, "--args", str(r), "--", sys.executable, "-s", *runner],
                                    pass_fds=(r, f.fileno()), **kwargs)
        finally:
            os.close(r)


_SIZE_OK = [True]  # bwrap older than 0.8 has no --size; then the tmpfs folders are not size-limited
_PROBED: dict[str, str | None] = {}


def available() -> None:
    """Raise ``SandboxUnavailable`` (saying why and how to fix it) unless a sandboxed Python starts here."""
    if "result" in _PROBED:
        if _PROBED["result"]:
            raise SandboxUnavailable(_PROBED["result"])
        return
    exe = bwrap()
    if exe is None:
        _PROBED["result"] = "bubblewrap (bwrap) is not installed: " + INSTALL_HINT
        raise SandboxUnavailable(_PROBED["result"])
    with tempfile.NamedTemporaryFile(suffix=".ipynb") as tmp:
        err = ""
        for size in (True, False):
            _SIZE_OK[0] = size
            proc = popen(Path(tmp.name), 16, ("-c", "import qlearn.grading.runner"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                _, e = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, e = proc.communicate()
            if proc.returncode == 0:
                _PROBED["result"] = None
                return
            err = e.decode("utf-8", "replace").strip()[-500:]
            if "--size" not in err:
                break
    _PROBED["result"] = f"bubblewrap (bwrap) cannot start a sandbox here ({err or 'no message'}): {INSTALL_HINT}"
    raise SandboxUnavailable(_PROBED["result"])
