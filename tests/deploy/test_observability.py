"""The Grafana dashboard and the Prometheus rules in deploy/: they parse (promtool, from Debian's
prometheus package), every query in them is valid PromQL, and every metric they read is one the
server exports, with the right type.

The metric list below is the service contract's (issue 8: "Prometheus metrics"). When the build
has the server (CMake passes ATMAN_SERVER_BINARY), the test also starts it and compares with what
its /metrics endpoint really serves.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "support"))
from ports import free_port  # noqa: E402
import yaml

ROOT = pathlib.Path(os.environ.get("ATMAN_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
DASHBOARD = ROOT / "deploy" / "grafana" / "atman-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "atman-rules.yaml"

# The server's metric families (service contract, issue 8) and their Prometheus types.
CONTRACT_METRICS = {
    "atman_requests_total": "counter",
    "atman_request_duration_seconds": "histogram",
    "atman_queue_wait_seconds": "histogram",
    "atman_queue_depth_rows": "gauge",
    "atman_queued_requests": "gauge",
    "atman_inflight_requests": "gauge",
    "atman_batch_rows": "histogram",
    "atman_forward_passes_total": "counter",
    "atman_positions_computed_total": "counter",
    "atman_device_memory_allocated_bytes": "gauge",
    "atman_device_memory_reserved_bytes": "gauge",
    "atman_device_memory_peak_bytes": "gauge",
    "atman_oom_retries_total": "counter",
    "atman_ready": "gauge",
    "atman_build_info": "gauge",
    "atman_tls_certificate_expiry_timestamp_seconds": "gauge",
}
# Served by TLS servers only (the certificate's series); tests/server/test_rotation.py checks its
# value on one, so the plaintext server below is not asked for it.
TLS_ONLY_METRICS = {"atman_tls_certificate_expiry_timestamp_seconds"}
# Series Prometheus itself makes, which the rules may read.
PROMETHEUS_SERIES = {"up"}
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".*"}


def promtool():
    path = shutil.which("promtool")
    assert path, "promtool is missing: install Debian's prometheus package (scripts/apt-packages-test.txt)"
    return path


def dashboard_queries():
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"panel {panel['title']!r}: unknown variable in {expr}"
            queries.append((panel["title"], expr))
    return queries


def rule_queries():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule.get("alert") or rule["record"], rule["expr"]) for group in groups for rule in group["rules"]]


def metric_names(expr):
    """Metric names an expression selects: identifiers outside strings, label matchers and
    grouping clauses that are neither functions nor keywords, with histogram suffixes folded."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word in {"and", "or", "unless", "bool", "offset"} or ":" in word:
            continue  # functions and aggregations, operators, recording rules of our own
        names.add(word)
    return names


def family_of(name):
    """(family, type implied by the suffix) for a series name."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and CONTRACT_METRICS.get(base) == "histogram":
            return base, "histogram"
    return name, None


def test_rules_parse_with_promtool():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 13 rules found" in result.stdout, result.stdout


RULE_TESTS = ROOT / "deploy" / "prometheus" / "atman-rules.test.yaml"


def test_every_alert_fires_and_stays_quiet_under_promtool_unit_tests():
    """promtool test rules on synthetic series (deploy/prometheus/atman-rules.test.yaml). Debian
    bookworm's promtool is 2.42 and no PyPI package ships one, so no Prometheus 3 promtool runs
    here; the SLO tests feed the 10 s bucket in both forms, le="10" (Prometheus 2) and le="10.0"
    (Prometheus 3's normalised classic-histogram label), and both must fire."""
    result = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    alerts = {name for name, _ in rule_queries() if name[0].isupper()}
    fires, quiet = set(), set()
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in group["alert_rule_test"]:
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fires == alerts and quiet == alerts, (alerts - fires, alerts - quiet)
    slo_series = [s["series"] for g in yaml.safe_load(RULE_TESTS.read_text())["tests"] for s in g["input_series"]
                  if s["series"].startswith("atman_request_duration_seconds_bucket")]
    assert any('le="10"' in s for s in slo_series) and any('le="10.0"' in s for s in slo_series)


def test_rules_cover_the_alerts_operators_need():
    alerts = {name for name, _ in rule_queries() if name[0].isupper()}
    assert {"AtmanHighErrorRatio", "AtmanQueueSaturated", "AtmanLatencySLOBurnFast", "AtmanLatencySLOBurnSlow",
            "AtmanOOMRetries", "AtmanPodNotReady"} <= alerts
    docs = (ROOT / "docs" / "deployment.md").read_text()
    for alert in alerts:
        assert f"### {alert}" in docs, f"docs/deployment.md does not explain {alert}"
    # Every alert links its runbook: the section of docs/deployment.md (GitHub's anchor: the
    # heading in lower case), which the chart can turn into a full URL (runbookBaseUrl).
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]
    assert {r["alert"] for r in rules} == alerts
    for rule in rules:
        anchor = rule["annotations"]["runbook_url"].removeprefix("docs/deployment.md#")
        assert f"\n### {anchor}\n" in docs.lower(), rule["annotations"]["runbook_url"]


def test_dashboard_error_ratio_counts_the_alerts_codes():
    """The "Server error ratio" panel counts what AtmanHighErrorRatio counts (not the drain's
    UNAVAILABLE nor the client's DEADLINE_EXCEEDED, which would rise on every rollout)."""
    def codes(expr):
        return set(re.search(r'code=~"([^"]+)"', expr).group(1).split("|"))
    panel = [expr for title, expr in dashboard_queries() if title == "Server error ratio"]
    alert = [expr for name, expr in rule_queries() if name == "AtmanHighErrorRatio"]
    assert len(panel) == 1 and len(alert) == 1
    assert codes(panel[0]) == codes(alert[0]) == {"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED"}


def test_dashboard_queries_are_valid_promql(tmp_path):
    # promtool parses every expression of a rule file: check the dashboard's as recording rules.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_structure():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "atman-server"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]
    used = {family_of(n)[0] for _, expr in dashboard_queries() for n in metric_names(expr)}
    # What the issue asks the dashboard to show.
    assert {"atman_requests_total", "atman_request_duration_seconds", "atman_queue_depth_rows", "atman_batch_rows",
            "atman_forward_passes_total", "atman_device_memory_allocated_bytes"} <= used


def used_metrics():
    used = {}
    for source, queries in (("dashboard", dashboard_queries()), ("rules", rule_queries())):
        for title, expr in queries:
            for name in metric_names(expr):
                used.setdefault(name, []).append(f"{source}: {title}")
    return used


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.9, sum by (le) (rate(a_bucket{job=~"x.*",le="1"}[5m]))) > 2') == {"a_bucket"}
    assert metric_names("x:rec:rate5m > 0.1 and up == 0") == {"up"}


def test_every_metric_used_is_in_the_contract():
    used = used_metrics()
    assert len(used) >= 15, sorted(used)
    unknown = {}
    for name, where in sorted(used.items()):
        family, suffix_type = family_of(name)
        if family in PROMETHEUS_SERIES:
            continue
        if family not in CONTRACT_METRICS:
            unknown[name] = where
        elif suffix_type is None and CONTRACT_METRICS[family] == "histogram":
            unknown[name] = where + ["(a histogram is read through _bucket, _sum or _count)"]
    assert unknown == {}, unknown
    unused = set(CONTRACT_METRICS) - {family_of(n)[0] for n in used}
    assert unused == set(), f"exported but shown nowhere: {sorted(unused)}"


# --- Against the real server ----------------------------------------------------------------
def parse_exposition(text):
    """{family: type} from the `# TYPE` lines of Prometheus' text format."""
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(None, 3)
            types[family] = kind.strip()
    return types


def test_parse_exposition():
    assert parse_exposition("# HELP a_total x\n# TYPE a_total counter\na_total 1\n# TYPE b histogram\n") == \
        {"a_total": "counter", "b": "histogram"}


def test_server_metrics_endpoint_serves_every_metric_used(tmp_path):
    binary = os.environ.get("ATMAN_SERVER_BINARY", "")
    if not binary:
        pytest.skip("atman-server is not part of this build (configured with ATMAN_BUILD_SERVICE=OFF)")
    # The embedded default model when it is there, else the engine tests' random Llama.
    default = ROOT / "models" / "default"
    fixture = pathlib.Path(os.environ.get("ATMAN_FIXTURES", "")) / "atman_cases" / "llama"
    model = os.environ.get("ATMAN_SERVER_MODEL",
                           str(default if (default / "config.json").exists() else fixture))
    grpc_port, metrics_port = free_port(), free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([binary, f"--model={model}", "--devices=cpu", f"--port={grpc_port}",
                               f"--metrics-port={metrics_port}", "--log-format=text"], stdout=log, stderr=log)
    try:
        deadline, text, ready = time.monotonic() + 240, None, False
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                    text = response.read().decode()
                # The sample line, not the HELP line ("# HELP atman_ready 1 when ..."): a scrape
                # before SERVING has no per-device gauges yet.
                ready = re.search(r"^atman_ready 1$", text, re.MULTILINE) is not None
                if ready:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert ready, f"no ready /metrics within 240 s: {(tmp_path / 'server.log').read_text()[-4000:]}"
        served = parse_exposition(text)
        missing = {}
        for name in used_metrics():
            family, _ = family_of(name)
            if family in PROMETHEUS_SERIES or family in TLS_ONLY_METRICS:
                continue
            if served.get(family) != CONTRACT_METRICS[family]:
                missing[family] = served.get(family)
        assert missing == {}, f"used by deploy/ but not served as the contract's type: {missing}"
        # docs/operations.md lists every family the server serves, with its type, twice: the
        # summary list and the table of when each moves.
        expected = {f: t for f, t in served.items() if f.startswith("atman_")}
        expected.update({f: CONTRACT_METRICS[f] for f in TLS_ONLY_METRICS})
        docs = (ROOT / "docs" / "operations.md").read_text()
        listed = dict(re.findall(r"^    (atman_\w+)(?:\{[^}]*\})?\s+(counter|gauge|histogram)", docs, re.M))
        table = dict(re.findall(r"^\| `(atman_\w+)` \| (counter|gauge|histogram) \|", docs, re.M))
        assert listed == expected, f"docs/operations.md's list: {set(listed.items()) ^ set(expected.items())}"
        assert table == expected, f"docs/operations.md's table: {set(table.items()) ^ set(expected.items())}"
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
