"""What a run shows the model: instructions, the thread's messages, additional messages,
truncation to the context window and the run's budgets, sampling and format options, tool
choice, and images. Checked on the bodies the scripted LLM received."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.beta.threads import Run

from conftest import DeployFactory, make_client
from runs_support import POLL_MS, TIME_TOOL, WEATHER_TOOL, marker, requests_with
from scripted_llm import ScriptedLLM

# A 1x1 transparent PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def tiny(deploy: DeployFactory, scripted_llm: ScriptedLLM) -> Iterator[openai.OpenAI]:
    """A deployment where `tiny-*` models have a 300-token context window."""
    routes = [
        {
            "match": "tiny-*",
            "backend": "openai",
            "url": scripted_llm.base_url,
            "context_window": 300,
        }
    ]
    deployment = deploy(HAL9100_MODEL_ROUTES=json.dumps(routes))
    sdk = make_client(deployment.urls)
    yield sdk
    sdk.close()


def _assistant(client: openai.OpenAI, **kwargs: Any) -> str:
    kwargs.setdefault("model", "scripted-model")
    return client.beta.assistants.create(**kwargs).id


def _run(
    client: openai.OpenAI,
    messages: list[dict[str, Any]],
    *,
    assistant: dict[str, Any] | None = None,
    **run: Any,
) -> Run:
    thread_id = client.beta.threads.create(messages=messages).id  # type: ignore[arg-type]
    result = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id,
        assistant_id=_assistant(client, **(assistant or {})),
        poll_interval_ms=POLL_MS,
        **run,
    )
    assert result.status in ("completed", "requires_action"), result.last_error
    return result


def _only(llm: ScriptedLLM, mark: str) -> dict[str, Any]:
    found = requests_with(llm, mark)
    assert len(found) == 1, f"expected one model call, got {len(found)}"
    return found[0]


def _texts(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) of every message in a chat-completions body."""
    out = []
    for message in body["messages"]:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
        out.append((message["role"], content or ""))
    return out


def _answers(client: openai.OpenAI, thread_id: str) -> list[str]:
    return [
        "".join(p.text.value for p in m.content if p.type == "text")
        for m in client.beta.threads.messages.list(thread_id, order="asc")
        if m.role == "assistant"
    ]


# --------------------------------------------------------------------------- instructions


def test_assistant_instructions_are_the_system_prompt(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    _run(
        client,
        [{"role": "user", "content": f"{mark} hi"}],
        assistant={"instructions": "You are a personal math tutor."},
    )
    assert _texts(_only(scripted_llm, mark)) == [
        ("system", "You are a personal math tutor."),
        ("user", f"{mark} hi"),
    ]


def test_run_instructions_replace_the_assistants(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    run = _run(
        client,
        [{"role": "user", "content": mark}],
        assistant={"instructions": "Assistant instructions."},
        instructions="Run instructions.",
    )
    assert run.instructions == "Run instructions."
    system = [text for role, text in _texts(_only(scripted_llm, mark)) if role == "system"]
    assert system == ["Run instructions."]


def test_additional_instructions_are_appended(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    _run(
        client,
        [{"role": "user", "content": mark}],
        assistant={"instructions": "Base instructions."},
        additional_instructions="Address the user as Dave.",
    )
    system = [text for role, text in _texts(_only(scripted_llm, mark)) if role == "system"]
    assert len(system) == 1
    assert system[0].startswith("Base instructions.")
    assert system[0].endswith("Address the user as Dave.")

    # With an override, the additional instructions follow the override.
    mark = marker()
    _run(
        client,
        [{"role": "user", "content": mark}],
        assistant={"instructions": "Base instructions."},
        instructions="Override.",
        additional_instructions="Extra.",
    )
    system = [text for role, text in _texts(_only(scripted_llm, mark)) if role == "system"]
    assert len(system) == 1 and "Base instructions." not in system[0]
    assert system[0].startswith("Override.") and system[0].endswith("Extra.")


def test_no_instructions_no_system_message(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    _run(client, [{"role": "user", "content": mark}])
    assert [role for role, _ in _texts(_only(scripted_llm, mark))] == ["user"]


# --------------------------------------------------------------------------- the thread


def test_thread_messages_in_order(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    _run(
        client,
        [
            {"role": "user", "content": f"{mark} one"},
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": "three"},
            {"role": "user", "content": "four"},
        ],
        assistant={"instructions": "Sys."},
    )
    assert _texts(_only(scripted_llm, mark)) == [
        ("system", "Sys."),
        ("user", f"{mark} one"),
        ("assistant", "two"),
        ("user", "three"),
        ("user", "four"),
    ]


def test_earlier_answers_are_part_of_the_next_prompt(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    assistant_id = _assistant(client)
    thread_id = client.beta.threads.create(
        messages=[{"role": "user", "content": f"{mark} first"}]
    ).id
    runs = client.beta.threads.runs
    assert (
        runs.create_and_poll(
            thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
        ).status
        == "completed"
    )
    client.beta.threads.messages.create(thread_id, role="user", content="second")
    assert (
        runs.create_and_poll(
            thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
        ).status
        == "completed"
    )
    last = requests_with(scripted_llm, mark)[-1]
    assert _texts(last) == [
        ("user", f"{mark} first"),
        ("assistant", f"Echo: {mark} first"),
        ("user", "second"),
    ]
    assert _answers(client, thread_id) == [f"Echo: {mark} first", "Echo: second"]


def test_earlier_tool_rounds_do_not_leak_into_later_runs(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    assistant_id = _assistant(client, tools=[TIME_TOOL])
    thread_id = client.beta.threads.create(
        messages=[{"role": "user", "content": f"{mark} [[call:get_time]]"}]
    ).id
    runs = client.beta.threads.runs
    run = runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    assert run.required_action is not None
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    done = runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread_id,
        tool_outputs=[{"tool_call_id": call.id, "output": "noon"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed"
    client.beta.threads.messages.create(thread_id, role="user", content="thanks")
    later = runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=POLL_MS
    )
    assert later.status == "completed", later.last_error
    # The next run sees the conversation (its messages), not the earlier run's internals.
    assert _texts(requests_with(scripted_llm, mark)[-1]) == [
        ("user", f"{mark} [[call:get_time]]"),
        ("assistant", "Tool results: noon"),
        ("user", "thanks"),
    ]


def test_additional_messages_are_stored_and_sent(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    thread_id = client.beta.threads.create(
        messages=[{"role": "user", "content": f"{mark} original"}]
    ).id
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id,
        assistant_id=_assistant(client),
        additional_messages=[
            {"role": "assistant", "content": "an aside"},
            {"role": "user", "content": "added later", "metadata": {"extra": "yes"}},
        ],
        poll_interval_ms=POLL_MS,
    )
    assert run.status == "completed", run.last_error
    assert _texts(_only(scripted_llm, mark)) == [
        ("user", f"{mark} original"),
        ("assistant", "an aside"),
        ("user", "added later"),
    ]
    messages = list(client.beta.threads.messages.list(thread_id, order="asc"))
    assert [(m.role, m.content[0].text.value) for m in messages] == [  # type: ignore[union-attr]
        ("user", f"{mark} original"),
        ("assistant", "an aside"),
        ("user", "added later"),
        ("assistant", "Echo: added later"),
    ]
    assert messages[2].metadata == {"extra": "yes"}


def test_additional_messages_on_an_empty_thread(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    thread_id = client.beta.threads.create().id
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id,
        assistant_id=_assistant(client),
        additional_messages=[{"role": "user", "content": f"{mark} only this"}],
        poll_interval_ms=POLL_MS,
    )
    assert run.status == "completed"
    assert _texts(_only(scripted_llm, mark)) == [("user", f"{mark} only this")]
    assert _answers(client, thread_id) == [f"Echo: {mark} only this"]


# --------------------------------------------------------------------------- truncation


def test_truncation_last_messages(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    _run(
        client,
        [{"role": "user", "content": f"u{i}"} for i in range(1, 5)]
        + [{"role": "user", "content": f"{mark} u5"}],
        assistant={"instructions": "Sys."},
        truncation_strategy={"type": "last_messages", "last_messages": 2},
    )
    assert _texts(_only(scripted_llm, mark)) == [
        ("system", "Sys."),
        ("user", "u4"),
        ("user", f"{mark} u5"),
    ]

    mark = marker()
    roles = ["user", "assistant", "user", "assistant", "user"]
    _run(
        client,
        [{"role": role, "content": f"{mark} m{i}"} for i, role in enumerate(roles, 1)],
        truncation_strategy={"type": "last_messages", "last_messages": 3},
    )
    assert _texts(requests_with(scripted_llm, mark)[-1]) == [
        ("user", f"{mark} m3"),
        ("assistant", f"{mark} m4"),
        ("user", f"{mark} m5"),
    ]


def test_truncation_last_messages_larger_than_the_thread(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    _run(
        client,
        [{"role": "user", "content": f"{mark} a"}, {"role": "user", "content": "b"}],
        truncation_strategy={"type": "last_messages", "last_messages": 10},
    )
    assert _texts(_only(scripted_llm, mark)) == [("user", f"{mark} a"), ("user", "b")]


def test_auto_truncation_keeps_a_conversation_that_fits(
    tiny: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    """A short conversation on a small model is sent whole: truncation only drops what
    does not fit."""
    mark = marker()
    messages = [
        {"role": "user", "content": f"{mark} alpha"},
        {"role": "assistant", "content": "beta"},
        {"role": "user", "content": "gamma"},
    ]
    _run(tiny, messages, assistant={"model": "tiny-model", "instructions": "Be brief."})
    assert _texts(_only(scripted_llm, mark)) == [
        ("system", "Be brief."),
        ("user", f"{mark} alpha"),
        ("assistant", "beta"),
        ("user", "gamma"),
    ]


def test_auto_truncation_fits_the_context_window(
    tiny: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    # 12 messages of ~60 tokens each: far more than the 300-token window.
    filler = " ".join(["lorem ipsum dolor sit amet"] * 9)
    roles = ["user", "assistant"] * 6
    messages = [
        {"role": role, "content": f"{mark} message{i} {filler}"} for i, role in enumerate(roles)
    ]
    messages[-1] = {"role": "user", "content": f"{mark} newest question"}
    run = _run(tiny, messages, assistant={"model": "tiny-model", "instructions": "Be brief."})
    assert run.status == "completed", run.last_error
    sent = _texts(_only(scripted_llm, mark))
    assert sent[0] == ("system", "Be brief.")
    history = sent[1:]
    expected = [(m["role"], m["content"]) for m in messages]
    # The newest messages, in order, with the oldest dropped...
    assert history[-1] == ("user", f"{mark} newest question")
    assert history == expected[-len(history) :]
    assert len(history) < len(expected)
    # ...as many as fit, not just the last one...
    assert len(history) >= 2
    # ...and never opening on an assistant turn.
    assert history[0][0] == "user"
    # About four characters a token: what was sent fits the window.
    assert sum(len(text) for _, text in sent) / 4 < 300


def test_auto_truncation_honours_max_prompt_tokens(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    filler = " ".join(["lorem ipsum dolor sit amet"] * 20)
    messages = [{"role": "user", "content": f"{mark} old{i} {filler}"} for i in range(10)]
    messages.append({"role": "user", "content": f"{mark} newest"})
    run = _run(client, messages, max_prompt_tokens=400)
    # Truncation made it fit: the run answers instead of giving up.
    assert run.status == "completed", run.last_error
    assert run.usage is not None and run.usage.prompt_tokens <= 400
    sent = _texts(_only(scripted_llm, mark))
    assert sent[-1] == ("user", f"{mark} newest")
    assert 1 < len(sent) < len(messages)


# --------------------------------------------------------------------------- options


def test_sampling_options_are_passed_through(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    _run(
        client,
        [{"role": "user", "content": mark}],
        model="run-model",
        temperature=0.2,
        top_p=0.6,
        max_completion_tokens=300,
        reasoning_effort="low",
    )
    body = _only(scripted_llm, mark)
    assert body["model"] == "run-model"
    assert body["temperature"] == 0.2 and body["top_p"] == 0.6
    assert body["max_tokens"] == 300
    assert body["reasoning_effort"] == "low"
    # Polled runs stream from the model too: one code path for both.
    assert body["stream"] is True


def test_assistant_sampling_defaults_are_sent(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    _run(
        client,
        [{"role": "user", "content": mark}],
        assistant={"model": "assistant-model", "temperature": 0.7, "top_p": 0.9},
    )
    body = _only(scripted_llm, mark)
    assert body["model"] == "assistant-model"
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9
    assert "response_format" not in body and "tools" not in body


def test_response_format_json_object(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    run = _run(client, [{"role": "user", "content": mark}], response_format={"type": "json_object"})
    assert _only(scripted_llm, mark)["response_format"] == {"type": "json_object"}
    (answer,) = _answers(client, run.thread_id)
    assert json.loads(answer) == {"echo": f"Echo: {mark}"}


def test_response_format_json_schema(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    schema = {
        "type": "object",
        "properties": {"echo": {"type": "string"}},
        "required": ["echo"],
        "additionalProperties": False,
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "echo", "schema": schema, "strict": True},
    }
    run = _run(
        client,
        [{"role": "user", "content": mark}],
        assistant={"response_format": response_format},
    )
    sent = _only(scripted_llm, mark)["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "echo"
    assert sent["json_schema"]["schema"] == schema
    assert sent["json_schema"]["strict"] is True
    (answer,) = _answers(client, run.thread_id)
    assert json.loads(answer) == {"echo": f"Echo: {mark}"}


def test_response_format_text_sends_nothing(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    _run(client, [{"role": "user", "content": mark}], response_format={"type": "text"})
    assert "response_format" not in _only(scripted_llm, mark)


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("none", "none"),
        ("auto", "auto"),
        ("required", "required"),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"type": "function", "function": {"name": "get_time"}},
        ),
    ],
)
def test_tool_choice_is_passed_through(
    client: openai.OpenAI, scripted_llm: ScriptedLLM, choice: Any, sent: Any
) -> None:
    mark = marker()
    run = _run(
        client,
        [{"role": "user", "content": mark}],
        assistant={"tools": [WEATHER_TOOL, TIME_TOOL]},
        tool_choice=choice,
    )
    body = _only(scripted_llm, mark)
    assert body["tool_choice"] == sent
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather", "get_time"]
    weather = body["tools"][0]["function"]
    assert weather["description"] == "Weather for a city"
    assert weather["parameters"] == WEATHER_TOOL["function"]["parameters"]
    assert run.status == "completed"


def test_parallel_tool_calls_is_passed_through(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    _run(
        client,
        [{"role": "user", "content": mark}],
        assistant={"tools": [TIME_TOOL]},
        parallel_tool_calls=False,
    )
    assert _only(scripted_llm, mark)["parallel_tool_calls"] is False
    mark = marker()
    _run(client, [{"role": "user", "content": mark}], assistant={"tools": [TIME_TOOL]})
    assert _only(scripted_llm, mark)["parallel_tool_calls"] is True


def test_run_tools_replace_the_assistants(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    _run(
        client,
        [{"role": "user", "content": mark}],
        assistant={"tools": [WEATHER_TOOL]},
        tools=[TIME_TOOL],
    )
    assert [t["function"]["name"] for t in _only(scripted_llm, mark)["tools"]] == ["get_time"]
    # A built-in tool is offered as the function the server runs for it.
    mark = marker()
    _run(
        client,
        [{"role": "user", "content": mark}],
        assistant={"tools": [WEATHER_TOOL]},
        tools=[{"type": "code_interpreter"}],
    )
    assert [t["function"]["name"] for t in _only(scripted_llm, mark)["tools"]] == [
        "code_interpreter"
    ]


# --------------------------------------------------------------------------- images


def test_image_url_parts_reach_the_model(client: openai.OpenAI, scripted_llm: ScriptedLLM) -> None:
    mark = marker()
    run = _run(
        client,
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"{mark} what is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
                    },
                ],
            }
        ],
    )
    assert run.status == "completed"
    content = _only(scripted_llm, mark)["messages"][-1]["content"]
    assert content == [
        {"type": "text", "text": f"{mark} what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
    ]


def test_image_file_parts_reach_the_model_as_data(
    client: openai.OpenAI, scripted_llm: ScriptedLLM
) -> None:
    mark = marker()
    image = client.files.create(file=("pixel.png", PNG, "image/png"), purpose="vision")
    run = _run(
        client,
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_file", "image_file": {"file_id": image.id, "detail": "high"}},
                    {"type": "text", "text": f"{mark} describe"},
                ],
            }
        ],
    )
    assert run.status == "completed"
    content = _only(scripted_llm, mark)["messages"][-1]["content"]
    assert content[1] == {"type": "text", "text": f"{mark} describe"}
    assert content[0]["type"] == "image_url"
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == PNG
    assert content[0]["image_url"]["detail"] == "high"
