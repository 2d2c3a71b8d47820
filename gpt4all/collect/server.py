"""A local llama.cpp OpenAI-compatible server (llama_cpp.server) started and stopped around collection."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from gpt4all.core.models import resolve_gguf

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """`python -m llama_cpp.server` on a loopback port; a context manager that yields the base_url."""

    def __init__(
        self,
        model_path: str | None = None,
        model_alias: str = "local",
        host: str = "127.0.0.1",
        port: int = 0,
        n_ctx: int = 2048,
        n_threads: int = 1,
        startup_timeout_s: float = 120,
        log_path: str | Path | None = None,
        extra_args: Sequence[str] = (),
    ):
        self.model_path = resolve_gguf(model_path)
        self.model_alias, self.host, self.n_ctx, self.n_threads = model_alias, host, n_ctx, n_threads
        self.port = port or free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = list(extra_args)  # more llama_cpp.server flags, e.g. ["--logits_all", "True"]
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> str:
        cmd = [
            sys.executable, "-m", "gpt4all.core.llama_server",
            "--model", str(self.model_path), "--model_alias", self.model_alias,
            "--host", self.host, "--port", str(self.port),
            "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads),
            *self.extra_args,
        ]
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        env = {k: v for k, v in os.environ.items() if "API_KEY" not in k}
        log.info("starting llama.cpp server on %s with %s", self.base_url, self.model_path.name)
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited with code {self.proc.returncode} while starting"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return self.base_url
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"llama.cpp server not ready on {self.base_url} after {self.startup_timeout_s}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
