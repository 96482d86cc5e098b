"""FusedModel status from real failures, as a real kubelet and scheduler report them (nothing here
patches a Pod's status): an image that does not exist, a daemon that exits at start, a Pod that
needs a GPU the node does not have. Each starts from the CPU example with one field changed."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLE, condition, get, kubectl, node_http_server, timed, wait_for

EXAMPLE_MODEL = yaml.safe_load(EXAMPLE.read_text())


def apply_variant(ns: str, name: str, change) -> float:
    """Applies the example named `name` (100m of CPU), changed by `change(spec)`; returns when it
    was applied."""
    model = copy.deepcopy(EXAMPLE_MODEL)
    model["metadata"]["name"] = name
    # Little CPU: these Pods never serve, and may linger while their namespace goes.
    model["spec"]["resources"]["cpu"] = "100m"
    change(model["spec"])
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(model))
    return time.monotonic()


def condition_with(ns: str, name: str, type_: str, status: str, reasons: set[str]):
    def probe():
        c = condition(get("fm", name, ns), type_)
        return c if c.get("status") == status and c.get("reason") in reasons else None
    return probe


def test_an_image_that_does_not_exist_is_degraded_within_a_minute(namespace):
    name = "missing-image"
    t = apply_variant(namespace, name, lambda spec: spec.update(image="localhost/fused-daemon:does-not-exist"))
    degraded = wait_for("Degraded=True for the image", condition_with(
        namespace, name, "Degraded", "True", {"ImagePullBackOff", "ErrImagePull"}), 60)
    timed("missing image -> Degraded", t)
    print(f"Degraded: {degraded}")
    assert "localhost/fused-daemon:does-not-exist" in degraded["message"], degraded
    ready = condition(get("fm", name, namespace), "Ready")
    assert ready["status"] == "False" and ready["reason"] in {"ImagePullBackOff", "ErrImagePull"}, ready


def test_a_daemon_that_exits_is_a_crash_loop_with_its_last_words(namespace, tmp_path: Path):
    # A file that fetches and verifies fine (its digest is pinned) but is no model: the daemon
    # refuses it at start and exits, again and again.
    blob = b"this is not a GGUF file\n" * 100
    (tmp_path / "not-a-model.gguf").write_bytes(blob)
    server, base = node_http_server(tmp_path)
    try:
        def change(spec):
            spec["baseModel"]["uri"] = f"{base}/not-a-model.gguf"
            spec["baseModel"]["sha256"] = hashlib.sha256(blob).hexdigest()

        name = "exits"
        t = apply_variant(namespace, name, change)
        degraded = wait_for("Degraded=True/CrashLoopBackOff", condition_with(
            namespace, name, "Degraded", "True", {"CrashLoopBackOff"}), 120)
        timed("daemon exiting -> Degraded/CrashLoopBackOff", t)
        # Between back-offs the kubelet starts the daemon again: the status must not flap.
        restarts, _ = daemon_attempts(namespace, name)
        seen = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            seen.add(condition(get("fm", name, namespace), "Degraded").get("reason"))
            now, waiting = daemon_attempts(namespace, name)
            if now > restarts and waiting == "CrashLoopBackOff":
                break  # one whole attempt: started, ran, failed, back-off again
            time.sleep(0.3)
        else:
            pytest.fail("the kubelet did not try the daemon again within 90 s")
        assert seen == {"CrashLoopBackOff"}, f"Degraded flapped across a restart: {seen}"
    finally:
        server.terminate()
        server.wait()
    print(f"Degraded: {degraded}")
    message = degraded["message"]
    assert "container daemon" in message and "exited with code 1" in message, message
    # The container's last message (its termination message: the end of its log) says why.
    pod = json.loads(kubectl("get", "pods", "-n", namespace, "-l", f"fused.dev/model={name}", "-o", "json"))["items"][0]
    last = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "daemon")["lastState"]["terminated"]
    assert last["message"].strip(), f"no termination message: {last}"
    assert last["message"].strip().splitlines()[-1] in message, (last, message)
    assert "bad checkpoint: /artifacts/model: unknown magic" in message, message
    assert condition(get("fm", name, namespace), "ArtifactsReady")["status"] == "True"


def daemon_attempts(namespace: str, name: str) -> tuple[int, str | None]:
    """The daemon container's restart count and waiting reason (None while it runs)."""
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l", f"fused.dev/model={name}", "-o", "json"))["items"]
    (daemon,) = [c for p in pods for c in p["status"].get("containerStatuses", []) if c["name"] == "daemon"]
    return daemon["restartCount"], (daemon["state"].get("waiting") or {}).get("reason")


def test_a_pod_that_needs_a_gpu_is_not_scheduled_for_lack_of_gpus(namespace):
    name = "needs-gpu"
    t = apply_variant(namespace, name, lambda spec: spec["resources"].update(gpus=1))
    scheduled = wait_for("Scheduled=False/InsufficientGPU", condition_with(
        namespace, name, "Scheduled", "False", {"InsufficientGPU"}), 60)
    timed("GPU Pod -> Scheduled=False/InsufficientGPU", t)
    print(f"Scheduled: {scheduled}")
    assert "nvidia.com/gpu" in scheduled["message"], scheduled
    ready = condition(get("fm", name, namespace), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InsufficientGPU"), ready
    events = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json",
                                "--field-selector", f"involvedObject.name={name}"))["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "InsufficientGPU" for e in events), events

