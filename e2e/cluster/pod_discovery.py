"""Kubernetes Pod discovery for a Prometheus built without it (Debian's package leaves out
`kubernetes_sd_configs`): an HTTP service-discovery endpoint (`http_sd_configs`) that lists the
real Pods through the API server and gives each one the labels Prometheus' own Kubernetes SD
gives with `role: pod` — one target per container port (`__address__` = Pod IP:port), or per
container without ports, with `__meta_kubernetes_namespace`, `__meta_kubernetes_pod_{name,ip,
node_name,phase,ready,uid}`, `__meta_kubernetes_pod_label_<name>` / `labelpresent_<name>`,
`__meta_kubernetes_pod_annotation_<name>` / `annotationpresent_<name>` and
`__meta_kubernetes_pod_container_{name,init,port_name,port_number,port_protocol}` (names
sanitised as Prometheus does). The shipped job's `relabel_configs` then run unchanged.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import kubectl

PREFIX = "__meta_kubernetes_"


def sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets(pod: dict) -> list[dict]:
    """The target groups Prometheus' Kubernetes SD (role: pod) makes of one Pod."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    ip = status.get("podIP")
    if not ip:
        return []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
    labels = {
        f"{PREFIX}namespace": meta["namespace"],
        f"{PREFIX}pod_name": meta["name"],
        f"{PREFIX}pod_ip": ip,
        f"{PREFIX}pod_uid": meta["uid"],
        f"{PREFIX}pod_node_name": spec.get("nodeName", ""),
        f"{PREFIX}pod_phase": status.get("phase", ""),
        f"{PREFIX}pod_ready": str(ready).lower(),
    }
    for kind, values in (("label", meta.get("labels", {})), ("annotation", meta.get("annotations", {}))):
        for key, value in values.items():
            labels[f"{PREFIX}pod_{kind}_{sanitize(key)}"] = value
            labels[f"{PREFIX}pod_{kind}present_{sanitize(key)}"] = "true"
    groups = []
    containers = [(c, "false") for c in spec.get("containers", [])]
    containers += [(c, "true") for c in spec.get("initContainers", [])]
    for container, init in containers:
        base = {**labels, f"{PREFIX}pod_container_name": container["name"],
                f"{PREFIX}pod_container_init": init}
        ports = container.get("ports") or []
        if not ports:
            groups.append({"targets": [ip], "labels": base})
        for port in ports:
            groups.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": {
                **base,
                f"{PREFIX}pod_container_port_name": port.get("name", ""),
                f"{PREFIX}pod_container_port_number": str(port["containerPort"]),
                f"{PREFIX}pod_container_port_protocol": port.get("protocol", "TCP"),
            }})
    return groups


class PodDiscovery:
    """Serves the target groups of the Pods in `namespace` on 127.0.0.1 (a free port)."""

    def __init__(self, namespace: str):
        discovery = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                pods = json.loads(kubectl("get", "pods", "-n", discovery.namespace, "-o", "json"))["items"]
                body = json.dumps([g for p in pods for g in pod_targets(p)]).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.namespace = namespace
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
