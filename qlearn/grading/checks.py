"""Checks for the exercise notebooks: compare a learner's function with qlearn's own (the oracle).

An exercise task asks for one function with a fixed name and signature, e.g. task "task_1_2" asks for
``quantize_tensor(x, scale, zero_point, qmin, qmax)``. ``check("task_1_2", quantize_tensor)`` calls it
on three groups of inputs and compares every answer with qlearn's own implementation:

    fixed      a few hand-picked inputs (the examples of the task's docstring),
    edge       the inputs that catch the classic bugs: a zero-width range, ties in rounding,
               INT32_MIN, uint8 wrap-around, clamping at the ends, ...
    generated  inputs drawn by hypothesis from a fixed seed (the same inputs on every run).

A group earns its point only if every case in it matches, so partly correct work earns partial credit.
For the first case of a group that does not match, the verdict shows the input, the expected and the
actual output, why they differ and a hint. Every verdict says how many cases of each kind ran. The
notebook's check runs fewer generated cases than the grader does (profile "notebook" vs "grade"), and
its verdict says so: a pass in the notebook never claims that every test the grader runs has passed.

``run_check`` returns a ``CheckResult`` without printing (the grader and pytest use it); ``check``
prints the verdict. The tasks themselves live in ``qlearn.grading.tasks``.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import inspect
import signal
import threading
import time
import types
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "Case",
    "Task",
    "GroupResult",
    "CheckResult",
    "CheckTimeout",
    "ContractError",
    "PROFILES",
    "tasks",
    "get_task",
    "run_check",
    "check",
    "time_limit",
    "deferred_checks",
]

# Generated (hypothesis) cases per task: the notebook runs a quick sample, the grader a larger one.
PROFILES = {"notebook": 25, "grade": 60}
DEFAULT_TIME_LIMIT = 60.0  # seconds per group of cases; an infinite loop fails instead of hanging


class ContractError(Exception):
    """Raised by a task's ``call`` when the learner's answer breaks the contract in a way a value
    comparison cannot describe (e.g. an STE output cut from the autograd graph); the message says how."""


class CheckTimeout(BaseException):
    """Raised inside a learner's code when a time limit runs out.

    A ``BaseException`` (like ``KeyboardInterrupt``), so ``except Exception`` in the learner's code
    does not swallow it.
    """


# ------------------------------------------------------------------------------------ data types
@dataclass(frozen=True)
class Case:
    """One input: ``args`` are the positional arguments, in the order of ``Task.params``."""

    label: str
    args: tuple
    hint: str = ""


def call_positional(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(*args)


@dataclass(frozen=True)
class Task:
    """One exercise task: the function a learner writes, its oracle and its cases.

    oracle   : a function with the learner's signature, built from qlearn's implementation.
    compare  : (expected, actual, args) -> None when they agree, else a sentence saying why not.
    strategy : () -> a hypothesis strategy of argument tuples (built lazily: hypothesis is imported
               only when a check runs).
    call     : how to call a function on the arguments (default: fn(*args)); the STE tasks use it
               to run the backward pass too.
    forbidden: dotted names of qlearn functions the learner must not call (the oracle itself):
               calling them would make the check compare qlearn with qlearn.
    """

    task_id: str
    function: str
    params: tuple[str, ...]
    title: str
    exercise: str
    lesson: str
    oracle: Callable[..., Any]
    compare: Callable[[Any, Any, tuple], str | None]
    fixed: tuple[Case, ...]
    edge: tuple[Case, ...]
    strategy: Callable[[], Any]
    hint: str
    call: Callable[[Callable[..., Any], tuple], Any] = call_positional
    forbidden: tuple[str, ...] = ()
    points: tuple[int, int, int] = (1, 1, 1)  # fixed, edge, generated

    @property
    def max_points(self) -> int:
        return sum(self.points)

    @property
    def number(self) -> str:
        """'task_3_2' -> '3.2' (how the notebooks name it)."""
        return self.task_id.removeprefix("task_").replace("_", ".")


@dataclass
class Failure:
    """The first case of a group that did not match, formatted for a learner."""

    label: str
    inputs: str
    expected: str
    actual: str
    why: str
    hint: str = ""


@dataclass
class GroupResult:
    name: str  # "fixed", "edge" or "generated"
    points: int
    max_points: int
    ran: int  # cases run (generated: inputs hypothesis tried before the first failure)
    total: int  # cases in the group (generated: the number asked for)
    passed: bool
    failure: Failure | None = None
    note: str = ""  # e.g. "not run: an earlier group timed out"


@dataclass
class CheckResult:
    """What one check found. ``report()`` is the verdict text."""

    task_id: str
    function: str
    title: str
    points: int
    max_points: int
    status: str  # "passed", "partial", "failed", "not implemented", "not found", "error"
    profile: str
    groups: list[GroupResult] = field(default_factory=list)
    message: str = ""  # for the statuses without groups: what went wrong
    lesson: str = ""  # where to revisit the idea
    notebook_generated: int = PROFILES["notebook"]
    grade_generated: int = PROFILES["grade"]

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    # --------------------------------------------------------------------------------- report
    def _counts(self) -> str:
        parts = []
        for g in self.groups:
            kind = f"{g.name} case{'s' if g.ran != 1 else ''}"
            parts.append(f"{g.ran} {kind}")
        text = ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else "".join(parts)
        return text.replace("generated cases", "generated cases (hypothesis, fixed seed)")

    def summary(self) -> str:
        return f"{self.task_id} {self.function}: {self.points}/{self.max_points} points ({self.status})"

    def report(self) -> str:
        head = f"{self.task_id} {self.function}: {self.points}/{self.max_points} points"
        if self.status == "passed":
            lines = [f"PASSED {head}. It matched qlearn on {self._counts()}."]
            if self.profile == "notebook":
                lines.append(
                    f"The grader runs the same cases with {self.grade_generated} generated ones instead of "
                    f"{self.notebook_generated}: keep your code general, not tuned to these inputs."
                )
            return "\n".join(lines)
        if not self.groups:
            return f"NOT PASSED {head}: {self.message}"
        lines = [f"NOT PASSED {head} ({self.status})."]
        if self.message:
            lines.append(self.message)
        for g in self.groups:
            name = f"{g.name} cases"
            if g.note:
                lines.append(f"  {name:<16} {g.note}")
            elif g.passed:
                lines.append(f"  {name:<16} {g.ran}/{g.total} matched  (+{g.points})")
            else:
                f = g.failure
                where = f"case {g.ran}" if g.name == "generated" else f"case {g.ran} of {g.total}"
                lines.append(f"  {name:<16} FAILED at {where}: {f.label}")
                lines.append(f"      input     {f.inputs}")
                lines.append(f"      expected  {f.expected}")
                lines.append(f"      got       {f.actual}")
                lines.append(f"      why       {f.why}")
                if f.hint:
                    lines.append(f"      hint      {f.hint}")
        if self.lesson:
            lines.append(f"  revisit          {self.lesson}")
        if self.profile == "notebook":
            lines.append(f"(The grader runs {self.grade_generated} generated cases instead of {self.notebook_generated}.)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<CheckResult {self.summary()}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython: one short line under the verdict
        p.text(f"<{self.summary()}>")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CheckResult":
        groups = []
        for g in d.get("groups", []):
            g = dict(g)
            if g.get("failure") is not None:
                g["failure"] = Failure(**g["failure"])
            groups.append(GroupResult(**g))
        return cls(**{**d, "groups": groups})


# ------------------------------------------------------------------------------------ registry
def tasks() -> dict[str, Task]:
    """Every task, by id ("task_1_1", ...), in the order the exercises present them."""
    from qlearn.grading.tasks import TASKS  # local: importing checks stays light (no hypothesis, no torch)

    return TASKS


def get_task(task_id: Any) -> Task:
    if isinstance(task_id, Task):
        return task_id
    if not isinstance(task_id, str):
        raise TypeError(f"task_id must be a string such as 'task_1_2', got {task_id!r}")
    registry = tasks()
    if task_id not in registry:
        close = difflib.get_close_matches(task_id, list(registry), n=3)
        also = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"there is no task {task_id!r}.{also} Tasks: {', '.join(registry)}")
    return registry[task_id]


# ------------------------------------------------------------------------------------ time limit
# Called (without arguments) whenever a time limit fires; the grader's runner sets it to record the
# moment, so that code which swallows the CheckTimeout is killed soon after instead of at the end.
on_timeout: Callable[[], None] | None = None


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``CheckTimeout`` in the running code after ``seconds`` (main thread of a POSIX process).

    Uses SIGALRM, which interrupts Python loops (``while True: pass``) but not a long C call, nor code
    that catches BaseException and carries on; the grader's kill of the whole process covers those.
    Elsewhere (another thread, Windows) this is a no-op.
    """
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def _alarm(signum: int, frame: Any) -> None:
        if on_timeout is not None:
            on_timeout()
        raise CheckTimeout(f"ran longer than {seconds:g} s")

    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _alarm)
    outer_left, _ = signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:  # an enclosing time_limit is running: re-arm what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-3))


# ------------------------------------------------------------------------------------ formatting
def fmt(value: Any, limit: int = 400) -> str:
    """A short, exact repr: shortest round-trip floats, long arrays summarised."""
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):  # no torch import needed
        return "tensor " + fmt(value.detach().cpu().numpy(), limit)
    if isinstance(value, tuple):
        text = "(" + ", ".join(fmt(v, limit) for v in value) + ("," if len(value) == 1 else "") + ")"
    elif isinstance(value, np.ndarray):
        dtype = "" if value.dtype in (np.float64, np.int64) else f", dtype={value.dtype}"
        if value.size <= 24:  # exact: every element with its shortest round-trip repr
            text = f"array({value.tolist()!r}{dtype})"
        else:
            with np.printoptions(threshold=24, edgeitems=3, floatmode="unique", linewidth=10**6):
                text = " ".join(repr(value).split())
    elif isinstance(value, (float, np.floating)):
        text = repr(float(value))
    elif isinstance(value, np.integer):
        text = f"{int(value)} ({type(value).__name__})"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


def fmt_args(task: Task, args: tuple) -> str:
    return ", ".join(f"{name}={fmt(v, 200)}" for name, v in zip(task.params, args))


# ------------------------------------------------------------------------------------ running one case
class _Raised:
    """The outcome 'this call raised': the oracle's answer for inputs the contract refuses."""

    def __init__(self, exc: BaseException) -> None:
        # the contract names a built-in type: qlearn's Int32OverflowError counts as OverflowError
        self.type = next(c for c in type(exc).__mro__ if c.__module__ == "builtins")
        self.text = str(exc)

    def __repr__(self) -> str:
        text = self.text if len(self.text) <= 120 else self.text[:117] + "..."
        return f"raises {self.type.__name__} (qlearn says: {text})"


class _Mismatch(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.why)
        self.failure = failure


def _expected(task: Task, args: tuple) -> Any:
    try:
        return task.call(task.oracle, copy.deepcopy(args))
    except (ValueError, TypeError, OverflowError, ZeroDivisionError) as exc:
        return _Raised(exc)


def _inputs_changed(before: tuple, after: tuple, params: Sequence[str]) -> str | None:
    for name, a, b in zip(params, before, after):
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                return name
    return None


def _run_case(task: Task, fn: Callable[..., Any], case: Case) -> Failure | None:
    """None if ``fn`` agrees with the oracle on ``case``; else what went wrong."""
    expected = _expected(task, case.args)
    given = copy.deepcopy(case.args)
    hint = case.hint or task.hint

    def failure(actual: str, why: str, h: str = hint) -> Failure:
        return Failure(case.label, fmt_args(task, case.args), fmt(expected), actual, why, h)

    try:
        actual = task.call(fn, given)
    except (CheckTimeout, KeyboardInterrupt):
        raise
    except ContractError as exc:
        return failure("(see why)", str(exc))
    except SystemExit as exc:
        return failure(f"SystemExit({exc.code!r})", "the function called sys.exit() / exit(); it should return its answer")
    except Exception as exc:  # the learner's bug: report it as a failed case
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(expected, _Raised) and isinstance(exc, expected.type):
            return None
        if isinstance(expected, _Raised):
            return failure(f"raised {text}", f"the contract asks for {expected.type.__name__} here, not {type(exc).__name__}")
        return failure(f"raised {text}", f"the function raised {type(exc).__name__} on a valid input: {exc}")
    changed = _inputs_changed(case.args, given, task.params)
    if isinstance(expected, _Raised):
        return failure(fmt(actual), f"this input is invalid: the contract asks you to raise {expected.type.__name__}")
    why = task.compare(expected, actual, case.args)
    if why is None and changed is not None:
        why = f"the answer is right, but the function modified its input {changed!r} in place; work on a copy"
    if why is None:
        return None
    return failure(fmt(actual), why)


def _run_fixed(task: Task, fn: Callable[..., Any], name: str, cases: tuple[Case, ...], points: int) -> GroupResult:
    for i, case in enumerate(cases, start=1):
        f = _run_case(task, fn, case)
        if f is not None:
            return GroupResult(name, 0, points, i, len(cases), False, f)
    return GroupResult(name, points, points, len(cases), len(cases), True)


def _run_generated(task: Task, fn: Callable[..., Any], examples: int, profile: str, points: int) -> GroupResult:
    from hypothesis import HealthCheck, Phase, given, reporting, seed, settings

    state = {"ran": 0, "failing": False}

    @seed(zlib.crc32(f"{task.task_id}:{profile}".encode()))
    @settings(
        max_examples=examples, database=None, deadline=None, derandomize=False,
        suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink),
        print_blob=False, report_multiple_bugs=False,
    )
    @given(task.strategy())
    def run(args: tuple) -> None:
        if not state["failing"]:
            state["ran"] += 1
        f = _run_case(task, fn, Case("a generated input (hypothesis simplified it)", tuple(args)))
        if f is not None:
            state["failing"] = True
            raise _Mismatch(f)

    try:
        with reporting.with_reporter(lambda *a, **k: None):
            run()
    except _Mismatch as m:
        return GroupResult("generated", 0, points, state["ran"], examples, False, m.failure)
    return GroupResult("generated", points, points, state["ran"], examples, True)


# ------------------------------------------------------------------------------------ "did you call the oracle?"
def _resolve(dotted: str) -> Any:
    import importlib

    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # pragma: no cover - a forbidden name that does not exist
        return None


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _referenced(fn: Any) -> dict[str, Any]:
    """name -> object for the globals and closure variables that ``fn``'s code refers to."""
    code = fn.__code__
    names = _code_names(code)
    glb = getattr(fn, "__globals__", {}) or {}
    found = {n: glb[n] for n in names if n in glb}
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        with contextlib.suppress(ValueError):  # an empty cell
            found[name] = cell.cell_contents
    return found


def uses_reference(fn: Callable[..., Any], forbidden: Sequence[str], _depth: int = 0) -> str | None:
    """The dotted name of a forbidden qlearn function that ``fn`` calls (directly, through a
    ``qlearn`` module attribute, or through a helper defined in the notebook), else None."""
    if getattr(fn, "__code__", None) is None or not forbidden or _depth > 3:
        return None
    targets = {id(obj): name for name in forbidden if (obj := _resolve(name)) is not None}
    attrs = _code_names(fn.__code__)
    for obj in _referenced(fn).values():
        if id(obj) in targets:
            return targets[id(obj)]
        if isinstance(obj, types.ModuleType) and obj.__name__.startswith("qlearn"):
            for sub in [obj] + [getattr(obj, a, None) for a in attrs]:  # qlearn.quantize.quantize(...)
                for a in attrs:
                    if id(getattr(sub, a, None)) in targets:
                        return targets[id(getattr(sub, a))]
        if isinstance(obj, types.FunctionType) and obj is not fn and not (obj.__module__ or "").startswith("qlearn"):
            found = uses_reference(obj, forbidden, _depth + 1)
            if found:
                return found
    return None


# ------------------------------------------------------------------------------------ the check
def _signature_problem(task: Task, fn: Callable[..., Any]) -> str | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*task.params)
    except TypeError:
        return (
            f"{task.function}{sig} cannot be called as {task.function}({', '.join(task.params)}): "
            "keep the parameters of the stub (names, order and number)"
        )
    return None


def _first_call(task: Task, fn: Callable[..., Any], seconds: float | None) -> str:
    """Call ``fn`` on the first fixed case: "stub" if it raises NotImplementedError (the untouched
    stub), "timeout" if it runs out of time, else "ok" (its answer is judged case by case later)."""
    try:
        with time_limit(seconds):
            task.call(fn, copy.deepcopy(task.fixed[0].args))
    except NotImplementedError:
        return "stub"
    except CheckTimeout:
        return "timeout"
    except KeyboardInterrupt:
        raise
    except BaseException:  # anything else is graded case by case below
        return "ok"
    return "ok"


def run_check(
    task_id: str | Task,
    fn: Any,
    *,
    profile: str = "grade",
    examples: int | None = None,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT,
) -> CheckResult:
    """Check ``fn`` against the oracle of task ``task_id``; return a ``CheckResult`` (prints nothing).

    profile  : "notebook" (quick: fewer generated cases) or "grade" (what the grader runs).
    examples : override the number of generated cases.
    time_limit_s : seconds allowed per group of cases (None: no limit).
    """
    task = get_task(task_id)
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {tuple(PROFILES)}, got {profile!r}")
    n_gen = PROFILES[profile] if examples is None else examples
    if isinstance(n_gen, bool) or not isinstance(n_gen, int) or n_gen < 1:
        raise ValueError(f"examples must be a positive integer, got {examples!r}")
    result = CheckResult(
        task.task_id, task.function, task.title, 0, task.max_points, "failed", profile, lesson=task.lesson,
        notebook_generated=n_gen if profile == "notebook" else PROFILES["notebook"],
        grade_generated=n_gen if profile == "grade" else PROFILES["grade"],
    )
    if not callable(fn):
        result.status, result.message = "error", (
            f"check needs your function {task.function} itself, got {type(fn).__name__} {fmt(fn, 80)}"
        )
        return result
    module = getattr(fn, "__module__", None) or ""
    if module.startswith("qlearn"):
        result.status, result.message = "error", (
            f"{task.function} here is qlearn's own {module}.{getattr(fn, '__name__', '?')}, not yours: "
            f"define your own `def {task.function}(...)` in the notebook"
        )
        return result
    problem = _signature_problem(task, fn)
    if problem:
        result.status, result.message = "error", problem
        return result
    try:
        ref = uses_reference(fn, task.forbidden)
    except Exception:  # an exotic function object: never let the detector break the check
        ref = None
    if ref:
        result.status, result.message = "error", (
            f"{task.function} calls {ref}, the reference implementation the check compares with; "
            "write the computation yourself (numpy is fine)"
        )
        return result

    first = _first_call(task, fn, time_limit_s)
    if first == "stub":
        result.status = "not implemented"
        result.message = (
            f"{task.function} still raises NotImplementedError: replace the `raise NotImplementedError` "
            "line of the stub with your code, run that cell, then this one."
        )
        return result

    plan = [
        ("fixed", lambda pts: _run_fixed(task, fn, "fixed", task.fixed, pts)),
        ("edge", lambda pts: _run_fixed(task, fn, "edge", task.edge, pts)),
        ("generated", lambda pts: _run_generated(task, fn, n_gen, profile, pts)),
    ]
    timed_out = first == "timeout"
    if timed_out:
        result.groups.append(GroupResult(
            "fixed", 0, task.points[0], 0, len(task.fixed), False,
            note=f"TIMED OUT: the first fixed case took longer than {time_limit_s:g} s (an infinite loop?)",
        ))
        plan = plan[1:]
    for (name, run), pts in zip(plan, task.points[len(result.groups):]):
        if timed_out:
            result.groups.append(GroupResult(name, 0, pts, 0, 0, False, note="not run: an earlier group timed out"))
            continue
        try:
            with time_limit(time_limit_s):
                group = run(pts)
        except CheckTimeout:
            timed_out = True
            group = GroupResult(
                name, 0, pts, 0, 0, False,
                note=f"TIMED OUT: the {name} cases took longer than {time_limit_s:g} s (an infinite loop?)",
            )
        result.groups.append(group)
    result.points = sum(g.points for g in result.groups)
    result.status = "passed" if result.points == result.max_points else ("partial" if result.points else "failed")
    return result


# Set by the grader and the pytest loader while they execute a notebook's cells: the notebook's own
# check() calls then only say that the checks run afterwards (no double work).
_DEFERRED = False


@contextlib.contextmanager
def deferred_checks() -> Iterator[None]:
    global _DEFERRED
    previous, _DEFERRED = _DEFERRED, True
    try:
        yield
    finally:
        _DEFERRED = previous


def check(task_id: str, fn: Any, *, examples: int | None = None, time_limit_s: float | None = DEFAULT_TIME_LIMIT) -> None:
    """Check your function for a task and print the verdict, e.g. ``check("task_1_2", quantize_tensor)``.

    Runs the task's fixed cases, its edge cases and ``examples`` generated ones (hypothesis, fixed
    seed; 25 by default) against qlearn's own implementation, and prints PASSED, or the first failing
    case of each group with the input, the expected and the actual output and a hint. Returns None
    (so a notebook shows the verdict once); ``run_check`` returns the result as an object.
    """
    if _DEFERRED:
        print(f"({task_id}: checked by the grader after the notebook has run)")
        return None
    result = run_check(task_id, fn, profile="notebook", examples=examples, time_limit_s=time_limit_s)
    print(result.report())
    return None


def close_matches(name: str, candidates: Sequence[str]) -> list[str]:
    """Names a learner may have renamed ``name`` to (for 'function not found' messages)."""
    return difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
