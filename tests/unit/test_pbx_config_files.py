"""The Asterisk config files pbxcal ships: one copy, found without a source checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pbxcal
from pbxcal.testing.asterisk import CONTRIB_DIR

REPO = Path(__file__).resolve().parents[2]
FILES = ("extensions_pbxcal.conf", "manager.d/pbxcal.conf")


def test_contrib_holds_the_package_data_not_a_second_copy() -> None:
    for name in FILES:
        admin = REPO / "contrib" / "asterisk" / name
        shipped = Path(str(CONTRIB_DIR / name))
        assert admin.is_file() and shipped.is_file()
        assert admin.resolve() == shipped.resolve(), f"{admin} must link to {shipped}"


def test_pyproject_ships_the_files_as_package_data() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert '"pbx/asterisk/*.conf"' in text and '"pbx/asterisk/manager.d/*.conf"' in text


def test_sandbox_finds_the_files_without_a_source_checkout(tmp_path: Path) -> None:
    # A copy of the package alone (as an installed wheel has it), no contrib/ beside it.
    shutil.copytree(Path(pbxcal.__file__).parent, tmp_path / "pbxcal",
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "import pbxcal, pbxcal.testing.asterisk as a, pathlib;"
        "assert pathlib.Path(pbxcal.__file__).parent.parent == pathlib.Path.cwd();"
        "s = a.AsteriskSandbox(pathlib.Path('/nonexistent'));"
        "print(len(s.pbxcal_manager_conf()) > 0,"
        " (a.CONTRIB_DIR / 'extensions_pbxcal.conf').read_text().count('[pbxcal-forward]'))"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, check=False, env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "1"]
