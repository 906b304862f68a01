"""What ``pbxcal check-config`` verifies on this machine beyond the file's own rules.

``audit(config)`` returns ``(errors, warnings)``, one line each: a PBX's
``secret_file`` must exist, be a regular file and be readable by the user running the
check; a secret file that its group or other users may read is a warning. The secret is
never read here (only ``stat`` and ``access``), so no message can contain it. A
``[[link]] source`` that is a relative path is a warning: the service resolves it
against its own working directory (``/`` under systemd).

Must not print, and must not open a secret file. Start reading at ``audit``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pbxcal.config.model import Config


def audit(config: Config) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` about the files the config points at."""
    errors: list[str] = []
    warnings: list[str] = []
    for pbx in config.pbxes.values():
        if pbx.secret_file is None:
            continue
        where = f"{config.source}: [pbx.{pbx.name}] secret_file"
        path = Path(pbx.secret_file)
        try:
            info = path.stat()
        except FileNotFoundError:
            errors.append(f"{where}: {path} does not exist")
            continue
        except OSError as exc:
            errors.append(f"{where}: cannot look at {path}: {exc.strerror}")
            continue
        if not stat.S_ISREG(info.st_mode):
            errors.append(f"{where}: {path} is not a regular file")
            continue
        if not os.access(path, os.R_OK):
            errors.append(f"{where}: {path} is not readable by uid {os.geteuid()}")
            continue
        if info.st_size == 0:
            errors.append(f"{where}: {path} is empty")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(
                f"{where}: {path} is readable by its group or others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); chmod 0600 it"
            )
    for index, link in enumerate(config.links, start=1):
        if "://" not in link.source and not os.path.isabs(os.path.expanduser(link.source)):
            warnings.append(
                f"{config.source}: [link #{index}] source: a relative path is read from "
                "the service's working directory (/ under systemd); write an absolute path"
            )
    return errors, warnings
