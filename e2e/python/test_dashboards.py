"""The shipped Grafana dashboard and Prometheus alerts, and the stock dashboards people run against
vLLM (vLLM's own examples and production-stack's, written out in `stock_dashboards.py`), against a
real Prometheus scraping real, loaded daemons.

The chart is rendered with `helm template` (dashboard ConfigMap + PrometheusRule + PodMonitor
enabled), every panel query, template variable and alert expression is extracted from the rendered
objects automatically (a new panel or alert is tested without editing this file), and:

* every series name they read must be one the daemon exports (`up`, which Prometheus records per
  scraped target, is the one exception, used by the replica-not-ready alert);
* Debian's Prometheus scrapes two daemons on loopback every second (labelled as two pods on two
  nodes, as the chart's PodMonitor relabelings would), loads the rendered alert rules, and every
  query is evaluated through its HTTP API while the daemons carry traffic: streaming and plain
  requests, a client disconnect, an overload (503s) and a KV pool so small that running requests
  are preempted. An empty result, or one without a finite value, fails the test, naming the
  query.

Every panel of the stock vLLM dashboards must return data too, with the dashboard's variables
set to the served model (production-stack's router panels read series its router exports about
itself; they are listed and skipped by name).

Alert expressions filter (`x > threshold` is empty while healthy), so each comparison is also
evaluated in its `bool` form, which must return a series for every target.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import MODEL_NAME, ROOT, Daemon, free_port
from stock_dashboards import ROUTER_PANELS, STOCK_DASHBOARDS, VARIABLE_VALUES

CHART = ROOT / "charts" / "fused-operator"
CHART_VALUES = [
    "dashboard.enabled=true",
    "prometheusRule.enabled=true",
    "daemonPodMonitor.enabled=true",
]
SCRAPE_INTERVAL_S = 1
# Series Prometheus itself records for every scraped target (not read from the daemon).
SCRAPE_SERIES = {"up"}
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "atan2",
}


# ---- locating the tools -----------------------------------------------------------------------


def locate(name: str, env: str, dirs: list[str], setup: str) -> str:
    """An executable from `$env`, then `dirs`, then PATH; a clear failure naming the setup script."""
    candidates = [os.environ.get(env, "")] + [str(Path(d) / name) for d in dirs]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(name)
    if on_path:
        return on_path
    pytest.fail(f"{name} not found (${env}, {', '.join(dirs)}, PATH): run {setup}")


def helm_bin() -> str:
    k8s_dir = os.environ.get("FUSED_K8S_DIR", "/opt/k8s/bin")
    return locate("helm", "FUSED_HELM_BIN", [k8s_dir], "scripts/setup-k8s.sh")


def prometheus_bin() -> str:
    return locate("prometheus", "FUSED_PROMETHEUS_BIN", ["/usr/bin"], "scripts/setup-prometheus.sh")


# ---- what the chart ships ---------------------------------------------------------------------


@dataclass
class Shipped:
    """The dashboards, alert rule groups and daemon scrape job name of the rendered chart."""

    dashboards: list[dict]
    rule_groups: list[dict]
    job_name: str


def render_chart() -> Shipped:
    args = [helm_bin(), "template", "fused-operator", str(CHART), "--namespace", "fused-system"]
    for value in CHART_VALUES:
        args += ["--set", value]
    rendered = subprocess.run(args, capture_output=True, text=True)
    assert rendered.returncode == 0, f"helm template failed: {rendered.stderr}"
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    dashboards = [
        json.loads(text)
        for d in docs
        if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"].get("labels", {})
        for name, text in d["data"].items()
        if name.endswith(".json")
    ]
    rule_groups = [g for d in docs if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"]]
    jobs = [
        r["replacement"]
        for d in docs
        if d["kind"] == "PodMonitor"
        for e in d["spec"]["podMetricsEndpoints"]
        for r in e.get("relabelings", [])
        if r.get("targetLabel") == "job"
    ]
    assert dashboards, "the chart renders no ConfigMap labelled grafana_dashboard with a .json"
    assert rule_groups, "the chart renders no PrometheusRule groups"
    assert len(jobs) == 1, f"expected one PodMonitor job relabeling, got {jobs}"
    return Shipped(dashboards, rule_groups, jobs[0])


@dataclass
class Query:
    """One PromQL expression the chart ships, and where it comes from."""

    origin: str
    expr: str


def all_panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def panel_queries(dashboard: dict) -> list[Query]:
    return [
        Query(f"dashboard {dashboard['title']!r} panel {p['title']!r} target {t.get('refId')}", t["expr"])
        for p in all_panels(dashboard.get("panels", []))
        for t in p.get("targets", [])
        if t.get("expr")
    ]


def variable_queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """(variable name, series selector, label) of every `label_values(selector, label)` variable."""
    out = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", query)
        assert m, f"variable {var['name']}: only label_values(selector, label) is supported: {query}"
        out.append((var["name"], m.group(1), m.group(2)))
    return out


def alert_rules(groups: list[dict]) -> list[Query]:
    return [
        Query(f"alert {r['alert']} (group {g['name']})", r["expr"])
        for g in groups
        for r in g["rules"]
        if "alert" in r
    ]


def substitute(expr: str, dashboard: dict | None, window: str) -> str:
    """Grafana's built-in interval variables -> `window`; each template variable -> its
    "All" value. Anything left starting with `$` is an error."""
    out = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", window, expr)
    if dashboard:
        for var in dashboard.get("templating", {}).get("list", []):
            if var.get("type") == "datasource":
                continue
            all_value = var.get("allValue")
            assert var.get("includeAll") and all_value, f"variable {var['name']} needs includeAll + allValue"
            name = re.escape(var["name"])
            out = re.sub(rf"\$\{{{name}\}}|\[\[{name}\]\]|\${name}\b", all_value, out)
    assert "$" not in out, f"unresolved variable in {expr!r} -> {out!r}"
    return out


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression reads (label matchers, grouping labels, ranges,
    functions, keywords and numbers removed)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    s = re.sub(r"(?<![\w:])(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?(?![\w:])", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end():].lstrip().startswith("(") or m.group(0).lower() in PROMQL_KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def top_level(expr: str):
    """Indices of `expr` outside parentheses, braces, brackets and strings."""
    depth, i, quote = 0, 0, None
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            yield i
        i += 1


def split_top_level(expr: str) -> list[str]:
    """The operands of top-level `and` / `or` / `unless` (outside parentheses, braces, brackets
    and strings)."""
    parts, start = [], 0
    for i in top_level(expr):
        if i < start:
            continue
        m = re.match(r"(and|or|unless)\b", expr[i:])
        if m and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_:")):
            parts.append(expr[start:i])
            start = i + m.end()
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


def as_bool(expr: str) -> str:
    """`expr` with its top-level comparison turned into the `bool` form (`a > b` -> `a > bool b`),
    which keeps every series instead of filtering; unchanged if it has none."""
    for i in top_level(expr):
        m = re.match(r"==|!=|>=|<=|>|<", expr[i:])
        if m:
            if expr[i + m.end():].lstrip().startswith("bool"):
                return expr
            return f"{expr[:i + m.end()]} bool{expr[i + m.end():]}"
    return expr


# ---- the running stack ------------------------------------------------------------------------


@dataclass
class Prometheus:
    """A Prometheus server on a free loopback port with its own config, rules and storage."""

    base: str
    proc: subprocess.Popen
    log_path: Path
    workdir: tempfile.TemporaryDirectory

    @classmethod
    def start(cls, targets: list[dict], job_name: str, rule_groups: list[dict]) -> "Prometheus":
        workdir = tempfile.TemporaryDirectory(prefix="fused-prometheus-")
        wd = Path(workdir.name)
        (wd / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups}))
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": "1s"},
            "rule_files": [str(wd / "rules.yaml")],
            "scrape_configs": [{
                "job_name": job_name,
                "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
                "static_configs": targets,
            }],
        }
        (wd / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log_dir = Path(os.environ.get("FUSED_TEST_LOGS", "/tmp/fused-e2e-logs"))
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"prometheus-{port}.log"
        proc = subprocess.Popen(
            [prometheus_bin(), f"--config.file={wd / 'prometheus.yml'}",
             f"--storage.tsdb.path={wd / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
        )
        prom = cls(f"http://127.0.0.1:{port}", proc, log_path, workdir)
        prom.wait_ready()
        return prom

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.base}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after {timeout}s:\n{self.log_path.read_text()}")

    def api(self, path: str, **params) -> dict:
        r = httpx.get(f"{self.base}/api/v1/{path}", params=params, timeout=30)
        body = r.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str, at: float) -> list:
        data = self.api("query", query=expr, time=f"{at:.3f}")
        result = data["result"]
        return result if data["resultType"] in ("vector", "matrix") else [result]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.workdir.cleanup()


@dataclass
class Stack:
    shipped: Shipped
    prometheus: Prometheus
    daemons: dict[str, Daemon]
    exported: set[str]
    window: str
    evaluated_at: float
    load: dict = field(default_factory=dict)


def completion(daemon: Daemon, max_tokens: int, prompt: str, **extra) -> int:
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, **extra}
    return httpx.post(f"{daemon.base}/v1/completions", json=body, timeout=600).status_code


def streaming_chat(daemon: Daemon, max_tokens: int, prompt: str) -> int:
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{daemon.base}/v1/chat/completions", json=body, timeout=600) as r:
        for _ in r.iter_lines():
            pass
        return r.status_code


def disconnect_mid_stream(daemon: Daemon) -> None:
    body = {"model": MODEL_NAME, "prompt": "Write a very long essay about rivers.", "max_tokens": 500,
            "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{daemon.base}/v1/completions", json=body, timeout=600) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 6:
                break


def run_concurrently(calls) -> list:
    results = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = call()
        except httpx.HTTPError as e:
            results[i] = repr(e)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    return results


def drive_load(roomy: Daemon, tight: Daemon) -> dict:
    """Traffic on both replicas at once: `roomy` serves streaming and plain requests and sees a
    disconnect; `tight` (tiny KV pool, short queue) preempts and rejects."""
    roomy_calls = [lambda i=i: streaming_chat(roomy, 24, f"Tell me about the number {i}.") for i in range(4)]
    roomy_calls += [lambda i=i: completion(roomy, 16, f"Request {i}: a short poem about rain.") for i in range(4)]
    roomy_calls += [lambda: disconnect_mid_stream(roomy)]
    roomy_calls += [lambda: completion(roomy, 6, "Two answers: why is the sky blue?", n=2)]
    roomy_calls += [lambda: shared_prefix(roomy)]
    tight_calls = [lambda i=i: completion(tight, 64, f"Story {i}: once upon a time in a valley,") for i in range(8)]
    return {"statuses": run_concurrently(roomy_calls + tight_calls)}


def shared_prefix(daemon: Daemon) -> list[int]:
    """Two requests in turn whose prompts share a few KV pages' worth of tokens: the second's
    prefix comes from the cache (the prefix-hit panel's data)."""
    shared = "".join(f"Note {i}: the tide at pier {i} turns at {i % 12} o'clock. " for i in range(40))
    return [completion(daemon, 4, f"{shared}Question {q}: when does the tide turn?") for q in range(2)]


def exported_names(daemon: Daemon) -> set[str]:
    names = set()
    for line in daemon.metrics_text().splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def scraped_value(daemon: Daemon, name: str, **labels) -> float:
    """Sum of the daemon's samples named `name` whose labels include `labels`."""
    return sum(
        s.value
        for family in text_string_to_metric_families(daemon.metrics_text())
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def wait_for_abort(daemon: Daemon, timeout: float = 30.0) -> float:
    """The engine counts a disconnect when it next tries to stream to it: wait for that."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        aborted = scraped_value(daemon, "vllm:request_success_total", finished_reason="abort")
        if aborted:
            return aborted
        time.sleep(0.5)
    return 0.0


@pytest.fixture(scope="module")
def stack():
    shipped = render_chart()
    daemons = {}
    prometheus = None
    try:
        daemons["replica-a"] = Daemon("--max-seqs", "8", "--max-context", "1024", log_name="dash-roomy")
        daemons["replica-b"] = Daemon(
            "--max-seqs", "4", "--max-context", "1024", "--max-queue", "2", "--kv-memory-mib", "6",
            log_name="dash-tight",
        )
        # `endpoint`: the port name the Prometheus Operator records (production-stack's
        # ServiceMonitor scrapes the port `service-port`; one of its panels filters on it).
        targets = [
            {"targets": [f"127.0.0.1:{d.port}"],
             "labels": {"namespace": "fused-test", "pod": name, "node": f"node-{name[-1]}",
                        "endpoint": "service-port"}}
            for name, d in daemons.items()
        ]
        prometheus = Prometheus.start(targets, shipped.job_name, shipped.rule_groups)
        wait_for_targets(prometheus, shipped.job_name, len(daemons))
        started = time.time()
        load = drive_load(daemons["replica-a"], daemons["replica-b"])
        load["aborted"] = wait_for_abort(daemons["replica-a"])
        load["seconds"] = time.time() - started
        # Let the last counter values be scraped, then evaluate over a window that holds the load.
        time.sleep(3 * SCRAPE_INTERVAL_S)
        evaluated_at = time.time()
        window = f"{math.ceil(evaluated_at - started) + 5}s"
        exported = set().union(*(exported_names(d) for d in daemons.values()))
        load["preemptions"] = scraped_value(daemons["replica-b"], "vllm:num_preemptions_total")
        load["rejected"] = scraped_value(daemons["replica-b"], "fused_requests_rejected_total")
        load["prefix_hits"] = scraped_value(daemons["replica-a"], "vllm:prefix_cache_hits_total")
        print(f"load: {load}; evaluating at window {window}")
        yield Stack(shipped, prometheus, daemons, exported, window, evaluated_at, load)
    finally:
        if prometheus:
            prometheus.stop()
        codes = {name: d.stop() for name, d in daemons.items()}
        assert all(c == 0 for c in codes.values()), f"daemons exited with {codes} after SIGTERM"


def wait_for_targets(prometheus: Prometheus, job: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        up = prometheus.api("query", query=f'up{{job="{job}"}}')["result"]
        if len(up) == count and all(s["value"][1] == "1" for s in up):
            # A few scrapes, so rate() over the load window has samples from before it.
            time.sleep(3 * SCRAPE_INTERVAL_S)
            return
        time.sleep(0.5)
    raise AssertionError(f"prometheus did not scrape {count} daemons: {prometheus.api('targets')}")


# ---- the tests --------------------------------------------------------------------------------


def test_the_helpers_catch_what_they_must():
    """The extraction and checks below can fail: a removed vLLM metric is caught by name, grouping
    labels and functions are not taken for series, and filters become `bool` comparisons."""
    expr = 'sum by (pod) (rate(vllm:gpu_cache_usage_perc{model_name=~"a.*"}[5m])) / clamp_min(sum(x_total offset 1m), 1e-9)'
    assert metric_names(expr) == {"vllm:gpu_cache_usage_perc", "x_total"}
    assert as_bool("max by (pod) (a{b=\">\"}) > 0.95") == "max by (pod) (a{b=\">\"}) > bool 0.95"
    assert as_bool("up == 0") == "up == bool 0"
    assert as_bool("a > bool 1") == "a > bool 1"
    assert split_top_level("a >= 1\nand\nsum by (x) (deriv(b[5m])) > 0") == ["a >= 1", "sum by (x) (deriv(b[5m])) > 0"]
    assert split_top_level('a{x="and"} or b') == ['a{x="and"}', "b"]
    dashboard = {"templating": {"list": [{"name": "ns", "type": "query", "includeAll": True, "allValue": ".*"}]}}
    assert substitute('rate(a{n=~"$ns"}[$__rate_interval])', dashboard, "30s") == 'rate(a{n=~".*"}[30s])'
    with pytest.raises(AssertionError):
        substitute('a{n=~"$unknown"}', dashboard, "30s")


def test_the_chart_ships_the_panels_and_alerts_the_issue_asks_for():
    shipped = render_chart()
    exprs = " ".join(q.expr for d in shipped.dashboards for q in panel_queries(d))
    for name in [
        "vllm:kv_cache_usage_perc", "fused_kv_pages_mapped", "fused_kv_pages_free",
        "fused_kv_page_map_seconds_bucket", "fused_kv_map_stalls_total", "vllm:num_requests_running",
        "vllm:num_requests_waiting", "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
        "vllm:generation_tokens_total", "vllm:num_preemptions_total", "fused_vocab_base_tokens_total",
        "fused_vocab_patched_tokens_total", "fused_sched_budget_used_ratio_bucket",
        "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", "fused_kv_shared_pages",
        "fused_model_info",
    ]:
        assert name in exprs, f"no dashboard panel reads {name}"
    assert "by (node)" in exprs and "by (namespace, pod)" in exprs, "per-node and per-replica panels"
    alerts = {q.origin.split()[1] for q in alert_rules(shipped.rule_groups)}
    assert alerts >= {"FusedModelKVCacheSaturated", "FusedModelQueueGrowing", "FusedModelKVMapStalls",
                      "FusedModelReplicaNotReady"}, alerts


def test_every_series_read_is_exported_by_the_daemon(stack):
    queries = [q for d in stack.shipped.dashboards for q in panel_queries(d)] + alert_rules(stack.shipped.rule_groups)
    queries += [Query(f"variable {n}", sel) for d in stack.shipped.dashboards for n, sel, _ in variable_queries(d)]
    assert len(queries) >= 30, f"only {len(queries)} queries extracted"
    missing = [
        f"{q.origin}: {name}"
        for q in queries
        for name in sorted(metric_names(q.expr))
        if name not in stack.exported and name not in SCRAPE_SERIES
    ]
    print(f"{len(queries)} queries read {len(set().union(*(metric_names(q.expr) for q in queries)))} series names")
    assert not missing, "series the daemon does not export:\n" + "\n".join(missing)


def test_the_load_exercised_preemptions_rejections_and_disconnects(stack):
    load = stack.load
    assert load["preemptions"] > 0, f"the tiny KV pool preempted nothing: {load}"
    assert load["rejected"] > 0, f"the short queue rejected nothing: {load}"
    assert load["aborted"] >= 1, f"the disconnect was not counted as an abort: {load}"
    assert load["prefix_hits"] > 0, f"the shared-prefix requests found nothing cached: {load}"


def test_every_dashboard_query_returns_data(stack):
    failures, report = [], []
    for dashboard in stack.shipped.dashboards:
        for q in panel_queries(dashboard):
            expr = substitute(q.expr, dashboard, stack.window)
            result = stack.prometheus.query(expr, stack.evaluated_at)
            values = [s["value"][1] for s in result if "value" in s]
            report.append(f"{len(result):2d} series {values[:4]}  {q.origin}")
            if not result:
                failures.append(f"{q.origin}: empty result for {expr}")
            elif not any(math.isfinite(float(v)) for v in values):
                failures.append(f"{q.origin}: no finite value (no samples in the window?) {values} for {expr}")
        for name, selector, label in variable_queries(dashboard):
            selector = substitute(selector, dashboard, stack.window)
            series = stack.prometheus.api("series", **{"match[]": selector})
            values = sorted({s[label] for s in series if label in s})
            report.append(f"variable {name}: {values}")
            if not values:
                failures.append(f"variable {name}: no series of {selector} has label {label}")
    print("\n".join(report))
    assert not failures, "\n".join(failures)


def test_every_alert_rule_loads_and_its_expressions_return_data(stack):
    # Prometheus loaded the rendered rules and evaluates them without error.
    deadline = time.time() + 30
    while True:
        rules = [r for g in stack.prometheus.api("rules")["groups"] for r in g["rules"]]
        evaluated = [r for r in rules if not r.get("lastEvaluation", "0001").startswith("0001")]
        if rules and len(evaluated) == len(rules) and all(r["health"] == "ok" for r in rules):
            break
        assert time.time() < deadline, f"rules not healthy: {rules}"
        time.sleep(1)
    expected = {q.origin.split()[1] for q in alert_rules(stack.shipped.rule_groups)}
    assert {r["name"] for r in rules} == expected
    failures, report = [], []
    for q in alert_rules(stack.shipped.rule_groups):
        stack.prometheus.query(q.expr, stack.evaluated_at)  # the whole expression is valid
        for part in split_top_level(q.expr):
            expr = as_bool(part)
            result = stack.prometheus.query(expr, stack.evaluated_at)
            report.append(f"{len(result):2d} series {[s['value'][1] for s in result][:4]}  {q.origin}: {expr}")
            if not result:
                failures.append(f"{q.origin}: empty result for {expr}")
    print("\n".join(report))
    assert not failures, "\n".join(failures)


# ---- the stock vLLM dashboards ----------------------------------------------------------------


def stock_expr(expr: str, window: str) -> str:
    """A stock dashboard's query with its variables set: the window, and the served model for
    the model pickers (Grafana would offer it: the variable queries are checked too)."""
    out = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", window, expr)
    for variable, value in VARIABLE_VALUES.items():
        out = out.replace(variable, value or MODEL_NAME)
    assert "$" not in out, f"unresolved variable in {expr!r}"
    return out


def stock_queries() -> list[Query]:
    return [
        Query(f"{d.name} panel {p.title!r} ({d.source})", q)
        for d in STOCK_DASHBOARDS
        for p in d.panels
        for q in [*p.queries, *p.optional]
    ]


def test_the_stock_dashboards_read_only_series_the_daemon_exports(stack):
    queries = stock_queries()
    assert len(queries) >= 80, f"only {len(queries)} stock queries"
    missing = [
        f"{q.origin}: {name}"
        for q in queries
        for name in sorted(metric_names(q.expr))
        if name not in stack.exported and name not in SCRAPE_SERIES
    ]
    assert not missing, "series the daemon does not export:\n" + "\n".join(missing)
    print(f"skipped, production-stack router panels (its router exports these): {ROUTER_PANELS}")


def test_every_panel_of_the_stock_vllm_dashboards_returns_data(stack):
    failures, report = [], []
    for dashboard in STOCK_DASHBOARDS:
        for panel in dashboard.panels:
            for query in [*panel.queries, *panel.optional]:
                expr = stock_expr(query, stack.window)
                result = stack.prometheus.query(expr, stack.evaluated_at)
                values = [s["value"][1] for s in result if "value" in s]
                report.append(f"{len(result):2d} series {values[:3]}  {dashboard.name}: {panel.title}")
                if not any(math.isfinite(float(v)) for v in values):
                    if query in panel.optional:
                        report.append(f"   (empty on vLLM too without {panel.optional[query]})")
                    else:
                        failures.append(f"{dashboard.name} panel {panel.title!r}: no data ({values}) for {expr}")
        for name, definition in dashboard.variables.items():
            m = re.fullmatch(r"label_values\((?:(.*),\s*)?([a-zA-Z_]\w*)\)", definition)
            assert m, definition
            selector, label = m.group(1) and stock_expr(m.group(1), stack.window), m.group(2)
            params = {"match[]": selector} if selector else {}
            values = stack.prometheus.api(f"label/{label}/values", **params)
            report.append(f"variable {name}: {values}")
            if not values or (label == "model_name" and MODEL_NAME not in values):
                failures.append(f"{dashboard.name} variable {name}: {values} lacks {MODEL_NAME}")
    print("\n".join(report))
    print(f"skipped, production-stack router panels (its router exports these): {sorted(ROUTER_PANELS)}")
    assert not failures, "\n".join(failures)


def test_vllm_labels_and_units_on_the_scrape(stack):
    """vLLM's label set on every vllm:* sample, and vllm:cache_config_info in vLLM's units:
    `block_size` tokens per page, `num_gpu_blocks` pages, their product the token capacity."""
    for name, daemon in stack.daemons.items():
        families = list(text_string_to_metric_families(daemon.metrics_text()))
        for family in families:
            for sample in family.samples:
                if sample.name.startswith("vllm:"):
                    assert {"model_name", "engine"} <= sample.labels.keys(), (name, sample)
                    assert sample.labels["engine"] == "0"
        info = [s for f in families for s in f.samples if s.name == "vllm:cache_config_info"]
        assert len(info) == 1, info
        labels = info[0].labels
        block_size, blocks = int(labels["block_size"]), int(labels["num_gpu_blocks"])
        page_bytes = scraped_value(daemon, "fused_kv_page_bytes")
        assert page_bytes == 2 * 1024 * 1024 and block_size < page_bytes
        assert blocks == scraped_value(daemon, "fused_kv_pages_total"), "interleaved: one block per page"
        # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims x K and V x 4 bytes = 46,080 bytes a token.
        assert block_size == page_bytes // (30 * 3 * 64 * 2 * 4)
        # The weights the replica serves: SmolLM2 on the CPU, from the GGUF's Q4_1 blocks (vLLM
        # names a GGUF model's method `gguf`), computing in float32.
        model = [s for f in families for s in f.samples if s.name == "fused_model_info"]
        assert [(s.labels["dtype"], s.labels["quantization"], s.labels["architecture"], s.value)
                for s in model] == [("float32", "gguf", "llama", 1.0)], model
        n = scraped_value(daemon, "vllm:request_params_n_count")
        if name == "replica-a":
            assert scraped_value(daemon, "vllm:request_params_n_bucket", le="1.0") < n, "an n=2 request"
            assert scraped_value(daemon, "vllm:iteration_tokens_total_count") > 0
