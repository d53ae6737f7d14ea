"""Lecture-demo mode (qlearn.lecture) without a browser: lookup, command line, errors, exit codes.

The served page itself is tested in a real browser by tests/browser/test_lecture_pages.py.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn import lecture
from qlearn.lecture import (
    DEFAULT_PORT,
    HOST,
    check_port,
    find_notebook,
    free_port,
    lesson_notebooks,
    port_is_free,
    voila_command,
)

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["00_welcome.ipynb", "01_quantize_dequantize.ipynb", "02_error_analysis.ipynb", "09_pipeline.ipynb"]


@pytest.fixture
def nb_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in NAMES:
        (folder / name).write_text("{}")
    (folder / "scratch.ipynb").write_text("{}")  # not a lesson: no NN_ prefix
    (folder / "03_notes.txt").write_text("")  # not a notebook
    return folder


# ----------------------------------------------------------------------------- lookup
def test_lesson_notebooks_are_the_numbered_ones_in_order(nb_dir):
    assert [p.name for p in lesson_notebooks(nb_dir)] == NAMES


@pytest.mark.parametrize("key, expected", [
    ("1", "01_quantize_dequantize.ipynb"),
    ("01", "01_quantize_dequantize.ipynb"),
    ("0", "00_welcome.ipynb"),
    ("9", "09_pipeline.ipynb"),
    (" 02 ", "02_error_analysis.ipynb"),
    ("02_error_analysis", "02_error_analysis.ipynb"),
    ("02_error_analysis.ipynb", "02_error_analysis.ipynb"),
])
def test_find_by_number_or_file_name(nb_dir, key, expected):
    assert find_notebook(key, nb_dir) == nb_dir / expected


def test_find_by_path(nb_dir, monkeypatch):
    monkeypatch.chdir(nb_dir.parent)
    assert find_notebook("notebooks/09_pipeline.ipynb", nb_dir / "elsewhere") == nb_dir / "09_pipeline.ipynb"
    assert find_notebook(str(nb_dir / "scratch.ipynb")) == nb_dir / "scratch.ipynb"


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.integers(0, 99))
def test_number_lookup_matches_the_file_prefix(tmp_path_factory, n):
    """Oracle: the lesson whose name starts with the zero-padded number, whatever the spelling."""
    folder = tmp_path_factory.mktemp("nbs")
    names = [f"{k:02d}_lesson{k}.ipynb" for k in range(0, 100, 7)]
    for name in names:
        (folder / name).write_text("{}")
    expected = [folder / name for name in names if name.startswith(f"{n:02d}_")]
    for key in {str(n), f"{n:02d}"}:
        if expected:
            assert find_notebook(key, folder) == expected[0]
        else:
            with pytest.raises(ValueError, match="no lesson notebook numbered"):
                find_notebook(key, folder)


def test_the_real_lessons_resolve_by_number():
    lessons = lesson_notebooks()  # the checkout's notebooks/
    assert lessons, "no lesson notebooks found in notebooks/"
    for path in lessons:
        assert find_notebook(path.name[:2]) == path
        assert find_notebook(path.stem) == path


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("key, message", [
    ("07", r"no lesson notebook numbered 07 .*available: 00_welcome.ipynb, 01_"),
    ("123", "two digits"),
    ("", "no notebook given"),
    ("   ", "no notebook given"),
    ("nonexistent", r"no notebook 'nonexistent.ipynb' .*available: 00_welcome"),
    ("03_notes.txt", "no notebook '03_notes.txt.ipynb'"),
])
def test_unknown_notebooks_are_explained(nb_dir, key, message):
    with pytest.raises(ValueError, match=message):
        find_notebook(key, nb_dir)


def test_ambiguous_number(nb_dir):
    (nb_dir / "01_other.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="ambiguous.*01_other.ipynb"):
        find_notebook("1", nb_dir)


def test_existing_non_notebook_path(nb_dir, monkeypatch):
    monkeypatch.chdir(nb_dir)
    with pytest.raises(ValueError, match="not a notebook"):
        find_notebook("03_notes.txt", nb_dir)


def test_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*--notebooks-dir"):
        find_notebook("01", tmp_path / "nope")
    with pytest.raises(ValueError, match="does not exist"):
        lesson_notebooks(tmp_path / "nope")


@pytest.mark.parametrize("key", [3, 3.0, None, True, ["01"]])
def test_key_type(nb_dir, key):
    with pytest.raises(TypeError, match="number or a file name"):
        find_notebook(key, nb_dir)


def test_folder_type():
    with pytest.raises(TypeError, match="notebooks_dir must be a path"):
        lesson_notebooks(42)


# ----------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def voila_parse():
    """Oracle: Voila's own command-line parser reads back what voila_command built."""
    pytest.importorskip("voila", reason="pip install voila")
    from voila.app import Voila
    from voila.configuration import VoilaConfiguration

    def parse(cmd: list[str]):
        assert cmd[1:3] == ["-m", "voila"]
        app = Voila()
        app.parse_command_line(cmd[3:])
        return app, VoilaConfiguration(parent=app)

    return parse


@pytest.mark.parametrize("open_browser", [True, False])
@pytest.mark.parametrize("tracebacks", [True, False])
def test_voila_command_as_voila_reads_it(nb_dir, voila_parse, open_browser, tracebacks):
    nb = nb_dir / "01_quantize_dequantize.ipynb"
    cmd = voila_command(nb, port=9123, open_browser=open_browser, show_tracebacks=tracebacks)
    assert cmd[0] == sys.executable
    app, conf = voila_parse(cmd)
    assert app.extra_args == [str(nb.resolve())]
    assert app.port == 9123 and app.ip == "127.0.0.1"
    assert app.port_retries == 0  # Voila serves exactly this port or stops; it never moves silently
    assert app.open_browser is open_browser
    assert conf.strip_sources is True  # code-free
    assert conf.show_tracebacks is tracebacks
    assert conf.template == "lab"  # Voila's default template, not overridden


def test_voila_command_defaults(nb_dir):
    cmd = voila_command(nb_dir / "00_welcome.ipynb")
    assert f"--port={DEFAULT_PORT}" in cmd and "--strip_sources=True" in cmd
    assert "--no-browser" not in cmd and not any(a.startswith("--template") for a in cmd)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(port=st.integers(-70000, 70000))
def test_check_port(port):
    if 1 <= port <= 65535:
        assert check_port(port) == port
    else:
        with pytest.raises(ValueError, match="1..65535"):
            check_port(port)


@pytest.mark.parametrize("port", ["8866", 8866.0, True, None])
def test_port_type(port):
    with pytest.raises(TypeError, match="port must be an integer"):
        check_port(port)


def test_voila_command_flag_types(nb_dir):
    with pytest.raises(TypeError, match="True or False"):
        voila_command(nb_dir / "00_welcome.ipynb", open_browser="no")


# ----------------------------------------------------------------------------- ports
@pytest.fixture
def busy_port():
    """A port some other server is listening on (the OS picks it), for as long as the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        sock.listen()
        yield sock.getsockname()[1]


def _can_listen(port: int) -> bool:
    """Oracle: a real server socket (SO_REUSEADDR, as Tornado/Voila set it) can listen on the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
            sock.listen()
        except OSError:
            return False
    return True


def test_free_port_skips_a_busy_port(busy_port):
    assert not port_is_free(busy_port) and not _can_listen(busy_port)
    port = free_port(busy_port)
    assert busy_port < port <= busy_port + 50
    assert _can_listen(port)
    assert not any(_can_listen(p) for p in range(busy_port, port))  # the first free one, not any


def test_free_port_keeps_a_free_port(busy_port):
    port = free_port(busy_port)  # free now (nothing listens on it)
    assert free_port(port) == port


def test_free_port_when_all_are_busy(busy_port):
    with pytest.raises(ValueError, match=rf"no free port in {busy_port}..{busy_port} .*--port"):
        free_port(busy_port, tries=1)


@pytest.mark.parametrize("tries", [0, -1, 1.5, True, None])
def test_free_port_tries(tries):
    with pytest.raises(ValueError, match="tries must be a positive integer"):
        free_port(DEFAULT_PORT, tries=tries)


def test_voila_does_not_move_off_a_busy_port(nb_dir, busy_port):
    """Oracle: Voila itself, given our command on a busy port, stops with an error instead of serving
    elsewhere (without --Voila.port_retries=0 it would serve on another port than the one printed)."""
    pytest.importorskip("voila", reason="pip install voila")
    cmd = voila_command(nb_dir / "01_quantize_dequantize.ipynb", port=busy_port, open_browser=False)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=nb_dir)
    assert out.returncode != 0
    assert f"port {busy_port} is already in use" in out.stderr and "could not be started" in out.stderr


# ----------------------------------------------------------------------------- main()
@pytest.fixture
def ran(monkeypatch):
    """Replace the foreground Voila run by a recorder."""
    calls: list[tuple[list[str], Path]] = []

    def fake_run(cmd, cwd):
        calls.append((cmd, cwd))
        return 0

    monkeypatch.setattr(lecture, "_run", fake_run)
    return calls


def test_main_runs_voila_on_the_lesson(nb_dir, ran, capsys):
    assert lecture.main(["2", "--notebooks-dir", str(nb_dir), "--port", "8901", "--no-browser"]) == 0
    (cmd, cwd), = ran
    assert cmd == voila_command(nb_dir / "02_error_analysis.ipynb", port=8901, open_browser=False)
    assert cwd == nb_dir
    assert "02_error_analysis.ipynb" in capsys.readouterr().out


def test_main_reports_the_port_actually_served(nb_dir, ran, capsys, busy_port):
    """Port busy: main serves the next free one, and prints the port it passes to Voila."""
    assert lecture.main(["1", "--notebooks-dir", str(nb_dir), "--port", str(busy_port), "--no-browser"]) == 0
    (cmd, _), = ran
    served = int(next(a for a in cmd if a.startswith("--port=")).split("=", 1)[1])
    assert served != busy_port and _can_listen(served)
    out = capsys.readouterr().out
    assert f"port {busy_port} is busy; using {served}" in out
    assert f"http://{HOST}:{served}/" in out and f":{busy_port}/" not in out


def test_main_print_command_starts_nothing(nb_dir, ran, capsys):
    assert lecture.main(["00", "--notebooks-dir", str(nb_dir), "--print-command", "--show-tracebacks"]) == 0
    assert ran == []
    out = capsys.readouterr().out.strip()
    assert out.endswith("--strip_sources=True --show_tracebacks=True") and "00_welcome.ipynb" in out


def test_main_unknown_notebook_exit_2(nb_dir, ran, capsys):
    assert lecture.main(["42", "--notebooks-dir", str(nb_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no lesson notebook numbered 42") and "01_quantize_dequantize.ipynb" in err
    assert ran == []


@pytest.mark.parametrize("argv, text", [
    ([], "required: notebook"),
    (["01", "--port", "0"], "expected a port number"),
    (["01", "--port", "http"], "expected a port number"),
    (["01", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_main_usage_errors_exit_2(argv, text, ran, capsys):
    assert lecture.main(argv) == 2
    assert text in capsys.readouterr().err
    assert ran == []


def test_main_help_exit_0(capsys):
    assert lecture.main(["--help"]) == 0
    assert "code-free" in capsys.readouterr().out


def test_help_and_docs_name_only_notebooks_that_exist(capsys):
    """Every NN_name.ipynb example in --help and the module's docstrings is a real lesson."""
    assert lecture.main(["--help"]) == 0
    text = capsys.readouterr().out + (lecture.__doc__ or "") + (lecture.find_notebook.__doc__ or "")
    named = set(re.findall(r"\b\d\d_[a-z0-9_]+(?:\.ipynb)?", text))
    assert named, "the help should show an example file name"
    real = {p.name for p in lesson_notebooks()} | {p.stem for p in lesson_notebooks()}
    assert named <= real, named - real


def test_main_without_voila(nb_dir, ran, monkeypatch, capsys):
    real = lecture.importlib.util.find_spec
    monkeypatch.setattr(lecture.importlib.util, "find_spec", lambda name: None if name == "voila" else real(name))
    assert lecture.main(["01", "--notebooks-dir", str(nb_dir)]) == 1
    assert "pip install voila" in capsys.readouterr().err
    assert ran == []


def test_run_returns_the_child_exit_status(tmp_path):
    assert lecture._run([sys.executable, "-c", "import sys; sys.exit(3)"], cwd=tmp_path) == 3


def test_python_m_qlearn_lecture_dispatch():
    """The documented command goes through qlearn/__main__.py to lecture.main."""
    out = subprocess.run(
        [sys.executable, "-m", "qlearn", "lecture", "01", "--print-command", "--port", "8877", "--no-browser"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "-m voila" in out.stdout and "01_" in out.stdout and "--port=8877" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "qlearn", "lecture", "77"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no lesson notebook numbered 77" in bad.stderr


def test_sigterm_to_the_command_stops_voila_too(tmp_path):
    """Stopping `python -m qlearn lecture` by its process id must not orphan the server it runs."""
    import os
    import signal
    import time

    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c",
                               "import sys; from qlearn.lecture import _run; "
                               f"sys.exit(_run([sys.executable, '-c', {child!r}], cwd='.'))"], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child_pid = int(pid_file.read_text())
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=20) != 0  # the child was terminated, and the parent reports it
        with pytest.raises(ProcessLookupError):
            os.kill(child_pid, 0)  # reaped: gone, not a zombie or an orphan
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if pid_file.exists() and pid_file.read_text():
            try:  # only when the test failed: do not leave the orphan sleeping
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
