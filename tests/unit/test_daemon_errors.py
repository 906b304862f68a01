"""``pbxcal run`` start-up errors, in-process and without Asterisk.

Every problem an operator can cause (a broken config, an unusable store, an unreadable
secret, a taken HTTP port, a refused AMI login) ends the start with exit status 2 and
one line per problem on stderr, never a traceback. An unreachable PBX is not one of
them: the daemon starts, says it is not ready, and keeps trying.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbxcal.cli.main import main
from pbxcal.config import load_config
from pbxcal.service.daemon import Daemon
from pbxcal.testing.ports import free_port

pytestmark = pytest.mark.timeout(60)


def write_config(tmp_path: Path, *, ami_port: int, listen: str | None = None, **extra: str) -> Path:
    secret = tmp_path / "ami.secret"
    if not secret.exists():
        secret.write_text("s3cret")
    listen = listen or f"127.0.0.1:{free_port()}"
    (tmp_path / "anna.ics").write_text("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n")
    text = (
        f'[http]\nlisten = "{listen}"\n\n[sync]\ninterval = 1\n\n'
        f'[pbx.main]\nport = {ami_port}\nsecret_file = "{extra.get("secret_file", secret)}"\n'
        "backoff_max = 1\naction_timeout = 2\n\n"
        f'[[link]]\nextension = "100"\nsource = "{tmp_path / "anna.ics"}"\n'
    )
    path = tmp_path / "pbxcal.toml"
    path.write_text(text)
    return path


def run(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path, store: str | None = None
) -> tuple[int, list[str]]:
    store = store or f"sqlite:///{tmp_path / 'pbxcal.sqlite3'}"
    code = main(["run", "--config", str(config), "--store", store])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("pbxcal: error:")]
    return code, errors


class _RefusingAmi(socketserver.BaseRequestHandler):
    """Answers every Login with Asterisk's 'Authentication failed'."""

    def handle(self) -> None:
        self.request.sendall(b"Asterisk Call Manager/9.0.0\r\n")
        buffer = b""
        while True:
            data = self.request.recv(4096)
            if not data:
                return
            buffer += data
            while b"\r\n\r\n" in buffer:
                message, buffer = buffer.split(b"\r\n\r\n", 1)
                headers = dict(
                    line.split(": ", 1) for line in message.decode().split("\r\n") if ": " in line
                )
                reply = (
                    f"Response: Error\r\nActionID: {headers.get('ActionID', '')}\r\n"
                    "Message: Authentication failed\r\n\r\n"
                )
                self.request.sendall(reply.encode())


@pytest.fixture
def refusing_ami() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _RefusingAmi)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_broken_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[http]\nlisten = "nowhere"\n\n[pbx.main]\nsecret = "inline"\n')
    code, errors = run(capsys, bad, tmp_path)
    assert code == 2
    assert any(f"{bad}: [http] listen:" in line for line in errors), errors
    assert any(f"{bad}: [pbx.main] secret:" in line for line in errors), errors


def test_unreadable_secret_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write_config(tmp_path, ami_port=free_port(), secret_file=str(tmp_path / "none"))
    code, errors = run(capsys, config, tmp_path)
    assert code == 2
    assert errors == [
        f"pbxcal: error: [pbx.main] secret: cannot read {tmp_path / 'none'}: "
        "No such file or directory"
    ]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("sqlite:///{tmp}/a-file/pbxcal.sqlite3", "is not a directory"),
        ("sqlite:////proc/pbxcal-unit-test/pbxcal.sqlite3", "cannot create directory"),
        ("oracle://nobody@127.0.0.1/x", "store"),
    ],
)
def test_unusable_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str, fragment: str
) -> None:
    (tmp_path / "a-file").write_text("")
    config = write_config(tmp_path, ami_port=free_port())
    code, errors = run(capsys, config, tmp_path, url.format(tmp=tmp_path))
    assert code == 2
    assert len(errors) == 1 and fragment in errors[0], errors


def test_http_port_taken(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        config = write_config(tmp_path, ami_port=free_port(), listen=listen)
        code, errors = run(capsys, config, tmp_path)
    assert code == 2
    assert len(errors) == 1, errors
    assert f"{config}: [http] listen: cannot listen on {listen}" in errors[0]


def test_refused_login(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, refusing_ami: int
) -> None:
    config = write_config(tmp_path, ami_port=refusing_ami)
    code, errors = run(capsys, config, tmp_path)
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("pbxcal: error: [pbx.main]"), errors
    assert "Authentication failed" in errors[0]
    assert "s3cret" not in errors[0]


async def test_unreachable_pbx_is_not_fatal(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, ami_port=free_port()))
    daemon = Daemon(config, store_url=f"sqlite:///{tmp_path / 'pbxcal.sqlite3'}")
    task = asyncio.create_task(daemon.run())
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(20):
            while not daemon.ready:
                assert not task.done(), task.result()
                await asyncio.sleep(0.05)
        ok, details = daemon._readiness()
        assert not ok and details["pbx_down"] == ["main"], details
        assert daemon._health()[0]
        assert "0/1 PBX connected, 1 links" in daemon.status_line()
    finally:
        daemon.stop()
        async with asyncio.timeout(10):
            await task
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
