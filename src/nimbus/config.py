"""Settings, read once from NIMBUS_* environment variables and passed down.

Nothing in the package reads the environment at import time: entry points call
:func:`load_settings` and hand the result to the objects that need it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Typed settings for the server, the CLI and job processes."""

    model_config = SettingsConfigDict(env_prefix="NIMBUS_", extra="ignore")

    home: Path = Field(default=Path("~/.nimbus"))
    url: str = "http://127.0.0.1:8600"
    token: str | None = None
    database_url: str | None = None
    storage_url: str | None = None

    host: str = "127.0.0.1"
    port: int = 8600

    # Limits on what users may send.
    max_upload_bytes: int = 8 * 1024**3
    max_unpacked_bytes: int = 16 * 1024**3
    max_archive_members: int = 2_000_000
    max_image_pixels: int = 40_000_000
    max_compression_ratio: float = 200.0

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def resolved_database_url(self) -> str:
        """The metadata store URL: SQLite under NIMBUS_HOME unless one is given."""
        return self.database_url or f"sqlite:///{self.home / 'nimbus.db'}"

    @property
    def resolved_storage_url(self) -> str:
        """The blob store URL: a local directory under NIMBUS_HOME unless one is given."""
        return self.storage_url or f"file://{self.home / 'blobs'}"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment, with explicit overrides winning."""
    clean = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**clean)  # type: ignore[arg-type]
