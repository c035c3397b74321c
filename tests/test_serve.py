"""`evospec serve` end to end: vLLM's OpenAI-compatible server with the EvoSpec plugin's living drafter
(online alignment on), `/v1/completions` and `/v1/chat/completions` streamed by the real `openai` client,
output equal to the target's greedy output; and the command's one-line errors. The server and the client run in vLLM's environment (.venv-vllm, as tests/test_vllm.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest
import torch

from evospec.bundle.export import export_drafter
from evospec.eval.loadtest import greedy_reference
from evospec.eval.soak import post_status
from evospec.runtime.vocab.frequencies import count_tokens
from evospec.serving.process import free_port
from evospec.train.demo_pair import ASSET_DIR

from .test_bench import CODE, PROSE
from .test_cli import run
from .test_vllm import VLLM_BIN, vllm_bin, vllm_missing  # noqa: F401  (vllm_bin: skips where .venv-vllm is absent)

TARGET = ASSET_DIR / "target"
PROMPT = [5, 17, 33, 2, 40, 41, 42, 43]
MAX_TOKENS = 40
CLIENT = """
import json, sys
from openai import OpenAI
from evospec.eval.loadtest import LoadSettings, stream_one
base, prompt, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
client = OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
result = stream_one(client, "target", prompt, LoadSettings(max_tokens=n))
chunks = sum(1 for _ in client.completions.create(model="target", prompt=prompt, max_tokens=4, temperature=0,
                                                 stream=True))
print(json.dumps({"ids": result.token_ids, "text": result.text, "chunks": chunks}))
"""


def living_export(tmp_path, vocab: str = "evospec:128"):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(TARGET)(CODE + PROSE)["input_ids"]
    count_tokens([[ids]], 512, "test", successors=8).save(tmp_path / "freq.json")
    export_drafter(tmp_path / "living", "vllm", vocab, drafter_dir=ASSET_DIR / "drafter",
                   frequencies=tmp_path / "freq.json")
    return tmp_path / "living"


def wait_healthy(base: str, process: subprocess.Popen, log, deadline_s: float = 240) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        assert process.poll() is None, f"server exited: {log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"no /health within {deadline_s} s: {log.read_text()[-3000:]}")


CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
CHAT_CLIENT = """
import json, sys
from openai import OpenAI
base, messages, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
client = OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
prompt, ids, text, chunks = None, [], [], 0
for chunk in client.chat.completions.create(model="target", messages=messages, max_tokens=n, temperature=0, stream=True,
                                            extra_body={"return_token_ids": True, "ignore_eos": True}):
    chunks += 1
    prompt = prompt or (chunk.model_extra or {}).get("prompt_token_ids")
    for choice in chunk.choices:
        ids += (choice.model_extra or {}).get("token_ids") or []
        text.append(choice.delta.content or "")
print(json.dumps({"prompt": prompt, "ids": ids, "text": "".join(text), "chunks": chunks}))
"""


@pytest.fixture(scope="module")
def aligned_server(tmp_path_factory):
    """One server for the module's end-to-end tests: the living drafter with online alignment on
    (``evospec:128+align``) and a chat template (the demo tokenizer has none), eager, on a free port."""
    if (reason := vllm_missing()) is not None:
        pytest.skip(reason)
    tmp_path = tmp_path_factory.mktemp("serve")
    drafter = living_export(tmp_path, "evospec:128+align")
    (tmp_path / "chat.jinja").write_text(CHAT_TEMPLATE)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with open(log, "wb") as out:  # cwd outside the checkout: a stale evospec.egg-info there hides the entry point
        server = subprocess.Popen(
            [str(VLLM_BIN / "evospec"), "serve", "--target", str(TARGET), "--drafter", str(drafter), "--port", str(port),
             "--eager", "--max-model-len", "128", "--max-num-seqs", "4", "--draft-depth", "4",
             "--", "--chat-template", str(tmp_path / "chat.jinja")],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        wait_healthy(base, server, log)
        yield base, log
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def run_client(vllm_bin, script: str, *args: str) -> dict:  # noqa: F811
    client = subprocess.run([str(vllm_bin / "python"), "-c", script, *args], check=False, capture_output=True,
                            text=True, timeout=300)
    assert client.returncode == 0, client.stderr[-3000:]
    return json.loads(client.stdout.strip().splitlines()[-1])


@pytest.mark.vllm
def test_serve_streams_the_targets_greedy_output_through_the_living_drafter(vllm_bin, aligned_server):  # noqa: F811
    base, log = aligned_server
    streamed = run_client(vllm_bin, CLIENT, base, json.dumps(PROMPT), str(MAX_TOKENS))
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert post_status(base, {"model": "target", "prompt": "x", "max_tokens": -1}) == 400  # malformed: a 4xx
    assert post_status(base, {"model": "nope", "prompt": "x", "max_tokens": 4}) == 404
    from transformers import AutoTokenizer

    expected = greedy_reference(TARGET, [PROMPT], MAX_TOKENS)[0]
    assert streamed["ids"] == expected  # exact: vLLM's verification, the living drafter only proposes
    assert streamed["text"] == AutoTokenizer.from_pretrained(TARGET).decode(expected)
    assert streamed["chunks"] >= 2  # it streamed
    server_log = log.read_text()
    assert "Resolved architecture: Eagle3EvoSpecLlamaForCausalLM" in server_log
    assert "EvoSpec drafter: evospec:128, K=128 resident rows" in server_log and "online alignment on" in server_log
    assert "EvoSpec alignment: first update trained" in server_log  # the proposer hook fed it verified pairs
    drafts = sum(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith("vllm:spec_decode_num_drafts_total"))
    accepted = sum(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("vllm:spec_decode_num_accepted_tokens_total"))
    assert drafts > 0 and accepted / drafts > 0.5  # the drafter proposed, and the target accepted much of it


@pytest.mark.vllm
def test_chat_completions_stream_the_targets_greedy_output_of_the_templated_prompt(vllm_bin, aligned_server):  # noqa: F811
    from transformers import AutoTokenizer

    base, _ = aligned_server
    messages = [{"role": "user", "content": "def parse(text):"}]
    streamed = run_client(vllm_bin, CHAT_CLIENT, base, json.dumps(messages), str(MAX_TOKENS))
    tokenizer = AutoTokenizer.from_pretrained(TARGET)
    rendered = tokenizer.apply_chat_template(messages, chat_template=CHAT_TEMPLATE, tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == "user: def parse(text):\nassistant:"
    prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]  # chat requests add no special tokens
    assert streamed["prompt"] == prompt
    expected = greedy_reference(TARGET, [prompt], MAX_TOKENS)[0]
    assert streamed["ids"] == expected and streamed["text"] == tokenizer.decode(expected)
    assert streamed["chunks"] >= 2


@pytest.mark.vllm
def test_print_command_names_the_plugin_drafter_and_the_server(vllm_bin, tmp_path):  # noqa: F811
    drafter = living_export(tmp_path)
    proc = subprocess.run([str(vllm_bin / "evospec"), "serve", "--target", str(TARGET), "--drafter", str(drafter),
                           "--port", "8123", "--replicas", "2", "--print-command"],
                          check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith("VLLM_CPU_KVCACHE_SPACE=1 ") and "-m vllm.entrypoints.openai.api_server" in line
    assert f'"model": "{drafter.resolve()}"' in line and "--port 8123" in line and "--data-parallel-size 2" in line


@pytest.mark.parametrize("case", ["missing", "drafter-as-target", "target-as-drafter"])
def test_serve_refuses_bad_inputs_in_one_line(case, tmp_path):
    target, drafter = {"missing": (tmp_path / "nope", ASSET_DIR / "drafter"),
                       "drafter-as-target": (ASSET_DIR / "drafter", ASSET_DIR / "drafter"),
                       "target-as-drafter": (TARGET, TARGET)}[case]
    proc = run("serve", "--target", str(target), "--drafter", str(drafter), "--print-command", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = {"missing": "does not exist", "drafter-as-target": "is an EAGLE drafter, not a target model",
               "target-as-drafter": "is not an EAGLE-3 drafter"}[case]
    assert proc.stderr.startswith("evospec: error: ") and message in proc.stderr and proc.stderr.count("\n") == 1


def test_the_reference_is_the_targets_own_greedy_continuation():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TARGET, dtype=torch.float32).eval()
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        for _ in range(6):
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)  # no cache: the plain definition
    assert greedy_reference(TARGET, [PROMPT], 6)[0] == ids[0, len(PROMPT):].tolist()
