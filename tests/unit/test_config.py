"""The TOML config schema: every problem names file, [section], key and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbxcal.config import Config, load_config, parse_config
from pbxcal.core.targets import Target, parse_title
from pbxcal.errors import ConfigError

EXAMPLE = """
[pbxcal]
region = "NL"
timezone = "Europe/Amsterdam"
extension_pattern = "[0-9]{3}"

[policy]
allowed_countries = ["NL", "be"]
allowed_types = ["mobile", "fixed_line"]
allow_emergency = false
max_targets = 3

[store]
url = "sqlite:////var/lib/pbxcal/pbxcal.db"

[http]
listen = "127.0.0.1:9640"

[sync]
interval = 120
timeout = 20.5
max_bytes = 5000000
horizon_days = 30

[pbx.main]
host = "127.0.0.1"
port = 5038
username = "pbxcal"
secret_credential = "ami-main"

[pbx.backup]
host = "10.0.0.2"
secret_file = "/etc/pbxcal/backup.secret"

[[link]]
extension = "100"
source = "https://calendar.example.com/anna.ics"
pbx = "main"
timezone = "Europe/Brussels"
owner_emails = ["anna@example.com"]

[[link]]
extension = "101"
source = "/srv/calendars/bob.ics"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pbxcal.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems
    for line in info.value.problems:
        assert line.startswith(f"{path}: "), line
        assert "\n" not in line
    return info.value.problems


def test_example_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    assert config.region == "NL"
    assert config.zone.key == "Europe/Amsterdam"
    assert config.policy.allowed_countries == frozenset({"NL", "BE"})
    assert config.policy.allowed_types == frozenset({"mobile", "fixed_line"})
    assert config.policy.max_targets == 3
    assert config.sync_interval == 120.0 and isinstance(config.sync_interval, float)
    assert config.horizon_days == 30
    assert set(config.pbxes) == {"main", "backup"}
    assert config.pbxes["main"].secret_credential == "ami-main"
    assert config.pbxes["backup"].port == 5038
    assert [(link.extension, link.pbx) for link in config.links] == [
        ("100", "main"),
        ("101", "main"),
    ]
    assert config.links[0].owner_emails == ("anna@example.com",)
    # the policy from the file is what parse_title uses
    assert parse_title("+32 470 12 34 56", config.policy) == Target("+32470123456", False)
    assert parse_title("201", config.policy) == Target("201", True)
    # 100 is the Belgian emergency number: allowing BE blocks it as a target
    assert parse_title("100", config.policy) != Target("100", True)
    assert parse_title("2010", config.policy) != Target("2010", True)


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    default = Config.default()
    assert (config.region, config.timezone, config.policy) == (
        default.region,
        default.timezone,
        default.policy,
    )


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("[pbxcal]\nregion = 31\n", "[pbxcal] region", "must be a string"),
        ('[pbxcal]\nregion = "XX"\n', "[pbxcal] region", "'XX' is not a region code"),
        ('[pbxcal]\ntimezone = "Europe/Amsterdm"\n', "[pbxcal] timezone", "not an IANA time zone"),
        (
            '[pbxcal]\nextension_pattern = "[0-9"\n',
            "[pbxcal] extension_pattern",
            "regular expression",
        ),
        ('[pbxcal]\ncolour = "blue"\n', "[pbxcal] colour", "unknown option"),
        ('[policy]\nmax_targets = "5"\n', "[policy] max_targets", "must be an integer"),
        ("[policy]\nmax_targets = true\n", "[policy] max_targets", "must be an integer"),
        ("[policy]\nmax_targets = 0\n", "[policy] max_targets", "between 1 and 50"),
        ('[policy]\nallow_emergency = "yes"\n', "[policy] allow_emergency", "true or false"),
        ('[policy]\nallowed_countries = ["NL", "ZZ"]\n', "[policy] allowed_countries", "ZZ"),
        ('[policy]\nallowed_countries = "NL"\n', "[policy] allowed_countries", "must be a list"),
        ('[policy]\nallowed_types = ["mobile", "cheap"]\n', "[policy] allowed_types", "cheap"),
        ('[store]\nurl = "mysql://x"\n', "[store] url", "sqlite"),
        ('[http]\nlisten = "localhost"\n', "[http] listen", "HOST:PORT"),
        ("[sync]\ninterval = 0.5\n", "[sync] interval", "between"),
        ("[sync]\nhorizon_days = 1.5\n", "[sync] horizon_days", "must be an integer"),
        ('[ui]\ntheme = "dark"\n', "[ui]", "unknown section"),
        ("pbxcal = 3\n", "[pbxcal]", "must be a table"),
        (
            '[pbx.main]\nsecret = "hunter2"\nsecret_file = "/x"\n',
            "[pbx.main] secret",
            "secrets are not written in the config",
        ),
        (
            '[pbx.main]\nhost = "h"\n',
            "[pbx.main] secret_file",
            "set secret_file or secret_credential",
        ),
        (
            '[pbx.main]\nsecret_file = "/x"\nport = 70000\n',
            "[pbx.main] port",
            "between 1 and 65535",
        ),
        ('[pbx.main]\nsecret_file = "/x"\nusername = "a b"\n', "[pbx.main] username", "letters"),
        ('[pbx."bad name"]\nsecret_file = "/x"\n', "[pbx.bad name]", "name must be"),
        (
            '[pbx.main]\nsecret_file = "/x"\n[[link]]\nextension = "100"\nsource = "/a.ics"\n'
            'pbx = "other"\n',
            "[link #1] pbx",
            "unknown PBX 'other' (known: main)",
        ),
        ('[[link]]\nextension = "100"\nsource = "/a.ics"\n', "[link #1] pbx", "none configured"),
        (
            '[pbx.main]\nsecret_file = "/x"\n[[link]]\nsource = "/a.ics"\n',
            "[link #1] extension",
            "is required",
        ),
        (
            '[pbx.main]\nsecret_file = "/x"\n[[link]]\nextension = "10a"\nsource = "/a.ics"\n',
            "[link #1] extension",
            "does not match",
        ),
        (
            '[pbx.main]\nsecret_file = "/x"\n[[link]]\nextension = "100"\nsource = "ftp://x/a.ics"\n',
            "[link #1] source",
            "http(s)/webcal",
        ),
        (
            '[pbx.main]\nsecret_file = "/x"\n[[link]]\nextension = "100"\nsource = "/a.ics"\n'
            'timezone = "CEST"\n',
            "[link #1] timezone",
            "not an IANA time zone",
        ),
        (
            '[pbx.main]\nsecret_file = "/x"\n[[link]]\nextension = "100"\nsource = "/a.ics"\n'
            'owner_emails = ["a@b", 3]\n',
            "[link #1] owner_emails",
            "list of strings",
        ),
        (
            '[pbx.main]\nsecret_file = "/x"\n[[link]]\nextension = "100"\nsource = "/a.ics"\n'
            "owner = 1\n",
            "[link #1] owner",
            "unknown option",
        ),
    ],
)
def test_broken_configs_name_section_key_and_problem(
    tmp_path: Path, text: str, where: str, what: str
) -> None:
    found = problems(tmp_path, text)
    matching = [p for p in found if f": {where}: " in p]
    assert matching, found
    assert any(what in p for p in matching), found


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[pbxcal]\nregion = "XX"\ntimezone = "Nowhere"\n[policy]\nmax_targets = 0\n'
        '[pbx.main]\nsecret = "s"\nsecret_file = "/x"\n',
    )
    assert len(found) == 4
    assert [p.split(": ")[1] for p in found] == [
        "[pbxcal] region",
        "[pbxcal] timezone",
        "[policy] max_targets",
        "[pbx.main] secret",
    ]


def test_secret_value_is_never_echoed(tmp_path: Path) -> None:
    found = problems(tmp_path, '[pbx.main]\nsecret = "hunter2-very-secret"\nsecret_file = "/x"\n')
    assert not any("hunter2" in p for p in found)


def test_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.problems == [f"{missing}: file not found"]
    bad = write(tmp_path, "[pbxcal\nregion = 'NL'\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    (line,) = info.value.problems
    assert line.startswith(f"{bad}: not valid TOML")


def test_parse_config_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"pbxcal": {"region": "XX"}}, "inline.toml")
    assert info.value.problems[0].startswith("inline.toml: [pbxcal] region: ")
    assert str(info.value) == "; ".join(info.value.problems)
