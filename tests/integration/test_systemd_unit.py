"""The shipped ``systemd/pbxcal.service`` passes ``systemd-analyze``.

The unit is copied with ``ExecStart``'s ``/opt/pbxcal/.venv/bin/pbxcal`` pointing at
this checkout's venv (``verify`` checks that the executable exists), then:

* ``systemd-analyze verify`` prints nothing and exits 0;
* ``systemd-analyze security --offline=true`` rates the exposure <= 2.0.

Needs the ``systemd-analyze`` binary (Debian: ``apt-get install systemd``); its
absence is an error, not a skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "pbxcal.service"
SHIPPED_EXEC = "/opt/pbxcal/.venv/bin/pbxcal"
MAX_EXPOSURE = 2.0


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze not found: apt-get install systemd", pytrace=False)
    text = UNIT.read_text()
    assert f"ExecStart={SHIPPED_EXEC} " in text, "the unit's ExecStart changed; update this test"
    pbxcal = Path(sys.executable).parent / "pbxcal"
    assert pbxcal.exists(), pbxcal
    copy = tmp_path / "pbxcal.service"
    copy.write_text(text.replace(SHIPPED_EXEC, str(pbxcal)))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_COLORS": "0", "LANG": "C.UTF-8"},
    )


def test_unit_verifies_cleanly(unit: Path) -> None:
    result = analyze("verify", str(unit))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr == "", result.stdout + result.stderr


def test_unit_exposure_score(unit: Path) -> None:
    result = analyze("security", "--offline=true", "--no-pager", str(unit))
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout[-2000:]
    score, verdict = float(match.group(1)), match.group(2)
    print(f"systemd-analyze security: {score} {verdict}")
    assert score <= MAX_EXPOSURE, result.stdout
