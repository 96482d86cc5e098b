"""The panels of the dashboards people run against vLLM, as a test fixture: each panel's PromQL
queries, written out here from the dashboards' definitions (the JSON itself is not copied), with
where each dashboard comes from. `test_dashboards.py` evaluates every query on a real Prometheus
scraping loaded daemons; a panel without data fails it.

Sources (the files as of the versions read for this fixture):
- vllm-project/vllm `examples/observability/prometheus_grafana/grafana.json` ("vLLM"),
  `examples/observability/dashboards/grafana/performance_statistics.json` and
  `query_statistics.json`;
- vllm-project/production-stack `helm/dashboards/vllm-model-metrics-dashboard.json` and
  `helm/dashboards/vllm-dashboard.json` (its engine panels; the router's panels read series
  that production-stack's router exports about itself, listed in ROUTER_PANELS).

- vllm-project/vllm `examples/observability/dashboards/grafana/vllm_overview.json` ("vLLM /
  Overview", the newest of them: SLO stats, per-model table, HTTP panels).

Not covered yet: the other dashboards vLLM added next to the overview (`vllm_kv_cache`,
`vllm_instances`, `vllm_service_status`, `vllm_speculative_decoding`): much of them stays empty on
vLLM itself unless a KV connector, KV block-residency sampling or speculative decoding is
configured, and they were not written out here.

Grafana variables are written as in the dashboards (`$model_name`, `$Deployment_id`,
`$__rate_interval`, `$__range`); the test gives each the served model name or the load window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

QUANTILES = (0.99, 0.95, 0.9, 0.5)


@dataclass
class Panel:
    title: str
    queries: list[str]
    # Queries that are empty on vLLM too unless a feature is configured (the reason); the
    # panel still needs data from its other queries.
    optional: dict[str, str] = field(default_factory=dict)


@dataclass
class StockDashboard:
    name: str
    source: str
    panels: list[Panel]
    # Grafana variable -> the query that lists its values.
    variables: dict[str, str] = field(default_factory=dict)


def sel(matcher: str) -> str:
    return f"{{{matcher}}}" if matcher else ""


def quantile(q: float, histogram: str, matcher: str = "", by: str = "le",
             window: str = "$__rate_interval") -> str:
    return f"histogram_quantile({q}, sum by({by}) (rate({histogram}_bucket{sel(matcher)}[{window}])))"


def mean_rate(histogram: str, matcher: str = "", window: str = "$__rate_interval") -> str:
    return (f"rate({histogram}_sum{sel(matcher)}[{window}])\n/\n"
            f"rate({histogram}_count{sel(matcher)}[{window}])")


def mean_over(histogram: str, window: str = "$__range") -> str:
    return f"(sum(increase({histogram}_sum[{window}])) / sum(increase({histogram}_count[{window}])))"


def latency_panel(title: str, histogram: str, matcher: str) -> Panel:
    """P99, P95, P90, P50 and the mean over the rate interval (vLLM's dashboard layout)."""
    return Panel(title, [quantile(q, histogram, matcher) for q in QUANTILES]
                 + [mean_rate(histogram, matcher)])


def vllm_model_panels(tpot_panel: Panel, matcher: str) -> list[Panel]:
    """The panels vLLM's example dashboard and production-stack's model dashboard share."""
    m = sel(matcher)
    w = "[$__rate_interval]"
    return [
        latency_panel("E2E Request Latency", "vllm:e2e_request_latency_seconds", matcher),
        Panel("Token Throughput", [f"rate(vllm:prompt_tokens_total{m}{w})",
                                   f"rate(vllm:generation_tokens_total{m}{w})"]),
        tpot_panel,
        Panel("Scheduler State", [f"vllm:num_requests_running{m}", f"vllm:num_requests_waiting{m}"]),
        latency_panel("Time To First Token Latency", "vllm:time_to_first_token_seconds", matcher),
        Panel("Cache Utilization", [f"vllm:kv_cache_usage_perc{m}"]),
        Panel("Request Prompt Length",
              [f"sum by(le) (increase(vllm:request_prompt_tokens_bucket{m}{w}))"]),
        Panel("Request Generation Length",
              [f"sum by(le) (increase(vllm:request_generation_tokens_bucket{m}{w}))"]),
        Panel("Finish Reason",
              [f"sum by(finished_reason) (increase(vllm:request_success_total{m}{w}))"]),
        Panel("Queue Time", [f"rate(vllm:request_queue_time_seconds_sum{m}{w})"]),
        Panel("Requests Prefill and Decode Time",
              [f"rate(vllm:request_prefill_time_seconds_sum{m}{w})",
               f"rate(vllm:request_decode_time_seconds_sum{m}{w})"]),
        Panel("Max Generation Token in Sequence Group",
              [f"rate(vllm:request_max_num_generation_tokens_sum{m}{w})"]),
    ]


MODEL = 'model_name="$model_name"'
DEPLOYMENT = 'model_name=~"$Deployment_id"'


def performance_statistics() -> StockDashboard:
    e2e, ttft, itl = ("vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds",
                      "vllm:inter_token_latency_seconds")

    def stats(name: str, histogram: str) -> list[Panel]:
        return [Panel(f"{name} (P{int(q * 100)})", [quantile(q, histogram, window="$__range")])
                for q in (0.99, 0.90, 0.50)] + [Panel(f"{name} (Avg)", [mean_over(histogram)])]

    panels = [Panel("E2E Latency over Time", [mean_rate(e2e).replace("\n/\n", " / ")])]
    panels += stats("E2E Latency", e2e)
    panels += [Panel("TTFT Over Time", [mean_rate(ttft).replace("\n/\n", " / ")])]
    panels += stats("TTFT", ttft)
    panels += [Panel("ITL (Time Per Output Token) Over Time",
                     [mean_rate(itl).replace("\n/\n", " / ")]
                     + [quantile(q, itl) for q in (0.50, 0.90, 0.99)])]
    panels += stats("ITL", itl)
    panels += [Panel("TPS (Tokens Per Second) Over Time", [
        "rate(vllm:generation_tokens_total[$__rate_interval])",
        "rate(vllm:prompt_tokens_total[$__rate_interval])",
        "rate(vllm:iteration_tokens_total_count[$__rate_interval])",
    ])]
    return StockDashboard(
        "vLLM Performance Statistics",
        "vllm-project/vllm examples/observability/dashboards/grafana/performance_statistics.json",
        panels,
        {"Deployment_id": "label_values(vllm:generation_tokens_total, model_name)"},
    )


def query_statistics() -> StockDashboard:
    w = "[$__rate_interval]"
    e2e, prompt = "vllm:e2e_request_latency_seconds", "vllm:request_prompt_tokens"
    by = "le, model_name"
    panels = [
        Panel("Successful Requests Over Time",
              [f"sum by (model_name) (\n  rate(vllm:request_success_total{{{DEPLOYMENT}}}{w})\n)"]),
        Panel("Requests Avg Rate", [f"sum(rate(vllm:request_success_total{{{DEPLOYMENT}}}{w}))"]),
    ]
    panels += [Panel(f"p{int(q * 100)} Latency", [quantile(q, e2e, DEPLOYMENT, by)])
               for q in (0.50, 0.90, 0.99)]
    panels += [Panel("Input Token Size Distribution",
                     [f"sum by ({by}) (rate({prompt}_bucket{{{DEPLOYMENT}}}{w}))"])]
    panels += [Panel(f"Input Token Size p{int(q * 100)}", [quantile(q, prompt, DEPLOYMENT, by)])
               for q in (0.90, 0.50, 0.99)]
    panels += [
        Panel("Input Token Size Avg",
              [f"sum(rate(vllm:prompt_tokens_total{{{DEPLOYMENT}}}{w}))\n/\n"
               f"sum(rate(vllm:request_success_total{{{DEPLOYMENT}}}{w}))"]),
        Panel("Input Tokens Over Time",
              [f"sum by (model_name) (rate(vllm:prompt_tokens_total{{{DEPLOYMENT}}}{w}))"]),
        Panel("Input Tokens/Sec Avg", [f"sum(rate(vllm:prompt_tokens_total{{{DEPLOYMENT}}}{w}))"]),
        Panel("Output Tokens Over Time",
              [f"sum by (model_name) (rate(vllm:generation_tokens_total{{{DEPLOYMENT}}}{w}))"]),
        Panel("Output Tokens/Sec Avg",
              [f"sum(rate(vllm:generation_tokens_total{{{DEPLOYMENT}}}{w}))"]),
    ]
    return StockDashboard(
        "vLLM Query Statistics",
        "vllm-project/vllm examples/observability/dashboards/grafana/query_statistics.json",
        panels,
        {"Deployment_id": "label_values(vllm:request_success_total, model_name)"},
    )


def production_stack_overview() -> StockDashboard:
    """The engine panels of production-stack's main dashboard (no model filter: every engine)."""
    return StockDashboard(
        "production-stack vLLM Dashboard (engine panels)",
        "vllm-project/production-stack helm/dashboards/vllm-dashboard.json",
        [
            Panel("Average Latency", ["avg(vllm:e2e_request_latency_seconds_sum) / "
                                      "avg(vllm:e2e_request_latency_seconds_count)"]),
            Panel("Request latency distribution",
                  ["sum by(le) (vllm:e2e_request_latency_seconds_bucket)"]),
            Panel("Average ITL", ["avg(vllm:request_time_per_output_token_seconds_sum) / "
                                  "avg(vllm:request_time_per_output_token_seconds_count)"]),
            Panel("Request TTFT distribution",
                  ["sum by(le) (vllm:time_to_first_token_seconds_bucket)"]),
            Panel("Number of Running Requests", ["vllm:num_requests_running"]),
            Panel("Number of Pending Requests", ["vllm:num_requests_waiting"]),
            Panel("GPU KV Usage Percentage", ["vllm:kv_cache_usage_perc"]),
            # `endpoint` is the port name production-stack's ServiceMonitor scrapes.
            Panel("GPU KV Cache Hit Rate", ['vllm:gpu_prefix_cache_hits_total{endpoint="service-port"}'
                                            " / vllm:gpu_prefix_cache_queries_total"]),
            Panel("GPU Cache Usage (%)", ["vllm:kv_cache_usage_perc"]),
        ],
    )


# The overview's filter on every vLLM series: job, model and instance pickers (All = `.*`).
OVERVIEW = 'job=~"$job", model_name=~"$model_name", instance=~"$instance"'
HTTP = 'job=~"$job", instance=~"$instance"'
RI = "[$__rate_interval]"


def ratio(numerator: str, denominator: str) -> str:
    """`a / (b > 0)`: no value rather than NaN when nothing happened."""
    return f"{numerator} / ({denominator} > 0)"


def overview_quantiles(histogram: str, qs=(0.5, 0.95, 0.99), mean: bool = True) -> list[str]:
    out = [f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket{{{OVERVIEW}}}{RI})))"
           for q in qs]
    if mean:
        out.append(ratio(f"sum(rate({histogram}_sum{{{OVERVIEW}}}{RI}))",
                         f"sum(rate({histogram}_count{{{OVERVIEW}}}{RI}))"))
    return out


def vllm_overview() -> StockDashboard:
    f, rng = OVERVIEW, "[$__range]"
    ttft, itl = "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds"
    e2e, tpot = "vllm:e2e_request_latency_seconds", "vllm:request_time_per_output_token_seconds"
    queue = "vllm:request_queue_time_seconds"

    def p95_stat(histogram):
        return f"histogram_quantile(0.95, sum by (le) (rate({histogram}_bucket{{{f}}}{RI})))"

    def slo(histogram, variable):
        return ratio(f'sum(rate({histogram}_bucket{{{f}, le="${variable}"}}{RI}))',
                     f"sum(rate({histogram}_count{{{f}}}{RI}))")

    def per_model_p95(histogram):
        return f"histogram_quantile(0.95, sum by (le, model_name) (rate({histogram}_bucket{{{f}}}{rng})))"

    def cache_ratio(name):
        return ratio(f"sum(rate(vllm:{name}_hits_total{{{f}}}{RI}))",
                     f"sum(rate(vllm:{name}_queries_total{{{f}}}{RI}))")

    def share_by_bucket(histogram):
        return (f"sum by (le) (increase({histogram}_bucket{{{f}}}{rng})) / on () group_left () "
                f"(sum(increase({histogram}_count{{{f}}}{rng})) > 0)")

    success = f"vllm:request_success_total{{{f}}}"
    panels = [
        Panel("Requests / s", [f"sum(rate({success}{RI}))"]),
        Panel("Input tok/s", [f"sum(rate(vllm:prompt_tokens_total{{{f}}}{RI}))"]),
        Panel("Output tok/s", [f"sum(rate(vllm:generation_tokens_total{{{f}}}{RI}))"]),
        Panel("5xx ratio", [f'(sum(rate(http_requests_total{{{HTTP}, status="5xx"}}{RI})) or vector(0)) / '
                            f"(sum(rate(http_requests_total{{{HTTP}}}{RI})) > 0)"]),
        Panel("TTFT p95", [p95_stat(ttft)]),
        Panel("ITL p95", [p95_stat(itl)]),
        Panel("E2E p95", [p95_stat(e2e)]),
        Panel("Unreachable", ['count(up{job=~"$job"} == 0) or vector(0)']),
        Panel("Engines", [f"count(vllm:num_requests_running{{{f}}})"]),
        Panel("Running", [f"sum(vllm:num_requests_running{{{f}}})"]),
        Panel("Waiting", [f"sum(vllm:num_requests_waiting{{{f}}})"]),
        Panel("KV cache", [f"max(vllm:kv_cache_usage_perc{{{f}}})"]),
        Panel("Preemptions", [f"sum(rate(vllm:num_preemptions_total{{{f}}}{RI}))"]),
        Panel("Prefix hits", [cache_ratio("prefix_cache")]),
        Panel("TTFT SLO", [slo(ttft, "ttft_slo")]),
        Panel("TPOT SLO", [slo(tpot, "tpot_slo")]),
        Panel("Per-model summary (selected time range)", [
            "count by (model_name) (group by (model_name, instance) "
            f"(last_over_time(vllm:num_requests_running{{{f}}}{rng})))",
            f"sum by (model_name) (rate({success}{rng}))",
            f"sum by (model_name) (rate(vllm:generation_tokens_total{{{f}}}{rng}))",
            per_model_p95(ttft), per_model_p95(itl), per_model_p95(e2e),
            ratio(f'sum by (model_name) (rate(vllm:request_success_total{{{f}, finished_reason="error"}}{rng}))',
                  f"sum by (model_name) (rate({success}{rng}))"),
            f"max by (model_name) (max_over_time(vllm:kv_cache_usage_perc{{{f}}}{rng}))",
            f"round(sum by (model_name) (increase(vllm:num_preemptions_total{{{f}}}{rng})))",
        ]),
        Panel("Time to first token (TTFT)", overview_quantiles(ttft)),
        Panel("Inter-token latency (ITL)", overview_quantiles(itl)),
        Panel("Time per output token (TPOT)", overview_quantiles(tpot)),
        Panel("End-to-end latency", overview_quantiles(e2e)),
        Panel("Queue time", overview_quantiles(queue)),
        Panel("Mean time per request phase", [
            ratio(f"sum(rate(vllm:request_{phase}_time_seconds_sum{{{f}}}{RI}))",
                  f"sum(rate(vllm:request_{phase}_time_seconds_count{{{f}}}{RI}))")
            for phase in ("queue", "prefill", "decode")
        ]),
        Panel("TTFT distribution", [f"sum by (le) (rate({ttft}_bucket{{{f}}}{RI}))"]),
        Panel("Inter-token latency distribution", [f"sum by (le) (rate({itl}_bucket{{{f}}}{RI}))"]),
        Panel("End-to-end latency distribution", [f"sum by (le) (rate({e2e}_bucket{{{f}}}{RI}))"]),
        Panel("Token throughput", [
            f"sum by (model_name) (rate(vllm:prompt_tokens_total{{{f}}}{RI}))",
            f"sum by (model_name) (rate(vllm:generation_tokens_total{{{f}}}{RI}))",
        ]),
        Panel("Finished requests by reason", [f"sum by (finished_reason) (rate({success}{RI}))"]),
        Panel("Scheduler queue", [
            f"sum(vllm:num_requests_running{{{f}}})",
            f'sum(vllm:num_requests_waiting_by_reason{{{f}, reason="capacity"}})',
            f'sum(vllm:num_requests_waiting_by_reason{{{f}, reason="deferred"}})',
        ]),
        Panel("KV cache usage", [f"{agg}(vllm:kv_cache_usage_perc{{{f}}})" for agg in ("max", "avg", "min")]),
        Panel("Preemptions / s", [f"sum(rate(vllm:num_preemptions_total{{{f}}}{RI}))"]),
        Panel("Tokens per engine step",
              overview_quantiles("vllm:iteration_tokens_total", qs=(0.5, 0.99))),
        Panel("Cache hit rates", [cache_ratio("prefix_cache")], optional={
            cache_ratio("external_prefix_cache"): "a KV connector's cross-instance cache",
            cache_ratio("mm_cache"): "multimodal inputs",
        }),
        Panel("Prompt tokens by source", [
            f'sum(rate(vllm:prompt_tokens_by_source_total{{{f}, source="{source}"}}{RI}))'
            for source in ("local_compute", "local_cache_hit", "external_kv_transfer")
        ]),
        Panel("Prompt length", overview_quantiles("vllm:request_prompt_tokens")),
        Panel("Output length", overview_quantiles("vllm:request_generation_tokens")),
        Panel("Finish reason share", [
            f"sum by (finished_reason) (rate({success}{RI})) / ignoring (finished_reason) "
            f"group_left () (sum(rate({success}{RI})) > 0)"
        ]),
        Panel("Prompt length distribution", [share_by_bucket("vllm:request_prompt_tokens")]),
        Panel("Output length distribution", [share_by_bucket("vllm:request_generation_tokens")]),
        Panel("HTTP requests by status", [f"sum by (status) (rate(http_requests_total{{{HTTP}}}{RI}))"]),
        Panel("HTTP requests by endpoint", [f"sum by (handler) (rate(http_requests_total{{{HTTP}}}{RI}))"]),
        Panel("HTTP mean duration by endpoint", [ratio(
            f"sum by (handler) (rate(http_request_duration_seconds_sum{{{HTTP}}}{RI}))",
            f"sum by (handler) (rate(http_request_duration_seconds_count{{{HTTP}}}{RI}))")]),
    ]
    return StockDashboard(
        "vLLM / Overview",
        "vllm-project/vllm examples/observability/dashboards/grafana/vllm_overview.json",
        panels,
        {
            "job": "label_values(vllm:num_requests_running, job)",
            "model_name": 'label_values(vllm:num_requests_running{job=~"$job"}, model_name)',
            "instance": 'label_values(vllm:num_requests_running{job=~"$job", model_name=~"$model_name"}, instance)',
        },
    )


# Values the test gives the dashboards' variables: the served model for the model pickers,
# All for the others, and the SLO pickers' defaults (1 s TTFT, 100 ms TPOT).
VARIABLE_VALUES = {
    "$model_name": None,  # the served model name
    "$Deployment_id": None,
    "$job": ".*",
    "$instance": ".*",
    "$ttft_slo": "1.0",
    "$tpot_slo": "0.1",
}


# production-stack's router reports these about itself (instances it routes to, its QPS and its
# own host's CPU, memory and disk); no engine exports them, vLLM's included.
ROUTER_PANELS = {
    "Available vLLM instances": "sum(max by (server) (vllm:healthy_pods_total))",
    "Current QPS": "vllm:current_qps",
    "CPU Usage (%)": "router_cpu_usage_percent",
    "Memory Usage (%)": "router_memory_usage_percent",
    "Disk Usage (%)": "router_disk_usage_percent",
}

STOCK_DASHBOARDS = [
    StockDashboard(
        "vLLM (vLLM's example)",
        "vllm-project/vllm examples/observability/prometheus_grafana/grafana.json",
        vllm_model_panels(latency_panel("Inter Token Latency", "vllm:inter_token_latency_seconds",
                                        MODEL), MODEL),
        {"model_name": "label_values(model_name)"},
    ),
    performance_statistics(),
    query_statistics(),
    StockDashboard(
        "production-stack vLLM model metrics",
        "vllm-project/production-stack helm/dashboards/vllm-model-metrics-dashboard.json",
        vllm_model_panels(latency_panel("Time Per Output Token Latency",
                                        "vllm:request_time_per_output_token_seconds", MODEL), MODEL),
        {"model_name": "label_values(model_name)"},
    ),
    production_stack_overview(),
    vllm_overview(),
]
