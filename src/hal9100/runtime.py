"""The set of backends one process runs with, chosen once at start-up from the settings.

This is the only place that looks at which parts are configured; services receive the
chosen implementations and never ask which ones they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from hal9100.config import Settings
from hal9100.db.engine import SessionMaker, make_engine, make_sessionmaker
from hal9100.events.base import EventBus
from hal9100.llm.router import ModelRouter
from hal9100.queue.base import RunQueue
from hal9100.storage.base import ObjectStorage


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: SessionMaker
    storage: ObjectStorage
    bus: EventBus
    queue: RunQueue
    router: ModelRouter

    async def aclose(self) -> None:
        await self.queue.aclose()
        await self.bus.aclose()
        await self.router.aclose()
        await self.storage.aclose()
        await self.engine.dispose()


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

        return RedisEventBus(settings.redis_url, prefix=settings.redis_prefix)
    from hal9100.events.memory import MemoryEventBus

    return MemoryEventBus()


def make_queue(settings: Settings) -> RunQueue:
    if settings.redis_url:
        from hal9100.queue.redis import RedisRunQueue

        return RedisRunQueue(
            settings.redis_url,
            name=f"{settings.redis_prefix}-runs",
            drain_seconds=settings.drain_seconds,
        )
    from hal9100.queue.memory import MemoryRunQueue

    return MemoryRunQueue(drain_seconds=settings.drain_seconds)


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


async def build_runtime(settings: Settings) -> Runtime:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        storage=make_storage(settings),
        bus=make_bus(settings),
        queue=make_queue(settings),
        router=make_router(settings),
    )
