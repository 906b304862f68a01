"""The monitoring files in ``contrib/monitoring/`` are valid and match what pbxcal exports.

* ``promtool check rules`` accepts the alert rules and ``promtool test rules`` passes
  their unit tests; every alert has a case where it fires and one where it does not,
  and a section in the README.
* The Grafana dashboard is valid JSON, and every query in it is valid PromQL (promtool
  checks them as recording rules).
* Every metric and label name used in the rules and the dashboard exists in
  ``pbxcal.service.metrics.Metrics``'s registry (or in ``ANNOUNCED``, metrics promised
  for the next step), every histogram bucket bound used is one pbxcal exports, and
  every sync result and link status matched is one ``pbxcal.calendars.health`` knows.

Needs ``promtool`` (Debian: ``apt-get install prometheus``, which ``scripts/setup``
does); its absence is an error, not a skip. When a metric is renamed, this test names
the alert or panel that still uses the old name.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from pbxcal.calendars.health import LINK_STATUSES, STATUS_OF_RESULT, SUCCESS_RESULTS
from pbxcal.service.metrics import Metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MONITORING = Path(__file__).resolve().parents[2] / "contrib" / "monitoring"
RULES = MONITORING / "pbxcal-alerts.yml"
RULE_TESTS = MONITORING / "pbxcal-alerts.test.yml"
DASHBOARD = MONITORING / "pbxcal-dashboard.json"
README = MONITORING / "README.md"

#: Metrics the rules or the dashboard may use before pbxcal exports them (name → the
#: label names they will have). Empty: everything used exists today.
ANNOUNCED: dict[str, frozenset[str]] = {}
#: Series Prometheus makes itself when it scrapes.
PROMETHEUS_OWN: dict[str, frozenset[str]] = {"up": frozenset()}
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})

_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
     "bool", "offset", "inf", "nan"}
)  # fmt: skip
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_IDENTIFIER = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?!\w)(\s*\()?")


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: apt-get install --no-install-recommends prometheus "
            "(scripts/setup installs it)",
            pytrace=False,
        )
    return path


def _run_promtool(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=50, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard_queries() -> dict[str, str]:
    """``"panel title (refId)"`` → PromQL, with Grafana's variables filled in."""
    queries = {}
    for panel in _panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")
            queries[f"panel {panel['title']!r} ({target['refId']})"] = expr
    return queries


def _all_queries() -> dict[str, str]:
    queries = {f"alert {rule['alert']}": str(rule["expr"]) for rule in _alert_rules()}
    return queries | _dashboard_queries()


def _exported() -> dict[str, frozenset[str]]:
    """Every series name pbxcal exports → its label names (``le`` for buckets)."""
    metrics = Metrics()
    names: dict[str, frozenset[str]] = {}
    for wrapper in vars(metrics).values():
        if not isinstance(wrapper, MetricWrapperBase):
            continue
        # prometheus_client has no public accessor for a labelled metric's label names.
        labels = frozenset(wrapper._labelnames)
        name, kind = wrapper._name, wrapper._type
        if kind == "counter":
            names[f"{name}_total"] = labels
        elif kind == "histogram":
            names[f"{name}_bucket"] = labels | {"le"}
            names[f"{name}_count"] = labels
            names[f"{name}_sum"] = labels
        else:
            names[name] = labels
    registered = {family.name for family in metrics.registry.collect()}
    wrapped = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in names}
    assert wrapped == registered, "Metrics has metrics that are not attributes (or vice versa)"
    return names


def _known() -> dict[str, frozenset[str]]:
    return _exported() | ANNOUNCED | PROMETHEUS_OWN


def _metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (not functions, keywords or labels)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = _GROUPING.sub("", bare)
    names = set()
    for match in _IDENTIFIER.finditer(bare):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def test_promtool_check_rules_accepts_the_alert_rules() -> None:
    _run_promtool("check", "rules", RULES.name, cwd=MONITORING)


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    _run_promtool("test", "rules", RULE_TESTS.name, cwd=MONITORING)


def test_every_alert_has_a_firing_and_a_quiet_case_and_a_readme_section() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    readme = README.read_text()
    alerts = [rule["alert"] for rule in _alert_rules()]
    assert len(alerts) == len(set(alerts)), "an alert name is used twice"
    for alert in alerts:
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case.get("exp_alerts") for case in mine), f"{alert}: no case where it fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{alert}: no quiet case"
        assert f"### {alert}\n" in readme, f"{alert}: no '### {alert}' section in README.md"


def test_every_alert_has_a_severity_summary_and_description() -> None:
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_the_dashboard_is_valid_grafana_json() -> None:
    dashboard = _dashboard()
    assert dashboard["title"] and dashboard["uid"]
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "two panels share an id"
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), f"panel {panel['title']!r}: empty query"


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"pbxcal:dashboard_query_{number}", "expr": expr}
        for number, expr in enumerate(_dashboard_queries().values())
    ]
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    _run_promtool("check", "rules", "queries.yml", cwd=tmp_path)


def test_metric_names_exist() -> None:
    known = _known()
    unknown = {
        where: sorted(_metric_names(expr) - known.keys()) for where, expr in _all_queries().items()
    }
    assert {where: names for where, names in unknown.items() if names} == {}


def test_the_metric_name_finder_sees_names_and_skips_the_rest() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{x="b_c"}[5m]))) > 1 '
        "and on (job) sum without (y) (b_total offset 5m) or up == bool 0"
    )
    assert _metric_names(expr) == {"a_bucket", "b_total", "up"}


def test_label_names_exist() -> None:
    known = _known()
    everywhere = TARGET_LABELS | {"le"} | frozenset().union(*known.values())
    problems = []
    for where, expr in _all_queries().items():
        for match in _SELECTOR.finditer(expr):
            name, body = match.group(1), match.group(2)
            allowed = (known[name] | TARGET_LABELS) if name in known else everywhere
            for label, _, _ in _MATCHER.findall(body):
                if label not in allowed:
                    problems.append(f"{where}: {name}{{{label}}}")
        for match in _GROUPING.finditer(expr):
            for label in filter(None, (part.strip() for part in match.group(1).split(","))):
                if label not in everywhere:
                    problems.append(f"{where}: grouping by unknown label {label}")
    assert problems == []


def _matched_values(label: str) -> dict[str, set[str]]:
    """Every value a query matches ``label`` against (``a|b`` regexes split)."""
    found: dict[str, set[str]] = {}
    for where, expr in _all_queries().items():
        for match in _SELECTOR.finditer(expr):
            for name, _, value in _MATCHER.findall(match.group(2)):
                if name == label:
                    found.setdefault(where, set()).update(value.split("|"))
    return found


def test_sync_results_and_link_statuses_matched_are_ones_pbxcal_produces() -> None:
    results = set(STATUS_OF_RESULT)
    statuses = set(LINK_STATUSES)
    bad_results = {w: v - results for w, v in _matched_values("result").items() if v - results}
    bad_statuses = {w: v - statuses for w, v in _matched_values("status").items() if v - statuses}
    assert bad_results == {}
    assert bad_statuses == {}
    stale = next(r for r in _alert_rules() if r["alert"] == "PbxcalCalendarSyncsStale")
    successes = re.findall(r'result=~"([^"]*)"', stale["expr"])
    assert [set(value.split("|")) for value in successes] == [set(SUCCESS_RESULTS)]


def test_histogram_bucket_bounds_used_are_exported() -> None:
    metrics = Metrics()
    exposition = generate_latest(metrics.registry).decode()
    bounds = set(re.findall(r'le="([^"]*)"', exposition))
    used = {w: v - bounds for w, v in _matched_values("le").items() if v - bounds}
    assert used == {}, f"bucket bounds pbxcal does not export (it writes 1 as '1.0'): {used}"
