"""``pbxcal apply`` and ``pbxcal pbx-status`` over the Pbx port (a FakePbx in process).

A refused extension is one printable line on stderr and exit status 1; what the PBX
holds is printed escaped (AstDB may hold anything someone else wrote).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pbxcal.cli import main as cli
from pbxcal.cli import service_commands
from pbxcal.testing.fakes import FakePbx

ROOT = Path(__file__).resolve().parents[2]


class StartableFakePbx(FakePbx):
    """FakePbx with the connection calls the CLI makes on an ``AmiPbx``."""

    async def start(self, *, retry: bool = True) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
def pbx(monkeypatch: pytest.MonkeyPatch) -> StartableFakePbx:
    fake = StartableFakePbx("main", extensions={"100", "333"})
    monkeypatch.setattr(service_commands, "_pbx", lambda config, name: fake)
    return fake


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "pbxcal.toml"
    path.write_text(f'[pbx.main]\nsecret_file = "{tmp_path / "s"}"\n')
    return str(path)


def test_apply_prints_a_refused_extension_and_exits_1(
    pbx: StartableFakePbx, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pbx.refuse["100"] = "PBX answered \x1b[31mError\r\nAction: Originate"
    assert cli.main(["apply", "--config", config, "--clear", "100"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "pbxcal: error: main: extension 100 refused: "
        "PBX answered \\x1b[31mError\\r\\nAction: Originate"
    ]


def test_apply_without_refusal_exits_0(
    pbx: StartableFakePbx, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pbx.state["100"] = ("333",)
    assert cli.main(["apply", "--config", config, "--clear", "100"]) == 0
    assert capsys.readouterr().out == "main: extension 100 -> no forwarding\n"
    assert "100" not in pbx.state


def test_apply_plans_with_the_extensions_of_that_pbx(
    pbx: StartableFakePbx, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["apply", "--config", config, "--ics", str(ROOT / "examples" / "week.ics"),
         "--extension", "100"]
    )
    assert code == 0, capsys.readouterr().err
    assert pbx.calls["read_extensions"] == 1
    assert pbx.batches and set(pbx.batches[0].changes) == {"100"}


def test_pbx_status_prints_stored_text_escaped(
    pbx: StartableFakePbx, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pbx.state["100"] = ("333", "\x1b]0;owned\x07")
    assert cli.main(["pbx-status", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;owned\\x07" in out
    assert cli.main(["pbx-status", "--json", "--config", config]) == 0
    assert "\x1b" not in capsys.readouterr().out
