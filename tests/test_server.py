"""`localcoder serve` driven over real HTTP by the real openai and anthropic SDKs (raw httpx for edge cases).

Oracles: transformers' apply_chat_template for the prompt every request renders (tools, tool calls and results
included), the runtime's own greedy generation (itself held to transformers in test_generate) for the answers."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from localcoder.model import Model
from localcoder.server.app import BackgroundServer, create_app
from localcoder.server.engine import Engine
from quant.convert import convert_hf

KEY = "sk-local-test"
GREEDY = {"temperature": 0}  # the anthropic SDK no longer takes sampling arguments; clients still send them
TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file.",
    "parameters": {"type": "object", "required": ["path"], "properties": {
        "path": {"type": "string"}, "max_lines": {"type": "integer"}}}}}]
CHAT = [{"role": "system", "content": "You are a careful engineer."},
        {"role": "user", "content": "Write a function that reverses a list."}]
TOOL_ROUND = [{"role": "user", "content": "What is in app.py?"},
              {"role": "assistant", "content": "", "tool_calls": [
                  {"id": "call_1", "type": "function",
                   "function": {"name": "read_file", "arguments": json.dumps({"path": "app.py", "max_lines": 5})}}]},
              {"role": "tool", "tool_call_id": "call_1", "content": "print('hi')"}]


@pytest.fixture(scope="module", params=["localcoder", "llamacpp"])
def served(request, hf_model, tmp_path_factory):
    """(reference model, HF tokenizer, base URL of an open server, base URL of one that requires KEY), for each
    engine: the CPU runtime, and llama.cpp computing the logits (whose reference is a second llama.cpp context,
    itself held to llama-cpp-python's own sampler in test_llamacpp_engine)."""
    from transformers import AutoTokenizer

    from localcoder.server.launch import load_model

    hf_dir = hf_model("tiny")
    path = convert_hf(hf_dir, tmp_path_factory.mktemp("serve") / "tiny.gguf", "F32", show_progress=False).out
    model = load_model(path, request.param, n_ctx=4096)
    engine = Engine(load_model(path, request.param, n_ctx=4096) if request.param == "llamacpp" else model)
    with BackgroundServer(create_app(engine, "tiny")) as url, \
            BackgroundServer(create_app(engine, "tiny", api_key=KEY, max_body_bytes=1 << 16)) as locked:
        yield model, AutoTokenizer.from_pretrained(hf_dir), url, locked
    engine.close()


def greedy(model: Model, messages, max_tokens: int, tools=None):
    """The runtime's own answer on a fresh session (the server's must equal it)."""
    generation = model.generate(messages, max_tokens=max_tokens, temperature=0.0, tools=tools)
    "".join(step.text for step in generation)
    return generation


def openai_client(url: str, key: str = "none"):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def anthropic_client(url: str, key: str = "none"):
    import anthropic

    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def test_openai_chat_equals_the_runtime_and_counts_real_tokens(served):
    model, hf_tok, url, _ = served
    client = openai_client(url)
    reply = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0)
    expected = greedy(model, CHAT, 12)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == ("length" if expected.finish_reason == "length" else "stop")
    prompt = hf_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert reply.usage.prompt_tokens == len(hf_tok(prompt, add_special_tokens=False)["input_ids"])
    assert reply.usage.completion_tokens == len(expected.generated)
    stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage.completion_tokens == len(expected.generated)
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the same prompt again: reused


def test_tools_and_tool_results_reach_the_prompt_as_transformers_renders_them(served):
    model, hf_tok, url, _ = served
    for messages in (CHAT, TOOL_ROUND):
        rendered = httpx.post(f"{url}/apply-template", json={"messages": messages, "tools": TOOLS}).json()["prompt"]
        hf_messages = [m | {"tool_calls": [{"type": "function", "function": {
            "name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
            for c in m["tool_calls"]]} if "tool_calls" in m else m for m in messages]
        assert rendered == hf_tok.apply_chat_template(hf_messages, tools=TOOLS, tokenize=False,
                                                      add_generation_prompt=True)
    reply = openai_client(url).chat.completions.create(model="tiny", messages=TOOL_ROUND, tools=TOOLS, max_tokens=3)
    assert reply.usage.prompt_tokens == len(hf_tok(rendered, add_special_tokens=False)["input_ids"])


def test_named_and_required_tool_choice_return_structured_calls(served):
    _, _, url, _ = served
    client = openai_client(url)
    named = client.chat.completions.create(model="tiny", messages=CHAT, tools=TOOLS, max_tokens=6, temperature=0,
                                           tool_choice={"type": "function", "function": {"name": "read_file"}})
    call = named.choices[0].message.tool_calls[0]
    assert named.choices[0].finish_reason == "tool_calls" and call.function.name == "read_file"
    assert isinstance(json.loads(call.function.arguments), dict)
    message = anthropic_client(url).messages.create(
        model="tiny", max_tokens=6, messages=[{"role": "user", "content": "read app.py"}], extra_body=GREEDY,
        tools=[{"name": "read_file", "input_schema": TOOLS[0]["function"]["parameters"]}],
        tool_choice={"type": "tool", "name": "read_file"})
    assert message.stop_reason == "tool_use" and message.content[-1].type == "tool_use"
    assert message.content[-1].name == "read_file" and message.content[-1].id.startswith("toolu_")


def test_stop_sequences_and_max_tokens(served):
    model, _, url, _ = served
    full = greedy(model, CHAT, 16)
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 2]
    assert stop.strip() and len(full.text) > 6
    reply = openai_client(url).chat.completions.create(model="tiny", messages=CHAT, max_tokens=16, temperature=0,
                                                       stop=[stop])
    assert reply.choices[0].message.content == full.text[:full.text.index(stop)]
    assert reply.choices[0].finish_reason == "stop"
    message = anthropic_client(url).messages.create(model="tiny", max_tokens=16, messages=CHAT[1:], system=CHAT[0][
        "content"], extra_body=GREEDY, stop_sequences=[stop])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    short = anthropic_client(url).messages.create(model="tiny", max_tokens=3, messages=CHAT[1:], extra_body=GREEDY)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


def test_anthropic_messages_streaming_events_in_order(served):
    model, hf_tok, url, _ = served
    client = anthropic_client(url)
    expected = greedy(model, CHAT, 10)
    plain = client.messages.create(model="tiny", max_tokens=10, system=CHAT[0]["content"], messages=CHAT[1:],
                                   extra_body=GREEDY)
    assert plain.content[0].text == expected.text
    prompt_tokens = plain.usage.input_tokens + plain.usage.cache_read_input_tokens
    prompt = hf_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert prompt_tokens == len(hf_tok(prompt, add_special_tokens=False)["input_ids"])
    counted = client.messages.count_tokens(model="tiny", system=CHAT[0]["content"], messages=CHAT[1:])
    assert counted.input_tokens == prompt_tokens
    events = list(client.messages.create(model="tiny", max_tokens=10, system=CHAT[0]["content"], messages=CHAT[1:],
                                         extra_body=GREEDY, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == expected.text
    assert events[-2].usage.output_tokens == len(expected.generated)
    assert events[-2].usage.cache_read_input_tokens > 0


def test_second_turn_reuses_the_first(served):
    model, _, url, _ = served
    client = openai_client(url)
    turn1 = [{"role": "user", "content": "A fresh conversation about sorting."}]
    first = client.chat.completions.create(model="tiny", messages=turn1, max_tokens=5, temperature=0)
    turn2 = turn1 + [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "Now in Rust."}]
    second = client.chat.completions.create(model="tiny", messages=turn2, max_tokens=5, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    assert second.choices[0].message.content == greedy(model, turn2, 5).text  # equal to a cold run
    metrics = httpx.get(f"{url}/metrics").text
    assert "localcoder_prefix_cache_hits_total" in metrics and "localcoder_generated_tokens_total" in metrics


def test_completions_logprobs_and_models(served):
    model, _, url, _ = served
    client = openai_client(url)
    assert [m.id for m in client.models.list()] == ["tiny"]
    text = client.completions.create(model="tiny", prompt="def reverse(xs):", max_tokens=8, temperature=0)
    assert text.choices[0].text == greedy(model, "def reverse(xs):", 8).text
    reply = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4, temperature=0, logprobs=True,
                                           top_logprobs=3)
    for entry in reply.choices[0].logprobs.content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy takes the most likely


@pytest.mark.parametrize("path, body, status, phrase", [
    ("/v1/chat/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400,
     "temperature"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x " * 5000}]}, 400, "context"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tool_choice": {
        "type": "function", "function": {"name": "nope"}}, "tools": TOOLS}, 400, "nope"),
    ("/v1/messages", {"model": "t", "messages": [{"role": "user", "content": "x"}]}, 400, "max_tokens"),
    ("/v1/messages", {"model": "t", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, 400,
     "max_tokens"),
    ("/v1/messages", b"[1, 2", 400, "not valid JSON"),
])
def test_bad_requests_get_4xx_in_their_api_format_and_the_server_keeps_serving(served, path, body, status, phrase):
    _, _, url, _ = served
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    response = httpx.post(url + path, timeout=60, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()
    if path.startswith("/v1/messages"):
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert phrase in error["error"]["message"]
    else:
        assert phrase in error["error"]["message"] and error["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_api_key_and_body_limit(served):
    import anthropic
    import openai

    _, _, _, locked = served
    with pytest.raises(openai.AuthenticationError):
        openai_client(locked, "wrong").models.list()
    with pytest.raises(anthropic.AuthenticationError):
        anthropic_client(locked, "wrong").messages.create(model="t", max_tokens=1, messages=[
            {"role": "user", "content": "x"}])
    assert [m.id for m in openai_client(locked, KEY).models.list()] == ["tiny"]
    assert httpx.get(f"{locked}/health").status_code == 200  # health needs no key
    huge = {"messages": [{"role": "user", "content": "x" * (1 << 17)}]}
    response = httpx.post(f"{locked}/v1/chat/completions", json=huge, headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 413 and "exceeds" in response.json()["error"]["message"]
    response = httpx.post(f"{locked}/v1/messages", json=huge, headers={"x-api-key": KEY})
    assert response.status_code == 413 and response.json()["error"]["type"] == "request_too_large"


def test_eight_concurrent_clients_get_their_own_answers(served):
    model, _, url, _ = served
    prompts = [[{"role": "user", "content": f"Task {i}: sort {i} numbers."}] for i in range(8)]
    expected = [greedy(model, p, 6).text for p in prompts]
    answers = [None] * 8

    def ask(i):
        reply = openai_client(url).chat.completions.create(model="tiny", messages=prompts[i], max_tokens=6,
                                                           temperature=0, stream=i % 2 == 0)
        answers[i] = "".join(c.choices[0].delta.content or "" for c in reply if c.choices) if i % 2 == 0 \
            else reply.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert answers == expected


def test_a_client_that_disconnects_cancels_its_generation(served):
    _, _, url, _ = served
    before = httpx.get(f"{url}/metrics").text
    cancelled_before = _metric(before, "requests_cancelled_total")
    body = {"messages": [{"role": "user", "content": "Go on forever."}], "max_tokens": 3500, "stream": True,
            "temperature": 0}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        for i, _ in enumerate(response.iter_lines()):
            if i > 5:
                break  # leave mid-stream: the connection closes here
    import time
    deadline = time.time() + 30
    while _metric(httpx.get(f"{url}/metrics").text, "requests_cancelled_total") == cancelled_before:
        assert time.time() < deadline, "the generation was not cancelled"
        time.sleep(0.2)
    generated = _metric(httpx.get(f"{url}/metrics").text, "generated_tokens_total") - \
        _metric(before, "generated_tokens_total")
    assert generated < 3500
    reply = openai_client(url).chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    assert reply.usage.completion_tokens == 2  # and the server still serves


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(f"localcoder_{name} "))
    return float(line.split()[1])
