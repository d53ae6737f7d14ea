"""The exercise tasks, one module per exercise notebook (``ex1`` .. ``ex13``); ``_common`` holds what they share.

Each module ``exN.py`` defines ``EXERCISE`` (``spec.Exercise``: its id, notebook, title and lesson),
``TASKS`` (its ``spec.Task`` entries: the function a learner writes, qlearn's oracle, the fixed, edge
and generated cases) and ``BUGS`` (task id -> its classic mistakes as known-wrong functions,
``spec.Bug``). This package imports nothing: the registry ``qlearn.grading.tasks`` finds every
``ex<number>`` module here and assembles ``TASKS``, ``BUGS``, ``EXERCISES`` and ``LESSONS``.
"""
