"""The README's `pbxcal plan` and `pbxcal slots` examples print exactly what it says.

Each example in the README is a ``$ .venv/bin/pbxcal ...`` line followed by its
indented output; this runs the real console script with those arguments and compares.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PBXCAL = Path(sys.executable).parent / "pbxcal"


def readme_examples() -> list[tuple[list[str], str]]:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    examples = []
    for index, line in enumerate(lines):
        if line.strip().startswith("$ .venv/bin/pbxcal "):
            indent = len(line) - len(line.lstrip())
            output = []
            for following in lines[index + 1 :]:
                if not following.strip():
                    break
                output.append(following[indent:])
            argv = shlex.split(line.strip()[2:])[1:]
            examples.append((argv, "\n".join(output) + "\n"))
    return examples


def test_readme_has_plan_and_slots_examples() -> None:
    commands = [argv[0] for argv, _ in readme_examples()]
    assert commands.count("plan") >= 1
    assert commands.count("slots") >= 1


@pytest.mark.parametrize(("argv", "expected"), readme_examples(), ids=lambda v: str(v)[:20])
def test_readme_example_output(argv: list[str], expected: str) -> None:
    result = subprocess.run(
        [str(PBXCAL), *argv], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
