"""One request at a time against one CPU server with `--enable-entropyinfer` (the tiny Llama, the method engaged on
short prompts): per-request settings (custom_params) are refused with a 400 naming the field (streamed or not) or
run and reported in meta_info (`/generate`, the chat API's `choices[].meta_info` with `return_meta_info`); requests
that would crash the scheduler are refused with a 400; a request whose plan or compression raises (test-only fault
injection, runtime/faults.py) is failed alone. After each refused or failed request the server keeps serving."""

from __future__ import annotations

import json

import pytest

import tiny_llama
from sglang_helpers import (ENGAGED, Server, require_entry_point, requires_sglang, subprocess_env,  # noqa: F401
                            tiny_model)

pytestmark = requires_sglang
FAULTS = "plan:fault-plan,compress:fault-compress"


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    require_entry_point()
    started = Server("requests", tiny_model, tmp_path_factory.mktemp("sglang_requests"),
                     ["--enable-entropyinfer", "--entropyinfer-config", json.dumps(ENGAGED),
                      "--chunked-prefill-size", "128", "--chat-template", "chatml"],
                     env=subprocess_env(ENTROPYINFER_TEST_FAULT=FAULTS))
    try:
        yield started.wait_ready(timeout=400)
    finally:
        started.stop()


def _post(server, path: str, body: dict):
    import requests

    return requests.post(server.url + path, json=body, timeout=120)


def _generate_body(custom_params=None, seed: int = 31, **extra) -> dict:
    """A ~570-token prompt (five prefill chunks), 24 tokens out; distinct seeds share no prefix in the radix cache."""
    sampling = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}
    if custom_params is not None:
        sampling["custom_params"] = custom_params
    return {"text": tiny_llama.prompt(420, seed=seed), "sampling_params": sampling, **extra}


def _still_serving(server) -> None:
    assert len(server.generate("still serving", max_new_tokens=3)["output_ids"]) == 3


def _report(out: dict) -> dict:
    """What the request ran with: meta_info["entropyinfer"] holds it at the last output token."""
    values = out["meta_info"]["entropyinfer"]
    assert len(values) == len(out["output_ids"]) and all(v is None for v in values[:-1])
    return values[-1]


@pytest.mark.parametrize("custom_params, message", [
    ("notadict", "custom_params must be a JSON object"),
    ({"entropyinfer": 5}, 'custom_params["entropyinfer"] must be a JSON object, got int 5; accepted:'),
    ({"entropyinfer": {"enabled": "yes"}}, 'custom_params["entropyinfer"]["enabled"]=\'yes\': must be true or false'),
    ({"entropyinfer": {"budget": 1}}, "unknown field(s) 'budget'"),
    ({"entropyinfer": {"base_budget_tokens": 10 ** 6}}, "above the server's base_budget_tokens=16"),
    ({"entropyinfer": {"decode_budget_tokens": 12}}, "must exceed sink_tokens + local_window_tokens = 12"),
])
def test_malformed_request_settings_are_400_on_every_api(server, custom_params, message):
    generate = _post(server, "/generate", _generate_body(custom_params))
    assert generate.status_code == 400 and message in generate.json()["error"]["message"], generate.text
    streamed = _post(server, "/generate", _generate_body(custom_params, stream=True))  # not a 200 with an error event
    assert streamed.status_code == 400 and message in streamed.json()["message"], streamed.text
    for path, body in (("/v1/completions", {"prompt": "hello there"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello there"}]})):
        for stream in (False, True):  # a streamed request is refused before its stream starts
            response = _post(server, path, {"model": "tiny", "max_tokens": 4, "stream": stream,
                                            "custom_params": custom_params, **body})
            if custom_params == "notadict":  # SGLang's own schema refuses it (422/400) before the plugin sees it
                assert response.status_code in (400, 422), response.text
                continue
            assert response.status_code == 400 and message in response.json()["message"], (path, response.text)
    _still_serving(server)


def test_streamed_generate_batch_is_refused_before_its_stream_starts(server):
    """A streamed batch whose second request has a bad setting is one 400 naming it (nothing of the batch runs);
    the same batch with good settings streams."""
    good, bad = {"entropyinfer": {"decode_delay_steps": 0}}, {"entropyinfer": {"decode_budget_tokens": "x"}}
    body = {"text": ["hello there", "general kenobi"], "stream": True,
            "sampling_params": [{"max_new_tokens": 4, "custom_params": good},
                                {"max_new_tokens": 4, "custom_params": bad}]}
    refused = _post(server, "/generate", body)
    assert refused.status_code == 400, refused.text
    assert 'custom_params["entropyinfer"]["decode_budget_tokens"]=\'x\': must be an integer; accepted:' in \
        refused.json()["message"]
    body["sampling_params"][1]["custom_params"] = good
    served = _post(server, "/generate", body)
    assert served.status_code == 200 and '"error"' not in served.text and served.text.endswith("data: [DONE]\n\n")
    events = [json.loads(line[len("data: "):]) for line in served.text.splitlines()
              if line.startswith("data: {")]
    for index in (0, 1):  # each request's last event carries its report (meta_info["entropyinfer"][-1])
        last = [event for event in events if event["index"] == index][-1]
        assert last["meta_info"]["entropyinfer"][-1]["decode_delay_steps"] == 0, last
    _still_serving(server)


def test_request_settings_run_and_are_reported(server):
    """Lower budgets and a later first compression are what the request runs with (meta_info says so, and its
    density, KV kept and compression events move accordingly); `enabled: false` runs dense."""
    default = _report(_post(server, "/generate", _generate_body(seed=32)).json())
    assert default["enabled"] and default["base_budget_tokens"] == ENGAGED["base_budget_tokens"]
    assert default["compression_events"] == 3  # 24 tokens: after 4, then every 8 (4, 12, 20)
    assert 0 < default["prefill_density"] < 1 and 0 <= default["rigid_fraction"] <= 1
    own = {"base_budget_tokens": 8, "max_budget_tokens": 16, "decode_budget_tokens": 20, "decode_delay_steps": 10}
    response = _post(server, "/generate", _generate_body({"entropyinfer": own}, seed=33))
    assert response.status_code == 200, response.text
    lowered = _report(response.json())
    assert {name: lowered[name] for name in own} == own
    assert lowered["prefill_density"] < default["prefill_density"]
    assert lowered["kv_kept_fraction"] < default["kv_kept_fraction"]
    assert lowered["compression_events"] == 2  # after 10, then every 8 (10, 18)
    off = _report(_post(server, "/generate", _generate_body({"entropyinfer": {"enabled": False}}, seed=34)).json())
    assert not off["enabled"] and off["prefill_density"] is None and off["compression_events"] == 0  # not profiled
    assert "turned EntropyInfer off" in off["dense_prefill_reason"]
    completion = _post(server, "/v1/completions", {"model": "tiny", "max_tokens": 4, "prompt": "hi",
                                                   "custom_params": {"entropyinfer": {"decode_delay_steps": 0}}})
    assert completion.status_code == 200, completion.text
    assert "meta_info" not in completion.json()["choices"][0]  # SGLang has no channel here (docs/sglang.md says so)


def test_chat_completion_reports_what_it_ran_with(server):
    """The OpenAI chat API carries the report where SGLang carries metadata: `return_meta_info: true` puts each
    choice's meta_info, `entropyinfer` included, into `choices[i].meta_info` (non-streamed; both releases)."""
    own = {"base_budget_tokens": 8, "decode_budget_tokens": 20, "decode_delay_steps": 2}
    response = _post(server, "/v1/chat/completions", {
        "model": "tiny", "max_tokens": 6, "temperature": 0, "ignore_eos": True, "return_meta_info": True,
        "messages": [{"role": "user", "content": tiny_llama.prompt(420, seed=35)}],
        "custom_params": {"entropyinfer": own}})
    assert response.status_code == 200, response.text
    report = response.json()["choices"][0]["meta_info"]["entropyinfer"][-1]
    assert report["enabled"] and {name: report[name] for name in own} == own
    assert 0 < report["prefill_density"] < 1 and 0 <= report["rigid_fraction"] <= 1
    assert 0 < report["kv_kept_fraction"] < 1 and report["compression_events"] == 1  # after 2 (then every 8)


@pytest.mark.parametrize("body, message, streamed_message", [
    ({"input_ids": [1, 2, 100000]}, "input_ids[2]=100000 is not a token id of this model", None),
    ({"input_ids": [1, 2, -1]}, "input_ids[2]=-1 is not a token id", None),
    ({"input_ids": []}, "input_ids cannot be empty", "no input tokens"),  # SGLang's own check; streamed: the plugin's
    ({"input_ids": [[1, 2], []]}, "no input tokens", None),
    ({"input_ids": [[1, 2], [3, 100000]]}, "input_ids[1]=100000", None),
    ({"input_ids": [1, 2], "return_logprob": True, "top_logprobs_num": 100000}, "top_logprobs_num=100000", None),
    ({"input_ids": [[1, 2], [3]], "return_logprob": [False, True], "top_logprobs_num": [100000, 100000]},
     "top_logprobs_num=100000", None),
])
def test_requests_that_would_crash_the_scheduler_are_400(server, body, message, streamed_message):
    """Non-streamed and streamed: a streamed request is refused before its stream starts (not a 200 whose stream
    carries an error event)."""
    response = _post(server, "/generate", {"sampling_params": {"max_new_tokens": 4}, **body})
    assert response.status_code == 400 and message in response.json()["error"]["message"], response.text
    streamed = _post(server, "/generate", {"sampling_params": {"max_new_tokens": 4}, "stream": True, **body})
    assert streamed.status_code == 400 and (streamed_message or message) in streamed.json()["message"], streamed.text
    _still_serving(server)


def test_streamed_generate_with_good_input_ids_streams(server):
    """The early check of given `input_ids` refuses nothing it should serve: a streamed batch of in-vocabulary ids
    (logprobs of the top tokens asked for one of them) streams both."""
    body = {"input_ids": [[1, 2, 3], [4, 5]], "stream": True, "sampling_params": {"max_new_tokens": 4},
            "return_logprob": [False, True], "top_logprobs_num": [0, 2]}
    served = _post(server, "/generate", body)
    assert served.status_code == 200 and '"error"' not in served.text and served.text.endswith("data: [DONE]\n\n")
    events = [json.loads(line[len("data: "):]) for line in served.text.splitlines() if line.startswith("data: {")]
    assert {event["index"] for event in events} == {0, 1}, served.text


@pytest.mark.parametrize("rid, what", [("fault-plan-1", "prefill planning"),
                                       ("fault-compress-1", "decode compression")])
def test_a_request_whose_plan_fails_is_failed_alone(server, rid, what):
    """An injected fault in one request's planning (or compression event) fails that request with the reason; a
    request batched with it and the requests after it are served."""
    import threading

    results = {}

    def one(name, text_seed):
        results[name] = _post(server, "/generate", {**_generate_body(), "rid": name,
                                                    "text": tiny_llama.prompt(300, seed=text_seed)})

    mate = "batch-mate-of-" + what.replace(" ", "-")
    threads = [threading.Thread(target=one, args=(name, seed)) for name, seed in ((rid, 41), (mate, 42))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    failed = results[rid]
    assert failed.status_code == 500, failed.text
    assert f"EntropyInfer {what} failed for this request" in failed.text and "InjectedFault" in failed.text
    assert results[mate].status_code == 200, results[mate].text
    assert _report(results[mate].json())["compression_events"] == 3
    fine = _post(server, "/generate", {**_generate_body(seed=43), "rid": "after-" + what.replace(" ", "-")})
    assert fine.status_code == 200 and _report(fine.json())["compression_events"] == 3
    log = server.log_text()  # one error line per failure (its stack only at debug level, on in these tests)
    assert f"EntropyInfer: request {rid}: {what}" in log
    assert "Scheduler hit an exception" not in log and server.proc.poll() is None
