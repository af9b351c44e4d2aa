"""Which backend serves which model.

Backends are cached per (kind, url, key) so every run on the same server shares one HTTP
connection pool instead of opening its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from hal9100.llm.base import LLMBackend, LLMError

BackendKind = Literal["openai", "anthropic"]

# Context windows of well-known model families, as (prefix, tokens); the first match wins.
# Anything else gets the router's default, which a route's `context_window` overrides.
KNOWN_CONTEXT_WINDOWS: tuple[tuple[str, int], ...] = (
    ("claude-", 200_000),
    ("gpt-4o", 128_000),
    ("gpt-4-turbo", 128_000),
)


class ModelRoute(BaseModel):
    """Sends the models matching `match` to one backend.

    `match` is an exact model name, or a prefix followed by `*` ("claude-*", "llama*").
    `url`/`api_key` default to the router's defaults for the backend kind.
    """

    match: str
    backend: BackendKind
    url: str | None = None
    api_key: str | None = None
    context_window: int | None = None

    def matches(self, model: str) -> bool:
        if self.match.endswith("*"):
            return model.startswith(self.match[:-1])
        return model == self.match


@dataclass(slots=True)
class ResolvedModel:
    backend: LLMBackend
    context_window: int
    backend_kind: BackendKind


class ModelRouter:
    def __init__(
        self,
        routes: list[ModelRoute],
        *,
        default_url: str | None,
        default_api_key: str | None,
        anthropic_api_key: str | None,
        anthropic_base_url: str | None,
        default_context_window: int = 8192,
        timeout: float = 600,
    ) -> None:
        self.routes = list(routes)
        # An empty variable (`MODEL_URL=` in a .env or compose file) means unset: it must give
        # "no backend configured", not requests to the URL "".
        self.default_url = default_url or None
        self.default_api_key = default_api_key or None
        self.anthropic_api_key = anthropic_api_key or None
        self.anthropic_base_url = anthropic_base_url or None
        self.default_context_window = default_context_window
        self.timeout = timeout
        self._backends: dict[tuple[BackendKind, str | None, str | None], LLMBackend] = {}

    def warm(self) -> None:
        """Make the configured default backends now, for a process about to execute runs.

        Their SDK is then imported at start-up rather than in the middle of the first run (a
        blocking import of about half a second); an SDK nothing is configured for is never
        imported, and a process that executes no runs (`serve`'s parent, a production API
        process) does not call this and imports none.
        """
        if self.default_url is not None:
            self._openai(self.default_url, self.default_api_key)
        if self.anthropic_api_key is not None:
            self._anthropic(self.anthropic_base_url, self.anthropic_api_key)

    def resolve(self, model: str) -> ResolvedModel:
        """The backend for `model`: the first matching route, else Claude models to Anthropic
        (when Anthropic is configured), else the OpenAI-compatible default server.

        Raises `LLMError("config")` when no backend can serve the model.
        """
        for route in self.routes:
            if route.matches(model):
                window = route.context_window or self._known_context_window(model)
                if route.backend == "anthropic":
                    backend = self._anthropic(
                        route.url or self.anthropic_base_url,
                        route.api_key or self.anthropic_api_key,
                    )
                else:
                    url = route.url or self.default_url
                    if url is None:
                        raise LLMError(
                            "config",
                            f"the route {route.match!r} for model {model} has no url and "
                            "MODEL_URL is not set",
                        )
                    backend = self._openai(url, route.api_key or self.default_api_key)
                return ResolvedModel(backend, window, route.backend)

        window = self._known_context_window(model)
        if model.startswith("claude-") and (self.anthropic_api_key or self.anthropic_base_url):
            backend = self._anthropic(self.anthropic_base_url, self.anthropic_api_key)
            return ResolvedModel(backend, window, "anthropic")
        if self.default_url is None:
            hint = "MODEL_URL (an OpenAI-compatible server), or route it in HAL9100_MODEL_ROUTES"
            if model.startswith("claude-"):
                hint = f"ANTHROPIC_API_KEY, {hint}"
            raise LLMError("config", f"no model backend configured for model {model}: set {hint}")
        return ResolvedModel(self._openai(self.default_url, self.default_api_key), window, "openai")

    async def aclose(self) -> None:
        backends = list(self._backends.values())
        self._backends.clear()
        for backend in backends:
            await backend.aclose()

    def _known_context_window(self, model: str) -> int:
        for prefix, window in KNOWN_CONTEXT_WINDOWS:
            if model.startswith(prefix):
                return window
        return self.default_context_window

    def _openai(self, url: str, api_key: str | None) -> LLMBackend:
        # Each SDK is imported when a model first needs it: together they took seconds of
        # every start-up, whichever backends were configured.
        from hal9100.llm.openai_compat import OpenAICompatBackend, normalize_base_url

        key: tuple[BackendKind, str | None, str | None] = (
            "openai",
            normalize_base_url(url),
            api_key,
        )
        backend = self._backends.get(key)
        if backend is None:
            backend = OpenAICompatBackend(url, api_key, timeout=self.timeout)
            self._backends[key] = backend
        return backend

    def _anthropic(self, url: str | None, api_key: str | None) -> LLMBackend:
        from hal9100.llm.anthropic import AnthropicBackend

        normalized = url.rstrip("/") if url else None
        key: tuple[BackendKind, str | None, str | None] = ("anthropic", normalized, api_key)
        backend = self._backends.get(key)
        if backend is None:
            backend = AnthropicBackend(api_key, normalized, timeout=self.timeout)
            self._backends[key] = backend
        return backend
