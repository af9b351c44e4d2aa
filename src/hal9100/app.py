"""The ASGI application: routes at the root (as the original README's curl calls use) and
under /v1 (what SDK users put in base_url), with OpenAI's error shape everywhere."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse

from hal9100 import __version__, datadir
from hal9100.assistants.endpoints import router as assistants_router
from hal9100.config import Settings
from hal9100.conversations.endpoints import router as conversations_router
from hal9100.core.auth import APIKeyMiddleware
from hal9100.core.errors import error_body, install_error_handlers
from hal9100.core.guards import BodyLimitMiddleware, TextGuardMiddleware
from hal9100.files.endpoints import router as files_router
from hal9100.messages.endpoints import router as messages_router
from hal9100.responses.endpoints import router as responses_router
from hal9100.runs.endpoints import router as runs_router
from hal9100.runtime import connect_runtime
from hal9100.threads.endpoints import router as threads_router
from hal9100.vector_stores.endpoints import router as vector_stores_router
from hal9100.worker import Worker, release_leases

log = logging.getLogger(__name__)


def api_router() -> APIRouter:
    router = APIRouter()
    # Runs first: `POST /threads/runs` must not be taken for `POST /threads/{thread_id}`.
    # Then the busiest: FastAPI tries every route of a router before the next router's.
    for part in (
        runs_router,
        messages_router,
        responses_router,
        threads_router,
        assistants_router,
        files_router,
        vector_stores_router,
        conversations_router,
    ):
        router.include_router(part)
    return router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One of `hal9100 serve --workers N` joins the hold its parent took on the data
        # directory (and the parent took the dead server's runs over before starting it).
        # Under another ASGI server (one process) this process is the holder: the runs of
        # a server that died are its to take over, as `serve` does.
        if datadir.claim(settings):
            await release_leases(settings.sqlalchemy_url)
        # `hal9100 serve` waited for the backends already; this covers other ASGI servers.
        runtime = await connect_runtime(settings)
        app.state.runtime = runtime
        worker = Worker(runtime, settings.worker_concurrency) if settings.executes_runs else None
        if worker is not None:
            await worker.start()
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop()
            await runtime.aclose()

    app = FastAPI(title="HAL-9100", version=__version__, lifespan=lifespan)
    install_error_handlers(app)

    # Before the API's routes: FastAPI tries routes in order, and a load balancer's health
    # checks should not walk every API route first.
    @app.get("/health", include_in_schema=False)
    @app.get("/v1/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", include_in_schema=False)
    @app.get("/v1/ready", include_in_schema=False)
    async def ready() -> JSONResponse:
        checks = await app.state.runtime.check()
        down = {name: part for name, part in checks.items() if part}
        if down:
            # `/ready` is open to anyone: where the backends are and what their drivers said
            # go to the log, the answer names the variables to look at.
            log.warning("not ready: %s", "; ".join(part.detail for part in down.values()))
            names = ", ".join(f"{name} ({part.variable})" for name, part in down.items())
            body = error_body(f"Not ready: {names}", "server_error", None, "not_ready")
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok", "checks": dict.fromkeys(checks, "ok")})

    routes = api_router()
    app.include_router(routes, prefix="/v1")
    app.include_router(routes, include_in_schema=False)

    # The last added runs first: the size limit counts what the text guard reads.
    app.add_middleware(TextGuardMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_request_bytes=settings.max_request_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        upload_paths=frozenset({files_router.prefix, f"/v1{files_router.prefix}"}),
    )
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
    return app
