"""The OpenAI Agents SDK, unmodified, against HAL-9100: an agent with a function tool, its
history kept in an OpenAIConversationsSession (the Conversations API) across two runs, and
the same agent streamed. Tracing is off (OPENAI_AGENTS_DISABLE_TRACING=1): it would go to
OpenAI."""

from __future__ import annotations

import os

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

from typing import Any

import openai
import pytest
from agents import (
    Agent,
    OpenAIConversationsSession,
    OpenAIResponsesModel,
    Runner,
    function_tool,
)

from deployments import Deployment
from runs_support import marker, requests_with
from scripted_llm import ScriptedLLM

calls: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    calls.append(city)
    return f"{city}: 21C and clear"


@pytest.fixture
def async_client(server: Deployment) -> Any:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="test")


def _agent(client: openai.AsyncOpenAI) -> Agent[Any]:
    return Agent(
        name="Weather",
        instructions="You answer weather questions.",
        model=OpenAIResponsesModel(model="scripted-model", openai_client=client),
        tools=[get_weather],
    )


async def test_an_agent_with_a_tool_and_a_conversations_session(
    async_client: openai.AsyncOpenAI, scripted_llm: ScriptedLLM
) -> None:
    word = marker()
    agent = _agent(async_client)
    session = OpenAIConversationsSession(openai_client=async_client)
    calls.clear()
    first = await Runner.run(
        agent,
        f'{word} weather? [[call:get_weather {{"city": "Paris"}}]] [[reply@1:It is 21C in Paris.]]',
        session=session,
    )
    assert calls == ["Paris"]
    assert first.final_output == "It is 21C in Paris."
    # The model read the tool's output.
    tool_turn = requests_with(scripted_llm, "21C and clear")[-1]["messages"]
    assert tool_turn[-1]["role"] == "tool" and "21C and clear" in tool_turn[-1]["content"]
    history = await session.get_items()
    kinds = [item.get("type", "message") for item in history]
    assert kinds == ["message", "function_call", "function_call_output", "message"]
    second = await Runner.run(agent, f"{word} and tomorrow? [[reply:Also fine.]]", session=session)
    assert second.final_output == "Also fine."
    sent = requests_with(scripted_llm, f"{word} and tomorrow?")[-1]["messages"]
    roles = [m["role"] for m in sent]
    # The whole conversation came back from the session: the first turn, its call and the
    # tool's answer, then the new question.
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert len(await session.get_items()) == 6
    await session.clear_session()


async def test_an_agent_streamed(async_client: openai.AsyncOpenAI) -> None:
    agent = _agent(async_client)
    calls.clear()
    result = Runner.run_streamed(
        agent, '[[call:get_weather {"city": "Lagos"}]] [[reply@1:Warm in Lagos.]]'
    )
    kinds = [event.type async for event in result.stream_events()]
    assert "raw_response_event" in kinds
    assert calls == ["Lagos"]
    assert result.final_output == "Warm in Lagos."
