"""What a check found: ``CheckResult`` (points, status, the groups of cases) and its verdict text.

``CheckResult.report()`` is what a learner reads, in the notebook and in the grader's feedback file;
``to_dict`` / ``from_dict`` carry it as plain data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from qlearn.grading.spec import PROFILES, Task

__all__ = ["Failure", "GroupResult", "CheckResult", "new_result"]


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
    def from_dict(cls, d: dict) -> CheckResult:
        groups = []
        for g in d.get("groups", []):
            g = dict(g)
            if g.get("failure") is not None:
                g["failure"] = Failure(**g["failure"])
            groups.append(GroupResult(**g))
        return cls(**{**d, "groups": groups})


def new_result(task: Task, profile: str, n_gen: int) -> CheckResult:
    """A failed, pointless ``CheckResult`` for ``task`` checked with ``n_gen`` generated cases under
    ``profile``; the check fills in groups, points and status."""
    return CheckResult(
        task.task_id, task.function, task.title, 0, task.max_points, "failed", profile, lesson=task.lesson,
        notebook_generated=n_gen if profile == "notebook" else PROFILES["notebook"],
        grade_generated=n_gen if profile == "grade" else PROFILES["grade"],
    )
