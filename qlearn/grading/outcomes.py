"""The grader's split: the sandbox calls, the grader judges.

The grader never trusts a verdict computed inside a submission's process. It sends the cases there
(``generated.cases_for``), the sandboxed process only calls the learner's function on them and sends
back what each call returned or raised (``collect_outcomes``, as plain data), and the grader compares
those outcomes with the oracle in its own process (``grade_report``). Same cases, same rules, same
points as ``checks.run_check``; only the failing generated input is shown as drawn, not simplified by
hypothesis.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qlearn.grading.formatting import fmt, fmt_args
from qlearn.grading.judge import Outcome, expected_answer, invoke, judge
from qlearn.grading.precheck import first_call, precheck, stub_message
from qlearn.grading.results import CheckResult, Failure, GroupResult, new_result
from qlearn.grading.spec import DEFAULT_TIME_LIMIT, GROUPS, PROFILES, Case, Task
from qlearn.grading.timeouts import CheckTimeout, time_limit

__all__ = ["collect_outcomes", "grade_report"]


def collect_outcomes(task: Task, fn: Any, cases: dict[str, list[tuple]], time_limit_s: float | None,
                     encode: Callable[[Outcome], Any] = lambda o: o) -> dict:
    """Run in the submission's (sandboxed) process: call ``fn`` on every case, under the same time
    limits as ``run_check``; return {"error": why} or {"first": "ok"/"stub"/"timeout", "groups":
    {group: [encode(outcome), ...] or "timeout"}}. No comparison happens here."""
    problem = precheck(task, fn)
    if problem:
        return {"error": problem}
    first = first_call(task, fn, time_limit_s)
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
        expected = expected_answer(task, case.args)
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
    result = new_result(task, profile, n_gen)
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
        result.message = stub_message(task)
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
