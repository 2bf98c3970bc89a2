"""Typed settings, the only place that reads the environment.

Every setting has the prefix ``LUMBAR_AI_`` in the environment (``LUMBAR_AI_SPOOL_DIR``) and may come
from an env file (``LUMBAR_AI_ENV_FILE``, default ``.env``). Secrets have no default.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SHIPPED_MODEL_NAME = "lumbar-ai-1"
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / SHIPPED_MODEL_NAME
"""The trained model committed with the project (models/lumbar-ai-1 in a checkout); the Docker images
carry it at /models/lumbar-ai-1 and point LUMBAR_AI_MODEL_DIR there."""


class Destination(BaseModel):
    """A DICOM peer that receives our results over C-STORE."""

    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LUMBAR_AI_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Storage
    data_dir: Path = Path("var")
    """Root of the spool (received instances) and the results; sub-folders are derived below."""

    # ① receive
    ae_title: str = Field("LUMBAR_AI", min_length=1, max_length=16)
    listen_host: str = "0.0.0.0"
    listen_port: int = Field(11112, ge=1, le=65535)
    allowed_calling_aets: list[str] = Field(default_factory=list)
    """Calling AE titles allowed to associate; empty allows any."""
    allowed_ips: list[str] = Field(default_factory=list)
    """Peer IP addresses or CIDR networks allowed to associate; empty allows any."""
    require_called_aet: bool = True
    max_associations: int = Field(16, ge=1)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    disk_reserve_mb: int = Field(1024, ge=0)
    fsync: bool = True

    # ② assemble
    quiet_period_s: float = Field(30.0, ge=0)
    series_rules: Path | None = None
    """A YAML file of series selection rules; the shipped defaults when unset."""
    series_settle_s: float = Field(5.0, ge=0)
    """A study completes before its quiet period once its sagittal T1 and T2 have not grown for this long."""
    assembler_poll_s: float = Field(0.5, gt=0)

    # ③ queue
    redis_url: str = "redis://127.0.0.1:6379/0"
    stream_prefix: str = "lumbar-ai"
    consumer_group: str = "workers"
    visibility_timeout_s: float = Field(300.0, gt=0)
    recover_interval_s: float = Field(60.0, gt=0)
    """How often the assembler checks that Redis still knows every assembled study (after Redis lost its
    data, studies are queued again or marked done from their results on disk)."""
    max_attempts: int = Field(3, ge=1)

    # ④ infer
    model_dir: Path = SHIPPED_MODEL_DIR
    """An exported model directory; by default the model shipped with the project."""
    onnx_providers: list[str] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    """ONNX Runtime execution providers in order of preference; those this onnxruntime lacks are skipped
    (CPU is always the last resort). TensorRT is opt-in: put "TensorrtExecutionProvider" first."""
    intra_op_threads: int = Field(0, ge=0)
    """ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose."""
    inter_op_threads: int = Field(1, ge=1)
    slice_batch: int = Field(8, ge=1)

    # ⑤ encode
    seg_type: str = Field("BINARY", pattern="^(BINARY|LABELMAP)$")
    manufacturer: str = "lumbar-ai project"

    # ⑥ deliver
    destinations: list[Destination] = Field(default_factory=list)
    deliver_max_attempts: int = Field(8, ge=1)
    deliver_backoff_s: float = Field(5.0, gt=0)
    deliver_backoff_cap_s: float = Field(600.0, gt=0)
    retention_days: float = Field(30.0, gt=0)
    deliver_visibility_timeout_s: float = Field(120.0, gt=0)
    """A delivery claimed this long ago without an outcome (its process died) is taken over by another."""
    deliver_timeout_s: float = Field(30.0, gt=0)
    """Association, DIMSE and network timeout of one C-STORE."""
    retention_sweep_interval_s: float = Field(3600.0, gt=0)

    # api
    api_host: str = "0.0.0.0"
    api_port: int = Field(8000, ge=1, le=65535)
    api_keys: list[SecretStr] = Field(default_factory=list)
    api_keys_file: Path | None = None
    max_upload_mb: int = Field(2048, ge=1)
    max_instance_mb: int = Field(1024, ge=1)
    """Largest single DICOM instance accepted, over DICOM (refused 0xC210) or in an upload (413, per file
    or zip member): an Enhanced MR of a whole study stays well below it."""
    max_concurrent_uploads: int = Field(4, ge=1)
    """Uploads (POST /studies, STOW-RS) handled at once per API process; more get 429 with Retry-After."""
    api_tls_cert: Path | None = None
    """PEM certificate for HTTPS served by uvicorn itself; unset when a reverse proxy terminates TLS."""
    api_tls_key: Path | None = None
    metrics_require_key: bool = True
    """GET /metrics asks for an API key like every other route; false lets Prometheus scrape without one."""
    public_docs: bool = False
    """/docs and /openapi.json answer without an API key (a trusted network); by default they ask for one,
    as every route that describes the service does."""
    worker_heartbeat_s: float = Field(15.0, gt=0)
    """A worker counts as live for /readyz while its heartbeat is younger than three times this."""

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings()
