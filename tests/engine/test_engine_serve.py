"""`vllm serve BUNDLE` is an OpenAI-compatible ULD server with no uld-specific code on the serving side."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from uld_vllm.reference import ReferenceDecoder

pytestmark = pytest.mark.vllm

STARTUP_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"vllm serve exited with code {server.returncode} before becoming healthy")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"vllm serve not healthy after {STARTUP_TIMEOUT_S} s")


def test_vllm_serve_answers_openai_completions_with_uld_greedy_tokens(bundle_factory, tmp_path):
    from openai import OpenAI
    from transformers import AutoTokenizer

    bundle = bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)
    port = free_port()
    vllm_cli = Path(sys.executable).parent / "vllm"
    command = [
        str(vllm_cli),
        "serve",
        str(bundle),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "256",
        "--enforce-eager",
        "--kv-cache-memory-bytes",
        str(64 << 20),
    ]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60, max_retries=0)
        prompt = "Who wrote the book"
        completion = client.completions.create(model=str(bundle), prompt=prompt, max_tokens=8, temperature=0.0)
        text = completion.choices[0].text
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    want = ReferenceDecoder.from_bundle(bundle).generate(
        [tokenizer(prompt).input_ids], 8, eos_token_id=tokenizer.eos_token_id
    )[0]
    assert text == tokenizer.decode(want, skip_special_tokens=True)
