"""The `RAYCHAT_*` settings of PROTOCOL.md as one validated, immutable object.

`Settings()` reads the environment once; every actor and the ingress receive
the same object as a constructor argument instead of reading globals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./data/raychat.db"
MAX_AUTO_SHARDS = 16
MAX_AUTO_AGENT_ACTORS = 32
MAX_AUTO_PERSISTENCE_WRITERS = 8


class Settings(BaseSettings):
    """Every tunable of the service; names map to `RAYCHAT_<NAME>` variables."""

    model_config = SettingsConfigDict(env_prefix="RAYCHAT_", frozen=True, extra="ignore")

    # Storage and identity.
    database_url: str = DEFAULT_DATABASE_URL
    data_dir: Path = Path("./data")
    secret: SecretStr | None = None
    token_issuer: str = "raychat"
    token_ttl_s: int = Field(default=30 * 24 * 3600, gt=0)
    namespace: str = "raychat"

    # Actors. Unset counts are picked from the cluster's CPUs (`sized`) when the
    # actors are first created; every replica then uses the counts that run.
    shards: int | None = Field(default=None, ge=1, le=256)
    agent_actors: int | None = Field(default=None, ge=1, le=64)
    # Persistence writer actors, each the writer of a share of the users. SQLite has
    # one writer; PostgreSQL gets one per four CPUs (1 to 8) unless set.
    persistence_writers: int | None = Field(default=None, ge=1, le=64)
    # CPUs each shard, agent and persistence actor reserves. A little, so Ray honours
    # where they are placed (measured on Ray 2.60: actors asking for no resources at all
    # ignore a soft node affinity and pile up on one node); raise it to keep CPUs for them.
    actor_cpus: float = Field(default=0.01, ge=0, le=64)
    context_ttl_s: float = Field(default=600.0, gt=0)
    context_cache_max: int = Field(default=100_000, ge=1)
    session_cache_max: int = Field(default=20_000, ge=1)
    session_cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)  # text of cached histories
    history_messages: int = Field(default=20, ge=0, le=1000)

    # Start-up: how long a replica waits for its actors to answer and warm up.
    start_timeout_s: float = Field(default=180.0, gt=0)

    # Streaming.
    coalesce_ms: float = Field(default=30.0, ge=0, le=1000)
    poll_timeout_s: float = Field(default=1.0, gt=0, le=30)
    outbound_queue_max: int = Field(default=1024, ge=8)
    run_grace_s: float = Field(default=300.0, ge=0)
    # Ended runs a shard remembers within their grace period; past it the oldest are forgotten
    # (and answered from the database), so a burst of short runs cannot grow a shard unbounded.
    ended_runs_max: int = Field(default=50_000, ge=1)
    agent_check_s: float = Field(default=1.0, gt=0)  # how often shards ask for ended and lost runs
    run_buffers_max: int = Field(default=20_000, ge=1)
    # Text all run buffers of one agent actor may hold; finished runs are evicted first.
    run_buffers_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    run_timeout_s: float = Field(default=300.0, gt=0)
    max_turns: int = Field(default=8, ge=1, le=100)

    # Capacity: sockets beyond this per ingress replica are refused with 503 (it
    # must stay below the deployment's max_ongoing_requests, 4096).
    max_sockets_per_replica: int = Field(default=4000, ge=1)

    # Input limits.
    max_frame_bytes: int = Field(default=64 * 1024, ge=256)
    max_text_chars: int = Field(default=8000, ge=1)
    rate_limit_per_s: float = Field(default=2.0, gt=0)  # chat messages per user
    rate_limit_burst: float = Field(default=10.0, ge=1)
    frame_rate_per_s: float = Field(default=20.0, gt=0)  # any frame, per socket
    frame_rate_burst: float = Field(default=60.0, ge=1)
    max_sockets_per_user: int = Field(default=16, ge=1)
    max_queued_per_session: int = Field(default=16, ge=0)

    # Slow and idle clients.
    idle_timeout_s: float = Field(default=600.0, gt=0)  # no frame either way: close 1000
    stuck_timeout_s: float = Field(default=30.0, gt=0)  # not reading: close 1008

    # Persistence.
    persist_queue_max: int = Field(default=10_000, ge=1)
    persist_batch_max: int = Field(default=256, ge=1)
    persist_flush_ms: float = Field(default=5.0, ge=0, le=1000)

    # Models.
    model: Literal["simulated", "openai"] = "simulated"
    sim_ttft_ms: float = Field(default=200.0, ge=0)
    sim_tokens_per_s: float = Field(default=50.0, gt=0)
    sim_reply_tokens: int = Field(default=40, ge=1, le=100_000)
    openai_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_model: str | None = None
    openai_max_retries: int = Field(default=2, ge=0, le=10)
    openai_timeout_s: float = Field(default=60.0, gt=0)
    # Requests in flight to the endpoint per agent actor (a stream counts until it ends);
    # more wait for a free slot instead of flooding the endpoint.
    openai_max_concurrency: int = Field(default=64, ge=1, le=10_000)

    @model_validator(mode="after")
    def _openai_needs_a_model(self) -> Settings:
        if self.model == "openai" and not self.openai_model:
            raise ValueError("RAYCHAT_MODEL=openai needs RAYCHAT_OPENAI_MODEL")
        return self

    @model_validator(mode="after")
    def _sqlite_has_one_writer(self) -> Settings:
        if self.is_sqlite and (self.persistence_writers or 1) > 1:
            raise ValueError(
                "RAYCHAT_PERSISTENCE_WRITERS > 1 needs PostgreSQL: SQLite has a single writer"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        """True when the database is SQLite (one writer, a file on one node)."""
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file as written in the URL (None: not SQLite or in memory)."""
        if not self.is_sqlite:
            return None
        # sqlite[+driver]:///relative/path or :////absolute/path (SQLAlchemy's URL form;
        # parsed here so the settings need no SQLAlchemy import).
        database = self.database_url.partition("://")[2].partition("?")[0][1:]
        return None if database in ("", ":memory:") else Path(database)

    def sized(self, cpus: float) -> Settings:
        """These settings with unset actor counts picked for a cluster of `cpus` CPUs.

        Each actor process costs CPU per turn on a small machine (measured: two
        shards instead of four saved about 2 ms per turn on 2 cores), so shards
        get one per two CPUs and agent actors, where the SDK's work is, one per
        CPU. Persistence writers: one on SQLite, one per four CPUs on PostgreSQL.
        Counts that are set are kept.
        """
        cores = max(1, int(cpus))
        update: dict[str, int] = {}
        if self.shards is None:
            update["shards"] = min(MAX_AUTO_SHARDS, max(1, cores // 2))
        if self.agent_actors is None:
            update["agent_actors"] = min(MAX_AUTO_AGENT_ACTORS, cores)
        if self.persistence_writers is None:
            auto = min(MAX_AUTO_PERSISTENCE_WRITERS, max(1, cores // 4))
            update["persistence_writers"] = 1 if self.is_sqlite else auto
        return self.model_copy(update=update) if update else self

    @property
    def shard_count(self) -> int:
        """The number of shard actors (settings must be `sized` first)."""
        if self.shards is None:
            raise ValueError("the shard count is not known yet: call Settings.sized first")
        return self.shards

    @property
    def agent_actor_count(self) -> int:
        """The number of agent actors (settings must be `sized` first)."""
        if self.agent_actors is None:
            raise ValueError("the agent actor count is not known yet: call Settings.sized first")
        return self.agent_actors

    @property
    def persistence_writer_count(self) -> int:
        """The number of persistence writers (1 on SQLite; others must be `sized` first)."""
        if self.persistence_writers is None:
            if self.is_sqlite:
                return 1
            raise ValueError("the writer count is not known yet: call Settings.sized first")
        return self.persistence_writers

    @property
    def secret_file(self) -> Path:
        """Where the generated token secret lives when `RAYCHAT_SECRET` is unset."""
        return self.data_dir / "secret"
