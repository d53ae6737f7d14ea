"""Lecture-demo mode: a lesson notebook served as a code-free, interactive page.

In a lecture the code cells are noise: the audience should see the sliders, the numbers and the
plots, full screen. Voila (a Jupyter project) does exactly that: it runs the notebook top to bottom
in a fresh kernel, renders only the outputs (``--strip_sources=True``, Voila's default "lab"
template), and keeps every ipywidget live, so moving a slider re-runs its callback as in JupyterLab.

    python -m qlearn lecture 03                      # notebooks/03_*.ipynb, opens the browser
    python -m qlearn lecture 01_quantize_dequantize  # by file name (".ipynb" optional)
    python -m qlearn lecture 02 --port 8870 --no-browser
    python -m qlearn lecture 02 --print-command      # show the Voila command, start nothing

The port: qlearn picks the first free port at or above ``--port`` (default 8866) itself, passes it
to Voila with ``--Voila.port_retries=0`` and prints that port, so the address printed is the one
being served (Voila left to itself would silently move to another port when 8866 is busy).

Press F11 in the browser for full screen; Ctrl-C in the terminal stops the server and its kernel.
Nothing here changes the notebook: Voila never saves it.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

LESSON_GLOB = "[0-9][0-9]_*.ipynb"  # lesson notebooks are named NN_topic.ipynb
DEFAULT_PORT = 8866  # Voila's own default
HOST = "127.0.0.1"  # the lecturer's own machine; a projector shows its screen
PORT_TRIES = 50  # how many consecutive ports free_port tries (Voila's own port_retries is 50)
EXAMPLE_NOTEBOOK = "03_per_channel.ipynb"  # named in --help; tests check that it exists


def default_notebooks_dir() -> Path:
    """The ``notebooks/`` folder of the source checkout (this file is ``<repo>/qlearn/lecture.py``)."""
    return Path(__file__).resolve().parent.parent / "notebooks"


def lesson_notebooks(notebooks_dir: str | Path | None = None) -> list[Path]:
    """All lesson notebooks ``NN_*.ipynb`` in ``notebooks_dir``, sorted by number."""
    folder = _check_dir(notebooks_dir)
    return sorted(p for p in folder.glob(LESSON_GLOB) if p.is_file())


def _check_dir(notebooks_dir: str | Path | None) -> Path:
    if notebooks_dir is None:
        notebooks_dir = default_notebooks_dir()
    if not isinstance(notebooks_dir, (str, Path)):
        raise TypeError(f"notebooks_dir must be a path, got {type(notebooks_dir).__name__}")
    folder = Path(notebooks_dir)
    if not folder.is_dir():
        raise ValueError(
            f"notebook folder {str(folder)!r} does not exist; run from the qlearn checkout "
            "or pass --notebooks-dir PATH"
        )
    return folder


def _available(folder: Path) -> str:
    names = [p.name for p in sorted(folder.glob(LESSON_GLOB))]
    return ", ".join(names) if names else "none"


def find_notebook(key: Any, notebooks_dir: str | Path | None = None) -> Path:
    """Resolve what the lecturer typed to one lesson notebook.

    ``key`` is a lesson number (``"3"`` or ``"03"`` -> the one file ``03_*.ipynb``), a file name
    (``"03_per_channel.ipynb"``, ``".ipynb"`` optional) looked up in ``notebooks_dir``, or a path to an
    existing ``.ipynb`` file. Anything else raises ValueError naming the notebooks that exist.
    """
    if not isinstance(key, (str, Path)) or isinstance(key, bool):
        raise TypeError(f"the notebook must be given as a number or a file name, got {type(key).__name__}")
    text = str(key).strip()
    if not text:
        raise ValueError("no notebook given: pass a lesson number (e.g. 03) or a file name")

    if text.isdigit():
        if len(text) > 2:
            raise ValueError(f"lesson numbers have two digits (00-99), got {text!r}")
        folder = _check_dir(notebooks_dir)
        number = f"{int(text):02d}"
        matches = sorted(folder.glob(f"{number}_*.ipynb"))
        if not matches:
            raise ValueError(
                f"no lesson notebook numbered {number} in {folder}; available: {_available(folder)}"
            )
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches)
            raise ValueError(f"lesson number {number} is ambiguous, it matches {names}: give the file name")
        return matches[0]

    name = text if text.endswith(".ipynb") else text + ".ipynb"
    as_path = Path(name)
    if as_path.is_file():  # a path the lecturer typed, relative to the current folder or absolute
        return as_path.resolve()
    if Path(text).exists():
        raise ValueError(f"{text!r} is not a notebook: lecture mode serves .ipynb files")
    folder = _check_dir(notebooks_dir)
    candidate = folder / as_path.name
    if candidate.is_file():
        return candidate
    raise ValueError(f"no notebook {name!r} in {folder}; available: {_available(folder)}")


def voila_command(
    notebook: str | Path,
    *,
    port: int = DEFAULT_PORT,
    open_browser: bool = True,
    show_tracebacks: bool = False,
    python: str = sys.executable,
) -> list[str]:
    """The command line that serves ``notebook`` code-free with Voila (an argv list, no shell).

    ``--strip_sources=True`` hides every code cell (inputs), keeping outputs and live widgets;
    no ``--template`` is passed, so Voila's default "lab" template renders the page.
    ``--Voila.port_retries=0`` makes Voila serve exactly ``port`` or stop with an error, never
    silently move to another port (``main`` picks a free one first with ``free_port``).
    ``show_tracebacks`` shows Python errors on the page instead of a one-line notice.
    """
    port = check_port(port)
    if not isinstance(open_browser, bool) or not isinstance(show_tracebacks, bool):
        raise TypeError("open_browser and show_tracebacks must be True or False")
    cmd = [
        python, "-m", "voila", str(Path(notebook).resolve()),
        f"--port={port}",
        "--Voila.port_retries=0",
        f"--Voila.ip={HOST}",
        "--strip_sources=True",
    ]
    if show_tracebacks:
        cmd.append("--show_tracebacks=True")
    if not open_browser:
        cmd.append("--no-browser")
    return cmd


def check_port(port: Any) -> int:
    """A TCP port number: an int in 1..65535 (ports below 1024 need root)."""
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an integer, got {type(port).__name__}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1..65535, got {port}")
    return port


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a TCP server could listen on ``host:port`` now (tries to bind it, then lets go)."""
    port = check_port(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:  # in use (EADDRINUSE) or not allowed (EACCES, ports < 1024)
            return False
    return True


def free_port(first: int = DEFAULT_PORT, host: str = HOST, tries: int = PORT_TRIES) -> int:
    """The first port in ``first, first + 1, ...`` (``tries`` of them, <= 65535) that is free on ``host``.

    Raises ValueError naming the range when every one of them is busy. Another program may still
    take the port between this check and Voila's start; Voila then stops with an error instead of
    moving on (``--Voila.port_retries=0``), so the printed address is never wrong.
    """
    first = check_port(first)
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
        raise ValueError(f"tries must be a positive integer, got {tries!r}")
    last = min(first + tries - 1, 65535)
    for port in range(first, last + 1):
        if port_is_free(port, host):
            return port
    raise ValueError(f"no free port in {first}..{last} on {host}: stop another server or pass --port")


def _port_arg(text: str) -> int:
    try:
        return check_port(int(text))
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qlearn lecture",
        description="Serve a lesson notebook as a code-free interactive page (Voila).",
        epilog="Example: python -m qlearn lecture 03   (then press F11 in the browser)",
    )
    parser.add_argument("notebook", help=f"lesson number (03) or file name ({EXAMPLE_NOTEBOOK})")
    parser.add_argument("--port", type=_port_arg, default=DEFAULT_PORT,
                        help=f"port on {HOST} (default {DEFAULT_PORT}); if it is busy, the next free one "
                             "is used and printed")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument("--notebooks-dir", default=None,
                        help="folder holding the NN_*.ipynb lessons (default: the checkout's notebooks/)")
    parser.add_argument("--show-tracebacks", action="store_true",
                        help="show Python errors on the page (for rehearsals, not for the audience)")
    parser.add_argument("--print-command", action="store_true",
                        help="print the Voila command line and exit without starting it")
    return parser


def main(argv: list[str]) -> int:
    """``python -m qlearn lecture NN [--port P] [--no-browser]``: run Voila until Ctrl-C; exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2), already printed by argparse
        return int(stop.code or 0)
    try:
        notebook = find_notebook(args.notebook, args.notebooks_dir)
        port = free_port(args.port)
        cmd = voila_command(notebook, port=port, open_browser=not args.no_browser,
                            show_tracebacks=args.show_tracebacks)
    except (TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_command:
        print(shlex.join(cmd))
        return 0
    if importlib.util.find_spec("voila") is None:
        print("error: lecture mode needs Voila, which is not installed: pip install voila", file=sys.stderr)
        return 1
    if port != args.port:
        print(f"port {args.port} is busy; using {port}", flush=True)
    print(f"Serving {notebook.name} code-free at http://{HOST}:{port}/ (Ctrl-C stops it)", flush=True)
    return _run(cmd, cwd=notebook.parent)


def _run(cmd: list[str], cwd: Path) -> int:
    """Run Voila in the foreground; SIGTERM to us is passed on, so its kernel never outlives it."""
    # the lesson's kernels draw lecture-size figures (qlearn.widgets.base: larger canvas and fonts)
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "QLEARN_LECTURE": "1"})
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)
    if in_main_thread:  # signal handlers can only be installed from the main thread
        signal.signal(signal.SIGTERM, lambda signum, frame: proc.terminate())
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # Ctrl-C reached Voila too; let it shut its kernel down
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.terminate()
                    proc.wait()
                return 0
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
