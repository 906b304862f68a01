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


# --- the schema is the one list of options (issue #8 item 1) --------------------------

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_FILE = ROOT / "config" / "pbxcal.example.toml"
#: Options the example shows with an example value rather than the default.
EXAMPLE_VALUES = {("pbx.*", "extensions"), ("link", "owner_emails")}


def documented_options() -> dict[tuple[str, str], object]:
    """(section, key) → value of every option written (or commented out) in the example."""
    import re
    import tomllib

    header = re.compile(r"^#?\s*\[\[?([A-Za-z0-9_.*-]+)\]\]?\s*$")
    option = re.compile(r"^#?\s*([a-z_]+)\s*=\s*(.+)$")
    found: dict[tuple[str, str], object] = {}
    section = ""
    for line in EXAMPLE_FILE.read_text(encoding="utf-8").splitlines():
        if match := header.match(line):
            name = match.group(1)
            section = "pbx.*" if name.startswith("pbx.") else name
        elif (match := option.match(line)) and section:
            key, value = match.groups()
            found[(section, key)] = tomllib.loads(f"v = {value}")["v"]
    return found


def test_every_option_is_documented_and_every_documented_option_is_known() -> None:
    from pbxcal.config import SCHEMA

    known = {(section, o.name) for section, options in SCHEMA.items() for o in options}
    documented = documented_options()
    assert set(documented) - known == set(), "documented but unknown"
    assert known - set(documented) == set(), "known but undocumented"
    for section, options in SCHEMA.items():
        for o in options:
            if o.default is not None and (section, o.name) not in EXAMPLE_VALUES:
                assert documented[(section, o.name)] == o.default, (section, o.name)


def test_the_shipped_example_loads_with_every_option_uncommented(tmp_path: Path) -> None:
    import json

    tables: dict[str, list[str]] = {}
    for (section, key), value in documented_options().items():
        header = {"pbx.*": "[pbx.main]", "link": "[[link]]"}.get(section, f"[{section}]")
        tables.setdefault(header, []).append(f"{key} = {json.dumps(value)}")
    config = load_config(
        write(tmp_path, "\n".join(f"{h}\n" + "\n".join(lines) for h, lines in tables.items()))
    )
    assert config.pbxes["main"].extensions == frozenset({"100", *map(str, range(200, 300))})
    assert config.links[0].source == "https://calendar.example/anna.ics"
    assert config.warnings == ()


def test_device_state_and_the_new_pbx_options_are_accepted_and_typed(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[pbx.main]\nsecret_file = "/x"\ndevice_state = false\n'
            'extensions = ["100", "200-203", "0999"]\ndiscover_extensions = false\n'
            "readback_interval = 30\n"
            '[pbxcal]\nextension_pattern = "[0-9]{3,4}"\n',
        )
    )
    pbx = config.pbxes["main"]
    assert pbx.device_state is False
    assert pbx.extensions == frozenset({"100", "200", "201", "202", "203", "0999"})
    assert pbx.discover_extensions is False
    assert pbx.readback_interval == 30.0 and isinstance(pbx.readback_interval, float)
    defaults = load_config(write(tmp_path, '[pbx.main]\nsecret_file = "/x"\n')).pbxes["main"]
    assert (defaults.device_state, defaults.extensions, defaults.discover_extensions) == (
        True,
        frozenset(),
        True,
    )
    assert defaults.readback_interval == 60.0


@pytest.mark.parametrize(
    ("extensions", "what"),
    [
        ('["100", "abc"]', "'abc' is not an extension"),
        ('["0100"]', "'0100' is not an extension"),
        ('["12345678"]', "is not an extension"),
        ('["299-200"]', "ends before it starts"),
        ('["100000-999999"]', "more than 100000 extensions"),
        ('["١٢٣"]', "is not an extension"),
        ('"100"', "must be a list"),
        ("[100]", "list of strings"),
    ],
)
def test_bad_extensions_name_the_entry(tmp_path: Path, extensions: str, what: str) -> None:
    found = problems(tmp_path, f'[pbx.main]\nsecret_file = "/x"\nextensions = {extensions}\n')
    assert any("[pbx.main] extensions: " in p and what in p for p in found), found


def test_readback_interval_is_bounded(tmp_path: Path) -> None:
    found = problems(tmp_path, '[pbx.main]\nsecret_file = "/x"\nreadback_interval = 1\n')
    assert any("[pbx.main] readback_interval: must be between 5 and 3600" in p for p in found)


def test_expansion_limits_come_from_sync(tmp_path: Path) -> None:
    from pbxcal.core.ical import ExpansionLimits

    assert Config.default().limits == ExpansionLimits()
    config = load_config(
        write(
            tmp_path,
            "[sync]\nmax_events = 10\nmax_instances_per_event = 20\nmax_instances_per_link = 30\n",
        )
    )
    assert config.limits == ExpansionLimits(10, 20, 30)
    found = problems(tmp_path, "[sync]\nmax_instances_per_link = 0\n")
    assert any("[sync] max_instances_per_link: must be between" in p for p in found)


def test_every_option_of_a_section_is_a_field_of_its_dataclass() -> None:
    import dataclasses

    from pbxcal.config import SCHEMA, LinkConfig, PbxConfig

    pbx_fields = {f.name for f in dataclasses.fields(PbxConfig)} - {"name"}
    assert pbx_fields == {o.name for o in SCHEMA["pbx.*"]}
    link_fields = {f.name for f in dataclasses.fields(LinkConfig)}
    assert link_fields == {o.name for o in SCHEMA["link"]}


# --- no traceback for hostile values (issue #7 item 5) --------------------------------


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ('[pbxcal]\ntimezone = "Europe"\n', "[pbxcal] timezone", "not an IANA time zone"),
        (f'[pbxcal]\ntimezone = "{"A" * 256}"\n', "[pbxcal] timezone", "not an IANA time zone"),
        ('[pbxcal]\ntimezone = "../../etc/passwd"\n', "[pbxcal] timezone", "not an IANA"),
        (
            '[pbx.main]\nsecret_file = "/x"\n[[link]]\nextension = "100"\nsource = "/a.ics"\n'
            'timezone = "Europe"\n',
            "[link #1] timezone",
            "not an IANA time zone",
        ),
        (
            '[pbxcal]\nextension_pattern = "[0-9]{1,4294967295}"\n',
            "[pbxcal] extension_pattern",
            "not a valid regular expression",
        ),
        (
            '[pbxcal]\nextension_pattern = "(1+)+0"\n',
            "[pbxcal] extension_pattern",
            "too slow",
        ),
        (
            '[pbx.main]\nsecret_file = "/x"\n[[link]]\nextension = "100"\n'
            'source = "https://[bad/cal.ics"\n',
            "[link #1] source",
            "parse",
        ),
        (
            '[pbx.main]\nsecret_file = "/x"\n[[link]]\nextension = "100"\n'
            'source = "x\\r\\nAction: Originate"\n',
            "[link #1] source",
            "one line",
        ),
    ],
)
def test_hostile_values_are_one_line_problems(
    tmp_path: Path, text: str, where: str, what: str
) -> None:
    found = problems(tmp_path, text)
    matching = [p for p in found if f": {where}: " in p]
    assert matching and any(what in p for p in matching), found
    assert all(len(p) < 400 for p in found), found


def test_deeply_nested_toml_is_one_line(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert "nested too deeply" in line


def test_huge_and_binary_files_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text("# " + "x" * 2_000_000 + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)
    path.write_bytes(b"region = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# --- what the extension pattern costs and admits (issue #7 item 2) --------------------


def test_a_slow_pattern_is_found_and_the_probe_stops_at_the_first_slow_length() -> None:
    import re

    from pbxcal.config.checks import PROBE_LENGTHS, slow_pattern

    calls: list[str] = []

    class FakeTimer:
        """Every match 'takes' its probe's length in ms."""

        def __init__(self) -> None:
            self.now = 0.0
            self.started = False

        def __call__(self) -> float:
            return self.now

    timer = FakeTimer()
    regex = re.compile("[0-9]+")
    original = regex.fullmatch

    class Probe:
        pattern = regex.pattern

        def fullmatch(self, text: str) -> object:
            calls.append(text)
            timer.now += len(text) / 1000  # 12 digits cost 12 ms
            return original(text)

    slow = slow_pattern(Probe(), budget=0.011, timer=timer)  # type: ignore[arg-type]
    assert slow is not None and slow[0] == 12
    # stopped at the first probe over budget (tried twice), nothing longer was tried
    assert max(len(c) for c in calls) == 12 and len(calls) <= 6 * 2 + 2
    assert PROBE_LENGTHS[0] < 12 < PROBE_LENGTHS[-1]


def test_the_default_pattern_is_fast_and_admits_nothing_risky() -> None:
    import re

    from pbxcal.config.checks import pattern_warnings, slow_pattern
    from pbxcal.core.policy import DEFAULT_EXTENSION_PATTERN

    regex = re.compile(DEFAULT_EXTENSION_PATTERN)
    assert slow_pattern(regex, budget=1.0) is None
    assert pattern_warnings(regex) == []


@pytest.mark.parametrize(
    ("pattern", "warns"),
    [
        ("[0-9]{2,6}", ["leading 0"]),
        ("[1-9][0-9]{1,7}", ["more than 6 digits"]),
        ("[0-9]+", ["leading 0", "more than 6 digits"]),
        ("0?[1-9][0-9]{2}", ["leading 0"]),
        ("[1-9][0-9]{2}|5555555", ["more than 6 digits"]),
        ("[2-7][0-9]{2}", []),
    ],
)
def test_check_config_warns_about_patterns_that_switch_the_policy_off(
    tmp_path: Path, pattern: str, warns: list[str]
) -> None:
    config = load_config(write(tmp_path, f'[pbxcal]\nextension_pattern = "{pattern}"\n'))
    assert len(config.warnings) == len(warns), config.warnings
    for warning, what in zip(config.warnings, warns, strict=True):
        assert warning.startswith(f"{tmp_path / 'pbxcal.toml'}: [pbxcal] extension_pattern: ")
        assert what in warning


def test_an_unknown_option_names_the_closest_known_one_with_its_doc(tmp_path: Path) -> None:
    found = problems(tmp_path, '[pbx.main]\nsecret_file = "/x"\ndevicestate = false\n')
    (line,) = found
    assert ": [pbx.main] devicestate: unknown option (did you mean 'device_state': keep " in line


def test_the_portal_admin_and_smtp_sections_are_typed_and_checked(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
[portal]
public_url = "https://pbx.example/"
allow_networks = ["127.0.0.0/8"]
[portal.google]
client_file = "/etc/pbxcal/google.json"
[portal.microsoft]
client_id = "abc-123"
client_secret_file = "/etc/pbxcal/ms"
[admin]
listen = "127.0.0.1:9642"
[smtp]
host = "localhost"
from = "pbxcal@example.com"
"""))
    assert config.portal is not None
    assert config.portal.public_url == "https://pbx.example"
    assert config.portal.allow_networks == ("127.0.0.0/8",)
    assert config.portal.google is not None and config.portal.google.client_file.endswith(".json")
    assert config.portal.microsoft is not None and config.portal.microsoft.tenant == "common"
    assert config.admin_listen == "127.0.0.1:9642"
    assert config.smtp is not None and config.smtp.sender == "pbxcal@example.com"
    assert load_config(write(tmp_path, "")).portal is None

    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, """
[portal]
allow_networks = ["10.0.0.0/33"]
languages = ["fr"]
[portal.microsoft]
client_id = "abc"
[smtp]
host = "localhost"
"""))
    text = str(info.value)
    assert "[portal] allow_networks: '10.0.0.0/33' is not a network" in text
    assert "[portal] languages: 'fr' is not one of en, nl" in text
    assert "[portal] public_url: is required" in text
    assert "[portal.microsoft]: needs client_id and client_secret_file" in text
    assert "[smtp] from: is required with host" in text
