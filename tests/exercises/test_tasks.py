"""Every exercise task as a test with its own marker: ``pytest tests/exercises -m task_1_2``.

Runs the grader's checks (fixed, edge and generated cases against qlearn's oracle) on the submitted
function; a failure prints the same verdict the notebook's check cell prints. See conftest.py for how
to point the tests at your own notebook or .py file.
"""
import pytest

from qlearn.grading.checks import run_check
from qlearn.grading.tasks import tasks

PARAMS = [pytest.param(tid, marks=getattr(pytest.mark, tid), id=tid) for tid in tasks()]


@pytest.mark.parametrize("task_id", PARAMS)
def test_task(task_id, task_function):
    result = run_check(task_id, task_function(task_id), profile="grade")
    if not result.passed:
        pytest.fail(f"{result.summary()}\n{result.report()}", pytrace=False)
