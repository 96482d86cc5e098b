"""Fixtures for end-to-end tests: the real fused-daemon binary serving the real SmolLM2 weights,
talked to over HTTP on loopback by clients nobody here wrote (the official `openai` package,
`prometheus_client`'s parser)."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("FUSED_DAEMON_BIN", ROOT / "target" / "release" / "fused-daemon"))
MODEL_NAME = "smollm2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """One `fused-daemon serve` process on a free loopback port."""

    def __init__(self, *extra: str, log_name: str = "daemon", argv=None, port: int | None = None):
        """`fused-daemon serve --port P --served-model-name smollm2 EXTRA...`, or, with `argv`,
        exactly `fused-daemon ARGV...` (which must name `port`)."""
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} is missing: run `cargo build --release -p fused-daemon` first")
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        log_dir = Path(os.environ.get("FUSED_TEST_LOGS", "/tmp/fused-e2e-logs"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{log_name}-{self.port}.log"
        self.log = open(self.log_path, "wb")
        if argv is not None:
            args = [str(BINARY), *argv]
        else:
            args = [str(BINARY), "serve", "--port", str(self.port), "--served-model-name", MODEL_NAME, *extra]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}; log:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.base}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"daemon not ready after {timeout}s; log:\n{self.log_path.read_text()}")

    def metrics_text(self) -> str:
        return httpx.get(f"{self.base}/metrics", timeout=10).text

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def daemon():
    d = Daemon("--max-seqs", "16", "--max-context", "2048", log_name="main")
    yield d
    code = d.stop()
    assert code == 0, f"daemon exited with {code} after SIGTERM"


@pytest.fixture(scope="session")
def client(daemon):
    from openai import OpenAI

    return OpenAI(base_url=f"{daemon.base}/v1", api_key="unused", max_retries=0, timeout=120)
