"""Settings, read from the environment and a `.env` file in the working directory.

The production variables keep the original HAL-9100 names (DATABASE_URL, REDIS_URL, S3_*,
MODEL_URL); everything of ours is HAL9100_*. An unset production variable means the embedded
part: SQLite instead of PostgreSQL, a local folder instead of S3, in-process instead of Redis.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hal9100.llm.router import ModelRoute


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # --- production parts (original HAL-9100 names); unset = embedded part ---
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    s3_endpoint: str | None = Field(default=None, validation_alias="S3_ENDPOINT")
    s3_access_key: str | None = Field(default=None, validation_alias="S3_ACCESS_KEY")
    s3_secret_key: str | None = Field(default=None, validation_alias="S3_SECRET_KEY")
    s3_bucket_name: str = Field(default="hal9100", validation_alias="S3_BUCKET_NAME")
    s3_region: str = Field(default="us-east-1", validation_alias="S3_REGION")

    # PostgreSQL connections each process keeps open (and as many more at peaks): size it so
    # that (API processes + workers) x 2 x this stays under the server's max_connections.
    db_pool_size: int = Field(default=10, ge=1, validation_alias="HAL9100_DB_POOL_SIZE")

    # --- LLM backends ---
    model_url: str | None = Field(default=None, validation_alias="MODEL_URL")
    model_api_key: str | None = Field(default=None, validation_alias="MODEL_API_KEY")
    anthropic_api_key: str | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(default=None, validation_alias="ANTHROPIC_BASE_URL")
    # JSON list of routes: [{"match": "claude-*", "backend": "anthropic"}, ...]
    # NoDecode: the validator below reads the variable, so an empty one means no routes.
    model_routes: Annotated[list[ModelRoute], NoDecode] = Field(
        default_factory=list, validation_alias="HAL9100_MODEL_ROUTES"
    )
    default_context_window: int = Field(
        default=8192, validation_alias="HAL9100_DEFAULT_CONTEXT_WINDOW"
    )

    # --- ours ---
    data_dir: Path = Field(default=Path("hal9100-data"), validation_alias="HAL9100_DATA_DIR")
    api_key: str | None = Field(default=None, validation_alias="HAL9100_API_KEY")
    worker_concurrency: int = Field(default=64, validation_alias="HAL9100_WORKER_CONCURRENCY")
    # How long a run may stay unfinished (queued, in progress or requires_action) before it
    # becomes `expired`; OpenAI uses ten minutes.
    run_expiry_seconds: int = Field(default=600, validation_alias="HAL9100_RUN_EXPIRY_SECONDS")
    # A worker renews its lease on a run every third of this; a run whose lease lapses (the
    # worker died) is taken over by another worker after at most this long.
    lease_seconds: float = Field(default=30.0, validation_alias="HAL9100_LEASE_SECONDS")
    # How long a stored response is kept (as OpenAI keeps them: 30 days); 0 keeps them.
    # Responses of a conversation leave their items to it.
    response_retention_days: float = Field(
        default=30.0, ge=0, validation_alias="HAL9100_RESPONSE_RETENTION_DAYS"
    )
    # How long a run's events stay on the event bus after their last use, for late and
    # resuming readers (unset: an hour on Redis, a minute in embedded mode's memory).
    event_retain_seconds: float | None = Field(
        default=None, gt=0, validation_alias="HAL9100_EVENT_RETAIN_SECONDS"
    )
    # How often expired runs and runs with lapsed leases are looked for.
    sweep_seconds: float = Field(default=5.0, validation_alias="HAL9100_SWEEP_SECONDS")
    # Whether this API process also executes runs. Unset: yes in embedded mode (no REDIS_URL),
    # no in production, where `hal9100 worker` processes do it.
    with_worker: bool | None = Field(default=None, validation_alias="HAL9100_WITH_WORKER")
    # Redis keys and the run queue's name start with this, so deployments can share a Redis.
    redis_prefix: str = Field(default="hal9100", validation_alias="HAL9100_REDIS_PREFIX")
    # Connections each of a process's Redis clients may open. A stream being followed holds
    # one in a blocking read and a worker one per run slot (SAQ's dequeuers), so redis-py's
    # default of 100 failed past 100 streams or slots; Redis itself allows 10,000 clients.
    redis_max_connections: int = Field(
        default=10_000, ge=1, validation_alias="HAL9100_REDIS_MAX_CONNECTIONS"
    )
    # On SIGTERM a worker stops taking runs and gives the ones in hand this long to finish.
    drain_seconds: int = Field(default=30, validation_alias="HAL9100_DRAIN_SECONDS")
    llm_max_retries: int = Field(default=3, validation_alias="HAL9100_LLM_MAX_RETRIES")
    llm_retry_base_delay: float = Field(
        default=0.5, validation_alias="HAL9100_LLM_RETRY_BASE_DELAY"
    )
    llm_timeout: float = Field(default=600.0, validation_alias="HAL9100_LLM_TIMEOUT")
    # Model calls a run may make in a row without the client (server-side tool rounds, calls
    # the model was asked to redo) before it fails: a model that never stops calling tools.
    max_turns: int = Field(default=32, ge=1, validation_alias="HAL9100_MAX_TURNS")
    # Tool calls over a whole run that name a function the run does not offer, or whose
    # arguments are not JSON (and cannot be repaired unambiguously), sent back to the model
    # to redo; one more fails the run. 0: hand the client its calls exactly as the model made
    # them, neither checked nor repaired.
    tool_call_corrections: int = Field(
        default=3, ge=0, validation_alias="HAL9100_TOOL_CALL_CORRECTIONS"
    )
    # A streamed run that sends nothing for this long is looked up in the database, so a
    # stream whose run was deleted (or whose closing event was lost) ends instead of hanging.
    stream_check_seconds: float = Field(
        default=15.0, validation_alias="HAL9100_STREAM_CHECK_SECONDS"
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024, validation_alias="HAL9100_MAX_UPLOAD_BYTES"
    )
    # Largest JSON request body; a larger one is refused (413) before it is read.
    max_request_bytes: int = Field(
        default=32 * 1024 * 1024, validation_alias="HAL9100_MAX_REQUEST_BYTES"
    )
    # At start-up, how long to wait (retrying with backoff) for the database, Redis and S3
    # to answer before exiting with an error that names the variable to fix.
    startup_timeout: float = Field(default=30.0, validation_alias="HAL9100_STARTUP_TIMEOUT")
    log_level: str = Field(default="info", validation_alias="HAL9100_LOG_LEVEL")

    # --- the action tool (an HTTP API described by an OpenAPI spec, called by the server) ---
    # Largest spec an action tool may carry (its text, or its object as compact JSON).
    action_max_spec_bytes: int = Field(
        default=1024 * 1024, validation_alias="HAL9100_ACTION_MAX_SPEC_BYTES"
    )
    # Hosts (`host` or `host:port`, comma-separated) that calls may reach even when they
    # resolve to loopback, private or link-local addresses; every other host must be public.
    action_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="HAL9100_ACTION_ALLOWED_HOSTS"
    )
    action_connect_timeout: float = Field(
        default=5.0, validation_alias="HAL9100_ACTION_CONNECT_TIMEOUT"
    )
    # The whole call, redirects included; never past the run's expiry either.
    action_timeout: float = Field(default=30.0, validation_alias="HAL9100_ACTION_TIMEOUT")
    # Reading a response stops after this many bytes.
    action_max_response_bytes: int = Field(
        default=1024 * 1024, validation_alias="HAL9100_ACTION_MAX_RESPONSE_BYTES"
    )
    # The model reads at most this many characters of a response body.
    action_max_output_chars: int = Field(
        default=20_000, validation_alias="HAL9100_ACTION_MAX_OUTPUT_CHARS"
    )

    # --- vector stores and file_search ---
    # "auto": embeddings from HAL9100_EMBEDDING_URL when set, else the local model (from
    # HAL9100_EMBEDDING_MODEL_DIR, or the built-in all-MiniLM-L6-v2); "none": keyword search
    # only.
    embeddings: Literal["auto", "none"] = Field(
        default="auto", validation_alias="HAL9100_EMBEDDINGS"
    )
    # An OpenAI-compatible `/v1/embeddings` server (vLLM, Ollama, llama.cpp, TEI) and model.
    embedding_url: str | None = Field(default=None, validation_alias="HAL9100_EMBEDDING_URL")
    embedding_model: str | None = Field(default=None, validation_alias="HAL9100_EMBEDDING_MODEL")
    embedding_api_key: str | None = Field(
        default=None, validation_alias="HAL9100_EMBEDDING_API_KEY"
    )
    # A directory holding `model.onnx` and `tokenizer.json` of a sentence-embedding model
    # (BERT-style, mean pooling), instead of the built-in one.
    embedding_model_dir: Path | None = Field(
        default=None, validation_alias="HAL9100_EMBEDDING_MODEL_DIR"
    )
    # Threads the local model computes with (ingestion is CPU-bound: one keeps the other
    # cores for requests).
    embedding_threads: int = Field(default=1, ge=1, validation_alias="HAL9100_EMBEDDING_THREADS")
    # Files each process ingests at once (in a lane of their own: runs never wait for them).
    # Parsing and embedding are CPU-bound, and each file in hand is in memory whole.
    ingest_concurrency: int = Field(default=2, ge=1, validation_alias="HAL9100_INGEST_CONCURRENCY")
    # A file with more tokens than this is not ingested (`invalid_file`), as OpenAI's limit.
    vector_store_max_file_tokens: int = Field(
        default=5_000_000, ge=1, validation_alias="HAL9100_VECTOR_STORE_MAX_FILE_TOKENS"
    )

    # --- code_interpreter ---
    # "auto": the bubblewrap sandbox (runs that use the tool fail with a clear error when it
    # cannot be made safely); "none": the tool is refused. Code never runs unconfined.
    sandbox: Literal["auto", "none"] = Field(default="auto", validation_alias="HAL9100_SANDBOX")
    # The sandbox's own Python, made by `hal9100 sandbox setup` (default: under
    # $XDG_DATA_HOME/hal9100).
    sandbox_python_dir: Path | None = Field(
        default=None, validation_alias="HAL9100_SANDBOX_PYTHON_DIR"
    )
    # A thread's session ends after this long unused, and at the latest this long after it
    # started (its variables and files are then gone, and the model is told).
    sandbox_idle_seconds: float = Field(
        default=1200.0, gt=0, validation_alias="HAL9100_SANDBOX_IDLE_SECONDS"
    )
    sandbox_max_seconds: float = Field(
        default=3600.0, gt=0, validation_alias="HAL9100_SANDBOX_MAX_SECONDS"
    )
    # Sessions kept started (numpy, pandas and matplotlib imported) for threads to come.
    sandbox_pool: int = Field(default=1, ge=0, validation_alias="HAL9100_SANDBOX_POOL")
    # Live sessions per process at most; past it, the least recently used ends.
    sandbox_max_sessions: int = Field(
        default=32, ge=1, validation_alias="HAL9100_SANDBOX_MAX_SESSIONS"
    )
    sandbox_cell_seconds: float = Field(
        default=60.0, gt=0, validation_alias="HAL9100_SANDBOX_CELL_SECONDS"
    )
    sandbox_memory_mb: int = Field(
        default=2048, ge=64, validation_alias="HAL9100_SANDBOX_MEMORY_MB"
    )
    sandbox_processes: int = Field(default=64, ge=4, validation_alias="HAL9100_SANDBOX_PROCESSES")
    sandbox_disk_mb: int = Field(default=512, ge=1, validation_alias="HAL9100_SANDBOX_DISK_MB")
    # When the server runs as root, sessions run as uids from this one up (one per session).
    sandbox_uid_base: int = Field(
        default=600000, ge=1000, validation_alias="HAL9100_SANDBOX_UID_BASE"
    )

    @field_validator("model_routes", mode="before")
    @classmethod
    def _parse_routes(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return []
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"HAL9100_MODEL_ROUTES is not a JSON list: {exc}") from None
        return value

    @field_validator("action_allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @cached_property
    def sqlalchemy_url(self) -> str:
        """The async SQLAlchemy URL: DATABASE_URL's `postgres://` spellings mapped to asyncpg,
        or the embedded SQLite file in the data directory."""
        url = self.database_url
        if not url:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'hal9100.sqlite3').resolve()}"
        for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        if url.startswith("sqlite://") and "+aiosqlite" not in url:
            return "sqlite+aiosqlite://" + url[len("sqlite://") :]
        return url

    @property
    def executes_runs(self) -> bool:
        return self.with_worker if self.with_worker is not None else not self.redis_url

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
