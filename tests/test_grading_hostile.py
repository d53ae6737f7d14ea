"""The grader against hostile submissions: every attack of issue 15, each one bounded.

Each hostile notebook is the ex1 solution (9 points when nothing else happens) plus an attack. A few
attacks are checked from inside as well: the notebook's functions return a wrong answer when an attack
*succeeds* (a raised limit, an open connection), so a sandbox that leaks costs points and fails the
test. No fork bombs, no traffic beyond 127.0.0.1 (a port this test listens on), memory capped.

Batches: one sandboxed batch of hostile notebooks (module fixture), one Ctrl-C run, one run without
bubblewrap, plus fast unit tests of the wire format and of the grader's own verdict.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import nbformat
import numpy as np
import pytest
from exercise_notebooks import SOL_EX1, base, cell_defining, insert_after, replace_body

from qlearn.grading import checks, events, grader, outcomes, sandbox, spec, wire
from qlearn.grading.generated import cases_for
from qlearn.grading.judge import Outcome
from qlearn.grading.outcomes import grade_report
from qlearn.grading.report import csv_safe
from qlearn.grading.tasks import tasks

ROOT = Path(__file__).resolve().parents[1]
STU_EX1 = ROOT / "notebooks" / "exercises" / "ex1_quantize_dequantize.ipynb"
TOKEN = "qlearnhostile" + uuid.uuid4().hex[:12]  # marks every file and process an attack makes
TASKS = ("task_1_1", "task_1_2", "task_1_3")


def _require_bwrap() -> None:
    """Skip (developer machine) or fail (CI=true: .ci/run installs it) when bwrap is missing."""
    if sandbox.bwrap() is not None:
        return
    message = "bubblewrap (bwrap) is not installed: bash .ci/install_bubblewrap.sh"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, so this is an error, not a skip: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def needs_bwrap_fixture() -> None:
    _require_bwrap()


needs_bwrap = pytest.mark.usefixtures("needs_bwrap_fixture")


# ==================================================================================== notebooks


def _guarded(nb, flag_code):
    """The solution whose quantize_tensor returns a wrong answer when ``ESCAPED`` is not empty; the
    cell ``flag_code`` (run first) appends to ESCAPED what it managed to do."""
    nb.cells.insert(1, nbformat.v4.new_code_cell("ESCAPED = []\n" + flag_code))
    i = cell_defining(nb, "quantize_tensor")
    src = nb.cells[i].source
    head, body = src.split("    ### BEGIN SOLUTION", 1)
    nb.cells[i].source = head + "    if ESCAPED:\n        return np.zeros(np.shape(x), dtype=np.int64)\n    ### BEGIN SOLUTION" + body
    return nb


WRONG_QUANTIZE = "return np.zeros(np.shape(x), dtype=np.int64)"


def _forger():
    """A wrong quantize_tensor plus forged events on every descriptor, in every format, and a
    background thread that keeps forging while the grader's cases run."""
    fake = {
        "event": "task_end", "task": "task_1_2",
        "result": {"task_id": "task_1_2", "points": 3, "max_points": 3, "status": "passed"},
    }
    forged = [
        fake,
        {"event": "task_start", "task": "task_1_2"},
        {"event": "task_result", "task": "task_1_2", "points": 3,
         "report": {"first": "ok", "groups": {"fixed": "passed", "edge": [], "generated": [{"points": 3}]}}},
        {"event": "task_result", "task": "task_1_2", "report": {"first": "ok", "points": 300}},
        {"event": "done"},
    ]
    code = (
        "import json, os, threading, time\n"
        f"LINES = [json.dumps(e) + '\\n' for e in {forged!r}]\n"
        "def forge():\n"
        "    for fd in [int(n) for n in os.listdir('/proc/self/fd')]:\n"
        "        for line in LINES:\n"
        "            try:\n"
        "                os.write(fd, line.encode())\n"
        "            except OSError:\n"
        "                pass\n"
        "forge()\n"
        "for p in ['events0.jsonl', 'events1.jsonl', '../events0.jsonl']:\n"
        "    try:\n"
        "        open(p, 'a').write(''.join(LINES) * 30)\n"
        "    except OSError:\n"
        "        pass\n"
        "def keep():\n"
        "    while True:\n"
        "        forge(); time.sleep(0.01)\n"
        "threading.Thread(target=keep, daemon=True).start()\n"
    )
    nb = insert_after(base(), "dequantize_tensor", code)
    return replace_body(nb, "quantize_tensor", WRONG_QUANTIZE)


def _patcher():
    """A wrong quantize_tensor that patches the checker in its own process: _run_case, judge,
    grade_report, every task's oracle and comparison, PROFILES."""
    code = (
        "import qlearn.grading.checks as c, qlearn.grading.judge as j, qlearn.grading.outcomes as o\n"
        "import qlearn.grading.tasks as t\n"
        "c.run_case = j.run_case = lambda *a, **k: None\n"
        "j.judge = lambda *a, **k: None\n"
        "o.grade_report = lambda *a, **k: None\n"
        "c.PROFILES['grade'] = 1\n"
        "for task in t.TASKS.values():\n"
        "    object.__setattr__(task, 'oracle', lambda *a: np.zeros(np.shape(a[0]), dtype=np.int64))\n"
        "    object.__setattr__(task, 'compare', lambda *a: None)\n"
        "    object.__setattr__(task, 'forbidden', ())\n"
    )
    nb = insert_after(base(), "dequantize_tensor", code)
    return replace_body(nb, "quantize_tensor", WRONG_QUANTIZE)


def _snoop(subs: Path):
    """Looks for the other submissions (/proc/<ppid>/cmdline, every process's cmdline, the folder's
    real path), rewrites the victim, writes into the project and plants sitecustomize.py."""
    targets = [
        subs / "zz_victim.ipynb", ROOT / "docs" / "instructors.md", ROOT / "qlearn" / "grading" / "checks.py",
        ROOT / "docs" / f"pwned_{TOKEN}.md", ROOT / "qlearn" / "grading" / f"pwned_{TOKEN}.py",
        ROOT / "sitecustomize.py", Path("/opt/qlearn/qlearn/grading/checks.py"),
        Path("/opt/qlearn/sitecustomize.py"), Path(sys.prefix) / "sitecustomize.py",
    ]
    code = (
        "import glob, os, sysconfig\n"
        f"TARGETS = {[str(p) for p in targets]!r}\n"
        "seen = []\n"
        "for pid in ['self', str(os.getppid()), '1'] + os.listdir('/proc'):\n"
        "    try:\n"
        "        seen += open(f'/proc/{pid}/cmdline', 'rb').read().decode(errors='replace').split('\\0')\n"
        "    except OSError:\n"
        "        pass\n"
        "paths = set(TARGETS)\n"
        "for arg in seen:\n"
        "    if arg.startswith('/'):\n"
        "        paths |= set(glob.glob(os.path.join(os.path.dirname(arg), '*.ipynb')))\n"
        "paths |= set(glob.glob('/tmp/**/*.ipynb', recursive=True)) | set(glob.glob('/home/**/*.ipynb', recursive=True))\n"
        "paths.add(os.path.join(sysconfig.get_paths()['purelib'], 'sitecustomize.py'))\n"
        "for p in sorted(paths):\n"
        "    for mode in ('a', 'w'):\n"
        "        try:\n"
        f"            open(p, mode).write('# {TOKEN}\\nimport os; os._exit(0)\\n')\n"
        "        except OSError:\n"
        "            pass\n"
    )
    return insert_after(base(), "dequantize_tensor", code)


def _killer():
    code = (
        "import os, signal\n"
        "for pid in (os.getppid(), 1):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError:\n"
        "        pass\n"
        "os.kill(-1, signal.SIGKILL)  # everything it may signal: nothing, in its own PID namespace\n"
    )
    return insert_after(base(), "dequantize_tensor", code)


def _limits(port: int):
    """Tries to lift its hard limits, to write outside its scratch folders or past their size, to
    reach the test's listening port, and leaves setsid children and a daemon running; any success
    makes quantize_tensor wrong."""
    code = (
        "import os, resource, socket, subprocess, sys\n"
        "for name in ('RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_FSIZE', 'RLIMIT_CPU'):\n"
        "    kind = getattr(resource, name)\n"
        "    soft, hard = resource.getrlimit(kind)\n"
        "    if hard == resource.RLIM_INFINITY or soft != hard:\n"
        "        ESCAPED.append(name + ' is not a hard limit')\n"
        "    try:\n"
        "        resource.setrlimit(kind, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
        "        ESCAPED.append(name + ' raised')\n"
        "    except (ValueError, OSError):\n"
        "        pass\n"
        "for p in ('/x', '/etc/x', '/usr/x', '/dev/x', '/opt/qlearn/sitecustomize.py', '/opt/qlearn/qlearn/x.py'):\n"
        "    try:\n"
        "        open(p, 'w').write('1')\n"
        "        ESCAPED.append('wrote ' + p)\n"
        "    except OSError:\n"
        "        pass\n"
        "try:\n"
        "    for i in range(10):\n"
        "        with open(f'/tmp/fill{i}', 'wb') as f:\n"
        "            f.write(b'0' * 10 * 2**20)\n"
        "    ESCAPED.append('wrote 100 MiB to /tmp')\n"
        "except OSError:\n"
        "    pass\n"
        "try:\n"
        "    big = bytearray(3 * 2**30)\n"
        "    ESCAPED.append('3 GiB allocated')\n"
        "    del big\n"
        "except MemoryError:\n"
        "    pass\n"
        "s = socket.socket()\n"
        "s.settimeout(2)\n"
        "try:\n"
        f"    s.connect(('127.0.0.1', {port}))\n"
        "    ESCAPED.append('connected')\n"
        "except OSError:\n"
        "    pass\n"
        f"cmd = [sys.executable, '-c', 'import time; time.sleep(120)', '{TOKEN}']\n"
        "subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(120)', '{TOKEN}d'])\n"
        "    os._exit(0)\n"
    )
    return _guarded(base(), code)


def _malformed(subs: Path) -> dict[str, str]:
    """name -> a word the note must contain; each file is valid JSON (or nearly) but not a notebook."""
    good = json.loads(SOL_EX1.read_text())
    out = {}
    nb = dict(good, metadata=[])
    (subs / "m_metadata_list.ipynb").write_text(json.dumps(nb))
    out["m_metadata_list"] = "metadata"
    nb = json.loads(SOL_EX1.read_text())
    nb["cells"][3]["source"] = ["x = 1\n", 7, None]
    (subs / "m_source_int.ipynb").write_text(json.dumps(nb))
    out["m_source_int"] = "not text"
    (subs / "m_deep_json.ipynb").write_text('{"cells": [], "metadata": ' + "[" * 200_000 + "]" * 200_000 + "}")
    out["m_deep_json"] = "nested too deeply"
    (subs / "m_cells_null.ipynb").write_text('{"cells": [null, 3]}')
    out["m_cells_null"] = "cell 0"
    return out


def _exercise_list():
    nb = base()
    nb.metadata["qlearn"]["exercise"] = ["ex1", {"x": 1}]  # a list where the exercise name belongs
    return nb


def _deep_expression():
    return insert_after(base(), "dequantize_tensor", "y = " + "(" * 100_000 + "1" + ")" * 100_000 + "\n"
                         "z = " + "-" * 300_000 + "1\n")


# ==================================================================================== helpers
def _digest(folder: Path, skip=(".git", "__pycache__", ".pytest_cache", ".hypothesis", ".ipynb_checkpoints")) -> dict:
    out = {}
    for p in sorted(folder.rglob("*")):
        if any(part in skip for part in p.relative_to(folder).parts) or not p.is_file() or p.is_symlink():
            continue
        try:
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError:
            continue
    return out


def _token_processes() -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if TOKEN.encode() in cmd:
            found.append(f"{pid}: {cmd[:120]!r}")
    return found


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["submission"]: row for row in csv.DictReader(f)}


def _points(row) -> tuple[int, ...]:
    return tuple(int(row[t]) for t in TASKS)


class _Listener:
    """A TCP port on 127.0.0.1 that records every connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


# ==================================================================================== the hostile batch
@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    _require_bwrap()
    root = tmp_path_factory.mktemp("hostile")
    subs = root / "submissions"
    subs.mkdir()
    listener = _Listener()
    notebooks = {
        "a_forger": _forger(), "a_patcher": _patcher(), "a_snoop": _snoop(subs), "a_killer": _killer(),
        "a_limits": _limits(listener.port), "a_exercise_list": _exercise_list(), "a_deep_expression": _deep_expression(),
        "=1+1": base(), "alice": base(), "zz_victim": base(),
    }
    for name, nb in notebooks.items():
        nbformat.write(nb, str(subs / f"{name}.ipynb"))
    (subs / "alice").mkdir()
    shutil.copyfile(STU_EX1, subs / "alice" / "ex1_quantize_dequantize.ipynb")
    malformed = _malformed(subs)
    (subs / "a_symlink.ipynb").symlink_to(SOL_EX1)  # a link to the solutions (or to any file of the grader's)
    (subs / "b_linked").mkdir()
    (subs / "b_linked" / "ex1.ipynb").symlink_to(SOL_EX1)
    owned = [ROOT / "qlearn" / "grading", ROOT / "docs"]
    before = {"subs": _digest(subs), "project": _digest(ROOT), "owned": {str(p): _digest(p) for p in owned}}
    limits = grader.Limits(time_limit=90, cell_timeout=10, task_timeout=10, memory_mb=2048, max_restarts=3,
                           grace=2, examples=10)
    t0 = time.perf_counter()
    try:
        grades = grader.grade_folder(subs, root / "grades.csv", limits=limits, jobs=2, progress=False)
        seconds = time.perf_counter() - t0
        time.sleep(0.5)
        procs = _token_processes()
    finally:
        listener.close()
    return {"root": root, "subs": subs, "grades": grades, "rows": _rows(root / "grades.csv"), "before": before,
            "after": {"subs": _digest(subs), "project": _digest(ROOT), "owned": {str(p): _digest(p) for p in owned}},
            "malformed": malformed, "procs": procs, "accepted": listener.accepted, "seconds": seconds}


def test_the_batch_completes_with_one_row_per_submission(hostile):
    rows = hostile["rows"]
    expected = {"a_forger", "a_patcher", "a_snoop", "a_killer", "a_limits", "a_exercise_list", "a_deep_expression",
                "'=1+1", "alice", "alice-2", "zz_victim", "a_symlink", "b_linked", *hostile["malformed"]}
    assert set(rows) == expected
    assert all(g.complete for g in hostile["grades"])


def test_forged_events_and_patched_checkers_score_nothing(hostile):
    rows = hostile["rows"]
    assert _points(rows["a_patcher"]) == (3, 0, 3), rows["a_patcher"]
    # the forger's background thread may also forge "done" or a result in turn: that only costs it points
    assert rows["a_forger"]["task_1_2"] == "0" and int(rows["a_forger"]["total"]) <= 6, rows["a_forger"]
    assert "not grading events" in rows["a_forger"]["notes"]
    text = (hostile["root"] / "grades_feedback" / "a_patcher.txt").read_text()
    assert "NOT PASSED task_1_2" in text and "FAILED at case 1" in text


def test_the_victim_and_the_attackers_that_fail_keep_full_marks(hostile):
    rows = hostile["rows"]
    for name in ("zz_victim", "a_snoop", "a_killer", "a_limits", "a_exercise_list", "a_deep_expression", "'=1+1", "alice-2"):
        assert _points(rows[name]) == (3, 3, 3), (name, rows[name]["notes"])


def test_the_killer_only_kills_its_own_sandbox(hostile):
    row = hostile["rows"]["a_killer"]
    assert row["total"] == "9"  # the grader lived on: the row is there, and the batch's CSV
    # kill(-1, SIGKILL) hits every process it may signal but itself and its PID namespace's init: none
    assert "ProcessLookupError" in row["notes"], row["notes"]


def test_nothing_outside_the_scratch_folder_changed(hostile):
    before, after = hostile["before"], hostile["after"]
    assert after["subs"] == before["subs"], "a submission file changed"
    assert after["owned"] == before["owned"], "the grader's package or the docs changed"
    assert not (ROOT / "sitecustomize.py").exists() or "sitecustomize.py" in before["project"]
    new = set(after["project"]) - set(before["project"])
    assert not [p for p in new if TOKEN in p or p.endswith("sitecustomize.py")]
    changed = [p for p in after["project"] if before["project"].get(p) not in (None, after["project"][p])]
    assert not [p for p in changed if TOKEN.encode() in (ROOT / p).read_bytes()], "an attack wrote into the project"
    assert not list(Path(sys.prefix).rglob(f"*{TOKEN}*"))


def test_no_process_outlives_the_batch_and_no_connection_got_out(hostile):
    assert hostile["procs"] == []
    assert hostile["accepted"] == 0


def test_malformed_notebooks_are_rows_with_zero_and_a_note(hostile):
    rows = hostile["rows"]
    for name, word in hostile["malformed"].items():
        assert rows[name]["total"] == "0" and word in rows[name]["notes"], (name, rows[name])
    assert "'=1+1" in rows and not any(name.startswith(("=", "+", "-", "@")) for name in rows)


def test_symbolic_links_are_not_followed(hostile):
    for name in ("a_symlink", "b_linked"):
        row = hostile["rows"][name]
        assert row["total"] == "0" and "symbolic link" in row["notes"], row


def test_duplicate_names_get_their_own_row_and_feedback(hostile):
    rows, fdir = hostile["rows"], hostile["root"] / "grades_feedback"
    # the folder alice/ sorts before alice.ipynb: it keeps the name, the notebook becomes alice-2
    assert rows["alice"]["total"] == "0" and rows["alice-2"]["total"] == "9"
    for name in ("alice", "alice-2"):
        assert "2 submissions share the name 'alice' (alice/, alice.ipynb)" in rows[name]["notes"]
    assert "listed as 'alice-2'" in rows["alice-2"]["notes"]
    assert "Total: 0/9" in (fdir / "alice.txt").read_text() and "Total: 9/9" in (fdir / "alice-2.txt").read_text()
    assert (fdir / "=1+1.txt").exists()


# ==================================================================================== Ctrl-C, bad options, no bwrap
def _children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return out


@needs_bwrap
def test_ctrl_c_writes_the_grades_finished_so_far(tmp_path):
    subs = tmp_path / "submissions"
    subs.mkdir()
    (subs / "a_broken.ipynb").write_text('{"cells": 1}')
    code = (f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', "
            f"'{TOKEN}c'], start_new_session=True)\ntime.sleep(120)")
    nbformat.write(insert_after(base(), "dequantize_tensor", code), str(subs / "b_sleeper.ipynb"))
    out = tmp_path / "grades.csv"
    proc = subprocess.Popen([sys.executable, "-m", "qlearn", "grade", str(subs), "--out", str(out), "--jobs", "1",
                             "--quiet", "--cell-timeout", "100", "--time-limit", "200"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _token_processes():  # the sleeper's sandbox is running
            time.sleep(0.2)
        assert _token_processes(), "the sleeper never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert b"interrupted" in err and b"b_sleeper" in err
    rows = _rows(out)
    assert set(rows) == {"a_broken"} and rows["a_broken"]["total"] == "0"
    time.sleep(0.5)
    assert _token_processes() == []


@pytest.mark.parametrize("option, value", [
    ("--time-limit", "nan"), ("--time-limit", "inf"), ("--time-limit", "0"), ("--time-limit", "-5"),
    ("--cell-timeout", "nan"), ("--task-timeout", "-1"), ("--memory-mb", "-1"), ("--memory-mb", "0"),
    ("--jobs", "0"), ("--jobs", "-2"), ("--examples", "0"), ("--max-restarts", "-1"),
])
def test_every_numeric_option_is_validated(tmp_path, capsys, option, value):
    (tmp_path / "a.ipynb").write_text("{}")
    out = tmp_path / "grades.csv"
    assert grader.main([str(tmp_path), "--out", str(out), option, value]) == 2
    err = capsys.readouterr().err
    assert option in err and "error" in err
    assert not out.exists()


def test_limits_refuse_nan_and_negative_values():
    with pytest.raises(ValueError, match="--time-limit"):
        grader.Limits(time_limit=float("nan"))
    with pytest.raises(ValueError, match="--memory-mb"):
        grader.Limits(memory_mb=-1)
    with pytest.raises(TypeError, match="--examples"):
        grader.Limits(examples=2.5)


def test_without_bubblewrap_the_grader_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    nbformat.write(base(), str(tmp_path / "ok.ipynb"))
    monkeypatch.setattr(sandbox, "bwrap", lambda: None)
    monkeypatch.setattr(sandbox, "_PROBED", {})
    out = tmp_path / "grades.csv"
    assert grader.main([str(tmp_path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install bubblewrap" in err and "--unsafe-no-sandbox" in err and not out.exists()
    with pytest.raises(sandbox.SandboxUnavailable):
        grader.grade_folder(tmp_path, out, progress=False)
    assert grader.main([str(tmp_path), "--out", str(out), "--quiet", "--examples", "5", "--unsafe-no-sandbox"]) == 0
    assert "WARNING: --unsafe-no-sandbox" in capsys.readouterr().err
    assert _rows(out)["ok"]["total"] == "9"


def test_the_grader_refuses_folders_a_sandbox_could_read(tmp_path, monkeypatch):
    (tmp_path / "a.ipynb").write_text("{}")
    monkeypatch.setattr(sandbox, "available", lambda: None)
    monkeypatch.setattr(sandbox, "visible_sources", lambda: [tmp_path])
    with pytest.raises(ValueError, match="which every sandbox can read"):
        grader.grade_folder(tmp_path, tmp_path.parent / "grades.csv", progress=False)


def test_csv_fields_a_spreadsheet_would_evaluate_are_escaped():
    for text in ("=1+1", "+A1", "-2", "@SUM(A1)", "\tx", "\rx"):
        assert csv_safe(text) == "'" + text
    assert csv_safe("alice") == "alice" and csv_safe(3) == 3


@needs_bwrap
def test_the_sandbox_holds_for_a_non_root_user(tmp_path):
    """CI runs as root; bubblewrap also sandboxes as an unprivileged user where user namespaces are
    allowed. Runs one small batch as 'nobody' when this machine lets nobody run this Python."""
    if os.geteuid() != 0:
        user_cmd: list[str] = []
    elif shutil.which("setpriv"):
        user_cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    else:
        pytest.skip("running as root without setpriv: cannot switch to an unprivileged user")
    probe = subprocess.run(user_cmd + [sys.executable, "-c", "import qlearn.grading.grader"], cwd="/",
                           capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run {sys.executable} with qlearn here "
                    f"({probe.stderr.decode(errors='replace').strip()[-120:]})")
    if user_cmd:
        tmp_path.chmod(0o777)
    subs = tmp_path / "subs"
    subs.mkdir(mode=0o777)
    nbformat.write(_killer(), str(subs / "killer.ipynb"))
    out = tmp_path / "out" / "grades.csv"
    out.parent.mkdir(mode=0o777)
    run = subprocess.run(user_cmd + [sys.executable, "-m", "qlearn", "grade", str(subs), "--out", str(out), "--quiet",
                                     "--examples", "5"], cwd="/", capture_output=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if run.returncode == 2 and b"cannot start a sandbox" in run.stderr:
        pytest.skip("user namespaces are not allowed for unprivileged users here: " + run.stderr.decode()[-200:])
    assert run.returncode == 0, run.stderr.decode()[-1000:]
    assert _rows(out)["killer"]["total"] == "9"


@needs_bwrap
def test_unprivileged_bubblewrap_builds_the_same_walls():
    """The sandbox's namespace options, started by an unprivileged user (nobody, via setpriv when this
    runs as root), with the system's own python3: same uid, read-only system, no network, no other
    process. Skips, saying why, where unprivileged user namespaces are not allowed."""
    python3 = shutil.which("python3", path="/usr/bin:/bin")
    if python3 is None or not python3.startswith("/usr/"):
        pytest.skip("no system python3 under /usr to run inside the sandbox")
    user_cmd = [] if os.geteuid() != 0 else ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    if user_cmd and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot switch to an unprivileged user")
    listener = _Listener()
    script = (
        "import os, socket\n"
        "print('uid', os.getuid())\n"
        "try:\n    open('/usr/qlearn-probe', 'w'); print('wrote /usr')\nexcept OSError as e: print('ro', e.errno)\n"
        "s = socket.socket(); s.settimeout(2)\n"
        f"try:\n    s.connect(('127.0.0.1', {listener.port})); print('connected')\nexcept OSError: print('no network')\n"
        "print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
    )
    try:
        run = subprocess.run(user_cmd + [sandbox.bwrap(), *sandbox.namespace_options(), *sandbox.system_options(),
                                         "--", python3, "-I", "-c", script], capture_output=True, timeout=60, cwd="/")
    finally:
        listener.close()
    if run.returncode != 0 and (b"No permission" in run.stderr or b"Operation not permitted" in run.stderr):
        pytest.skip("unprivileged user namespaces are not allowed here: " + run.stderr.decode()[-200:])
    out = run.stdout.decode()
    assert run.returncode == 0, run.stderr.decode()
    assert "uid 65534" in out and "ro 30" in out and "no network" in out and "pids [1, 2]" in out, out
    assert listener.accepted == 0


# ==================================================================================== the verdict is the grader's
def test_wire_round_trips_plain_data_and_refuses_anything_else():
    values = [None, True, 3, -2**70, 0.1, float("nan"), float("-inf"), 1 + 2j, "text", (1, [2.5, None]),
              np.arange(6, dtype=np.uint8).reshape(2, 3), np.float32(1.5), np.int64(-7), np.array(2.0)]
    for v in values:
        back = wire.decode(wire.loads(wire.dumps(wire.encode(v))))
        assert type(back) is type(v)
        if isinstance(v, np.ndarray):
            assert back.dtype == v.dtype and np.array_equal(back, v) and back.flags.writeable
        elif isinstance(v, float) and np.isnan(v):
            assert np.isnan(back)
        else:
            assert back == v
    assert isinstance(wire.decode(wire.encode({1: 2})), wire.Opaque) and type(wire.decode(wire.encode({1: 2}))).__name__ == "dict"
    assert repr(wire.decode(wire.encode(object()))).startswith("<object object")
    for bad in [b'{"nd": "|O", "shape": [1], "b64": ""}', b'NaN', b'[' * 100_000 + b']' * 100_000,
                b'{"f": 1}', b'{"nd": "<f8", "shape": [2], "b64": "AAAA"}', b'{"pickle": "gASVAAAA"}',
                b'{"i": "12a"}']:
        with pytest.raises(wire.WireError):
            wire.decode(wire.loads(bad))
    with pytest.raises(wire.WireError):
        wire.loads(b"1" * 100, limit=10)


def test_exceptions_cross_as_built_in_subclasses_with_a_message():
    class Int32OverflowError(OverflowError):
        pass

    exc = wire.decode_exception(wire.encode_exception(Int32OverflowError("too big")))
    assert isinstance(exc, OverflowError) and type(exc).__name__ == "Int32OverflowError" and str(exc) == "too big"
    exc = wire.decode_exception({"type": "Evil", "base": "SystemError", "text": "x"})
    assert isinstance(exc, SystemError) and isinstance(exc, Exception)
    exc = wire.decode_exception({"type": "KeyboardInterrupt", "base": "KeyboardInterrupt", "text": "x"})
    assert isinstance(exc, Exception) and not isinstance(exc, KeyboardInterrupt)  # cannot stop the grader


def _report_from(task, fn, cases):
    raw = outcomes.collect_outcomes(task, fn, {g: [c.args for c in cs] for g, cs in cases.items()}, 10,
                                    encode=wire.encode_outcome)
    encoded = wire.loads(wire.dumps(raw))
    return events.decode_report(encoded)


def test_grade_report_gives_the_same_points_as_run_check():
    task = tasks()["task_1_2"]
    cases = cases_for(task, "grade", 10)

    def right(x, scale, zero_point, qmin, qmax):
        return np.clip(np.rint(x / scale) + zero_point, qmin, qmax).astype(np.int64)

    def half_up(x, scale, zero_point, qmin, qmax):
        return np.clip(np.floor(x / scale + 0.5) + zero_point, qmin, qmax).astype(np.int64)

    for fn in (right, half_up):
        local = checks.run_check(task, fn, examples=10)
        remote = grade_report(task, _report_from(task, fn, cases), cases, examples=10, time_limit_s=10)
        assert (remote.points, remote.status) == (local.points, local.status)
        assert [g.points for g in remote.groups] == [g.points for g in local.groups]


def test_forged_reports_score_zero():
    task = tasks()["task_1_2"]
    cases = cases_for(task, "grade", 10)
    forged = [
        None, "passed", {"points": 3}, {"first": "ok", "points": 3}, {"first": "ok", "groups": {"fixed": "passed"}},
        {"first": "ok", "groups": {g: [] for g in spec.GROUPS}},
        {"first": "ok", "groups": {g: [Outcome(value=np.zeros(1, np.int64))] * 100 for g in spec.GROUPS}},
        {"first": "ok", "groups": {g: [{"points": 3}] * 100 for g in spec.GROUPS}},
        {"error": "all good", "status": "passed"},
    ]
    for report in forged:
        result = grade_report(task, report, cases, examples=10, time_limit_s=10)
        assert result.points == 0 and result.status != "passed", report
