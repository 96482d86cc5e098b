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

Not covered yet: the dashboards vLLM added to `examples/observability/dashboards/grafana/` most
recently (`vllm_overview`, `vllm_kv_cache`, `vllm_instances`, `vllm_service_status`,
`vllm_speculative_decoding`). They read series of newer vLLM releases this daemon does not export
(among others `http_requests_total` from vLLM's HTTP instrumentation,
`vllm:prompt_tokens_cached_total`, `vllm:num_requests_waiting_by_reason`), and panels that stay
empty on vLLM itself unless a KV connector, KV block-residency sampling or speculative decoding
is configured.

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
]
