"""``python -m qlearn COMMAND``: the suite's command line.

Each command lives in the module that owns the idea and exposes ``main(argv) -> int``:
``pipeline`` (qlearn.pipeline.cli), ``figures`` (qlearn.figures), ``grade`` (qlearn.grading),
``lecture`` (qlearn.lecture), ``ship-models`` (qlearn.ship), ``imagenet-ptq`` (qlearn.imagenet_ptq).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "pipeline": ("qlearn.pipeline.cli", "float -> PTQ -> QAT -> integer MobileNet pipeline"),
    "figures": ("qlearn.figures", "regenerate every figure in figures/"),
    "grade": ("qlearn.grading", "grade a folder of exercise submissions"),
    "lecture": ("qlearn.lecture", "serve a lesson notebook as a code-free page"),
    "ship-models": ("qlearn.ship", "retrain the models shipped for the lessons (qlearn/shipped/)"),
    "imagenet-ptq": ("qlearn.imagenet_ptq", "EfficientNet-Lite0 PTQ on real photos, offline: variants, CLE, integer engine"),
}


def usage() -> str:
    lines = ["usage: python -m qlearn COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
