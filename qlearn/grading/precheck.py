"""Before any case runs: can this function be checked at all, and is it still the stub?

``precheck`` refuses what cannot earn points (not a function, qlearn's own function, a wrong
signature, a call of the oracle: ``uses_reference``); ``first_call`` tells the untouched stub
(``NotImplementedError``) and an infinite loop on the first fixed case from real work. Shared by the
notebook's check and by the grader's sandboxed runner, which must decide these the same way.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import types
from collections.abc import Callable, Sequence
from typing import Any

from qlearn.grading.formatting import fmt
from qlearn.grading.spec import Task
from qlearn.grading.timeouts import CheckTimeout, time_limit

__all__ = ["precheck", "first_call", "stub_message", "uses_reference", "resolve"]


# ------------------------------------------------------------------------------------ "did you call the oracle?"
def resolve(dotted: str) -> Any:
    """The object a dotted name such as "qlearn.quantize.quantize" names (None if there is none)."""
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
    targets = {id(obj): name for name in forbidden if (obj := resolve(name)) is not None}
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


# ------------------------------------------------------------------------------------ can it be checked?
def stub_message(task: Task) -> str:
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


def first_call(task: Task, fn: Callable[..., Any], seconds: float | None) -> str:
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
