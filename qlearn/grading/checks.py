"""Checks for the exercise notebooks: compare a learner's function with qlearn's own (the oracle).

An exercise task asks for one function with a fixed name and signature, e.g. task "task_1_2" asks for
``quantize_tensor(x, scale, zero_point, qmin, qmax)``. ``check("task_1_2", quantize_tensor)`` calls it
on three groups of inputs and compares every answer with qlearn's own implementation:

    fixed      a few hand-picked, ordinary inputs (``Task.fixed``; not always the docstring's examples),
    edge       the inputs that catch the classic bugs: a zero-width range, ties in rounding,
               INT32_MIN, uint8 wrap-around, clamping at the ends, ...
    generated  inputs drawn by hypothesis from a fixed seed (the same inputs on every run), leaning
               toward the task's traps (exact ties, ends of the grid, negative values).

A group earns its point only if every case in it matches, so partly correct work earns partial credit.
For the first case of a group that does not match, the verdict shows the input, the expected and the
actual output, why they differ and a hint. The hint diagnoses when it can: the task's classic mistakes
(``Task.bugs``, known-wrong functions) run on the failing case, and if the learner's answer is exactly
one of theirs, the hint names that mistake (``diagnose``); otherwise it is the case's own hint. Every
verdict says how many cases of each kind ran. The notebook's check runs fewer generated cases than the grader does (profile "notebook" vs "grade"), and
its verdict says so: a pass in the notebook never claims that every test the grader runs has passed.

``run_check`` returns a ``CheckResult`` without printing (the grader and pytest use it); ``check``
prints the verdict. The tasks themselves live in ``qlearn.grading.tasks`` (assembled from one module per
exercise in ``qlearn.grading.exercises``).
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
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "Bug",
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
    "Outcome",
    "invoke",
    "judge",
    "diagnose",
    "precheck",
    "cases_for",
    "collect_outcomes",
    "grade_report",
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


@dataclass(frozen=True)
class Bug:
    """A classic mistake for a task, as a known-wrong function with the task's signature.

    When a learner's answer differs from the oracle on a case, the check runs each of the task's bugs
    on that case; if the learner's answer equals a bug's answer (and the bug's answer is wrong there),
    the hint names that mistake instead of the case's generic hint.
    """

    name: str  # e.g. "round half up: np.floor(v + 0.5)"
    fn: Callable[..., Any]
    hint: str  # what to do instead


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
    bugs     : the task's classic mistakes (``Bug``), used to name the mistake behind a wrong answer.
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
    bugs: tuple[Bug, ...] = ()  # classic mistakes, tried in this order to diagnose a wrong answer

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


@dataclass
class Outcome:
    """What one call of a learner's function did: it returned ``value`` or raised ``error``;
    ``changed`` names an input array it modified in place (None: it left its inputs alone)."""

    value: Any = None
    error: BaseException | None = None
    changed: str | None = None


def invoke(task: Task, fn: Callable[..., Any], args: tuple) -> Outcome:
    """Call ``fn`` on a copy of ``args`` (through ``task.call``). Learner errors become an Outcome;
    a time limit (``CheckTimeout``) and KeyboardInterrupt propagate."""
    given = copy.deepcopy(args)
    try:
        value = task.call(fn, given)
    except (CheckTimeout, KeyboardInterrupt):
        raise
    except (ContractError, SystemExit, Exception) as exc:
        return Outcome(error=exc)
    return Outcome(value=value, changed=_inputs_changed(args, given, task.params))


def judge(task: Task, case: Case, expected: Any, outcome: Outcome) -> Failure | None:
    """None if ``outcome`` agrees with the oracle's ``expected`` answer on ``case``; else the failure.

    This is the whole verdict on one case; the grader runs it in its own process on outcomes that
    came back from the sandboxed submission as plain data (see ``grade_report``)."""
    hint = case.hint or task.hint

    def failure(actual: str, why: str, h: str = hint) -> Failure:
        return Failure(case.label, fmt_args(task, case.args), fmt(expected), actual, why, h)

    exc = outcome.error
    if isinstance(exc, ContractError):
        return failure("(see why)", str(exc))
    if isinstance(exc, SystemExit):
        return failure(f"SystemExit({exc.code!r})", "the function called sys.exit() / exit(); it should return its answer")
    if exc is not None:  # the learner's bug: report it as a failed case
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(expected, _Raised) and isinstance(exc, expected.type):
            return None
        if isinstance(expected, _Raised):
            return failure(f"raised {text}", f"the contract asks for {expected.type.__name__} here, not {type(exc).__name__}")
        return failure(f"raised {text}", f"the function raised {type(exc).__name__} on a valid input: {exc}")
    actual = outcome.value
    if isinstance(expected, _Raised):
        return failure(fmt(actual), f"this input is invalid: the contract asks you to raise {expected.type.__name__}")
    why = task.compare(expected, actual, case.args)
    if why is None and outcome.changed is not None:
        why = f"the answer is right, but the function modified its input {outcome.changed!r} in place; work on a copy"
    if why is None:
        return None
    return failure(fmt(actual), why, diagnose(task, case, expected, actual) or hint)


def diagnose(task: Task, case: Case, expected: Any, actual: Any) -> str | None:
    """The hint of the first classic mistake (``task.bugs``) whose answer on ``case`` is wrong and
    equals the learner's ``actual`` answer; None when no registered mistake explains it.

    Runs only trusted code (the task's own bug functions) on the case's inputs: the grader calls it
    in its own process on answers that came back from the sandbox as plain data."""
    for bug in task.bugs:
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wrong = task.call(bug.fn, copy.deepcopy(case.args))
                if task.compare(expected, wrong, case.args) is None:
                    continue  # this mistake does not show on this case
                if task.compare(wrong, actual, case.args) is not None:
                    continue  # the learner's answer is not this mistake's answer
        except Exception:  # a bug variant that cannot run on these inputs explains nothing
            continue
        return f"your answer is exactly what a classic mistake gives ({bug.name}): {bug.hint}"
    return None


def _run_case(task: Task, fn: Callable[..., Any], case: Case) -> Failure | None:
    """None if ``fn`` agrees with the oracle on ``case``; else what went wrong."""
    expected = _expected(task, case.args)
    return judge(task, case, expected, invoke(task, fn, case.args))


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
def _stub_message(task: Task) -> str:
    return (f"{task.function} still raises NotImplementedError: replace the `raise NotImplementedError` "
            "line of the stub with your code, run that cell, then this one.")


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


def precheck(task: Task, fn: Any) -> str | None:
    """Why ``fn`` cannot be checked for ``task`` at all (not a function, qlearn's own, a wrong
    signature, a call of the oracle), else None. Every such case scores 0."""
    if not callable(fn):
        return f"check needs your function {task.function} itself, got {type(fn).__name__} {fmt(fn, 80)}"
    module = getattr(fn, "__module__", None) or ""
    if isinstance(module, str) and module.startswith("qlearn"):
        return (
            f"{task.function} here is qlearn's own {module}.{getattr(fn, '__name__', '?')}, not yours: "
            f"define your own `def {task.function}(...)` in the notebook"
        )
    problem = _signature_problem(task, fn)
    if problem:
        return problem
    try:
        ref = uses_reference(fn, task.forbidden)
    except Exception:  # an exotic function object: never let the detector break the check
        ref = None
    if ref:
        return (
            f"{task.function} calls {ref}, the reference implementation the check compares with; "
            "write the computation yourself (numpy is fine)"
        )
    return None


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
    problem = precheck(task, fn)
    if problem:
        result.status, result.message = "error", problem
        return result

    first = _first_call(task, fn, time_limit_s)
    if first == "stub":
        result.status = "not implemented"
        result.message = _stub_message(task)
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


# ------------------------------------------------------------------------------------ the grader's split
# The grader never trusts a verdict computed inside a submission's process. It sends the cases there
# (``cases_for``), the sandboxed process only calls the learner's function on them and sends back what
# each call returned or raised (``collect_outcomes``, as plain data), and the grader compares those
# outcomes with the oracle in its own process (``grade_report``). Same cases, same rules, same points
# as ``run_check``; only the failing generated input is shown as drawn, not simplified by hypothesis.
GROUPS = ("fixed", "edge", "generated")
_GENERATED: dict[tuple[str, str, int], tuple[tuple, ...]] = {}
_GENERATED_LOCK = threading.Lock()


def generated_cases(task: Task, profile: str, examples: int) -> tuple[tuple, ...]:
    """The argument tuples ``run_check`` feeds a function that passes (same seed, same settings):
    drawn once per (task, profile, examples) and cached."""
    key = (task.task_id, profile, examples)
    with _GENERATED_LOCK:  # hypothesis is not meant to run in several threads at once
        if key not in _GENERATED:
            from hypothesis import HealthCheck, Phase, given, reporting, seed, settings

            found: list[tuple] = []

            @seed(zlib.crc32(f"{task.task_id}:{profile}".encode()))
            @settings(
                max_examples=examples, database=None, deadline=None, derandomize=False,
                suppress_health_check=list(HealthCheck), phases=(Phase.generate,),
                print_blob=False, report_multiple_bugs=False,
            )
            @given(task.strategy())
            def collect(args: tuple) -> None:
                found.append(copy.deepcopy(tuple(args)))

            with reporting.with_reporter(lambda *a, **k: None):
                collect()
            _GENERATED[key] = tuple(found)
        return _GENERATED[key]


def cases_for(task: Task, profile: str = "grade", examples: int | None = None) -> dict[str, list[Case]]:
    """The three groups of cases of ``task`` as the grader runs them."""
    n_gen = PROFILES[profile] if examples is None else examples
    gen = generated_cases(task, profile, n_gen)
    return {
        "fixed": list(task.fixed),
        "edge": list(task.edge),
        "generated": [Case(f"generated input {k} (hypothesis, fixed seed)", args) for k, args in enumerate(gen, 1)],
    }


def collect_outcomes(task: Task, fn: Any, cases: dict[str, list[tuple]], time_limit_s: float | None,
                     encode: Callable[[Outcome], Any] = lambda o: o) -> dict:
    """Run in the submission's (sandboxed) process: call ``fn`` on every case, under the same time
    limits as ``run_check``; return {"error": why} or {"first": "ok"/"stub"/"timeout", "groups":
    {group: [encode(outcome), ...] or "timeout"}}. No comparison happens here."""
    problem = precheck(task, fn)
    if problem:
        return {"error": problem}
    first = _first_call(task, fn, time_limit_s)
    out: dict[str, Any] = {"first": first, "groups": {}}
    if first != "ok":
        return out
    for name in GROUPS:
        try:
            with time_limit(time_limit_s):
                out["groups"][name] = [encode(invoke(task, fn, args)) for args in cases.get(name, [])]
        except CheckTimeout:
            out["groups"][name] = "timeout"
            break
    return out


def _judge_group(task: Task, name: str, cases: list[Case], outcomes: Any, points: int, total: int) -> GroupResult:
    outcomes = outcomes if isinstance(outcomes, list) else []
    for i, case in enumerate(cases, start=1):
        outcome = outcomes[i - 1] if i <= len(outcomes) else None
        expected = _expected(task, case.args)
        if not isinstance(outcome, Outcome):
            f = Failure(case.label, fmt_args(task, case.args), fmt(expected), "(nothing)",
                        "no answer for this case came back from the notebook's process", case.hint or task.hint)
        else:
            f = judge(task, case, expected, outcome)
        if f is not None:
            return GroupResult(name, 0, points, i, total, False, f)
    return GroupResult(name, points, points, len(cases), total, True)


def grade_report(task: Task, report: Any, cases: dict[str, list[Case]], *, profile: str = "grade",
                 examples: int | None = None, time_limit_s: float | None = DEFAULT_TIME_LIMIT) -> CheckResult:
    """The verdict on ``report`` (what ``collect_outcomes`` sent back, decoded), computed here.

    Every point comes from ``judge`` comparing an outcome with the oracle's answer in this process;
    the report can only say that the function was missing, timed out or raised, which scores 0."""
    n_gen = PROFILES[profile] if examples is None else examples
    result = CheckResult(
        task.task_id, task.function, task.title, 0, task.max_points, "failed", profile, lesson=task.lesson,
        notebook_generated=n_gen if profile == "notebook" else PROFILES["notebook"],
        grade_generated=n_gen if profile == "grade" else PROFILES["grade"],
    )
    if not isinstance(report, dict):
        report = {"error": "the check could not run (no report came back)"}
    if "error" in report:
        status = report.get("status")
        result.status = status if status in ("error", "not found") else "error"
        result.message = str(report["error"])[:2000]
        return result
    first = report.get("first")
    if first == "stub":
        result.status = "not implemented"
        result.message = _stub_message(task)
        return result
    groups = report.get("groups")
    groups = groups if isinstance(groups, dict) else {}
    timed_out = False
    for name, pts in zip(GROUPS, task.points):
        if name == "fixed" and first != "ok":
            timed_out = True
            why = (f"TIMED OUT: the first fixed case took longer than {time_limit_s:g} s (an infinite loop?)"
                   if first == "timeout" else "not run: the check could not start")
            group = GroupResult("fixed", 0, pts, 0, len(cases["fixed"]), False, note=why)
        elif timed_out:
            group = GroupResult(name, 0, pts, 0, 0, False, note="not run: an earlier group timed out")
        elif groups.get(name) == "timeout":
            timed_out = True
            group = GroupResult(name, 0, pts, 0, 0, False,
                                note=f"TIMED OUT: the {name} cases took longer than {time_limit_s:g} s (an infinite loop?)")
        else:
            total = n_gen if name == "generated" else len(cases[name])
            group = _judge_group(task, name, cases[name], groups.get(name), pts, total)
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
