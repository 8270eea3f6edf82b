"""Settings read from the environment, in one place.

Secrets are ``SecretStr`` so that printing or serialising the settings never shows them. Nothing
here is read at import time: call :func:`load_settings` when a command or an asset starts, so a
``DATABASE_URL`` set after import is honoured (Autopack's pitfall P1: an engine bound at import).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from autopack_pipeline.domain.windows import LONG_WINDOW_DAYS

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(__file__).resolve().parent
# Read-only defaults shipped inside the package (package data; in a checkout, a link to ./seeds).
PACKAGED_SEEDS_DIR = PACKAGE_DIR / "seeds_default"
SEEDS_DIR_VARIABLE = "AUTOPACK_SEEDS_DIR"

PARTITIONS_START_VARIABLE = "AUTOPACK_PARTITIONS_START"
DEFAULT_PARTITIONS_START = "2024-01-01"

BackendName = Literal["simulated", "anthropic", "replay"]

# The storage settings' variables, named here once: messages and the CLI's help quote them.
DATABASE_URL_VARIABLE = "DATABASE_URL"
TELEMETRY_FLAG_VARIABLE = "TELEMETRY_DB_ENABLED"
SPOOL_DIR_VARIABLE = "AUTOPACK_SPOOL_DIR"
COLUMNAR_DIR_VARIABLE = "AUTOPACK_COLUMNAR_DIR"
DAGSTER_HOME_VARIABLE = "DAGSTER_HOME"
DEFAULT_SPOOL_DIR = Path(".autopack") / "spool"
# Only these switch telemetry on; anything else (including "on") leaves it off, as Autopack did.
_TELEMETRY_ON_VALUES = frozenset({"1", "true", "yes"})


class SettingsError(ValueError):
    """A setting from the environment has a value we cannot use; the message names the variable."""


def _existing_directory(value: str | Path) -> Path:
    path = Path(value).expanduser().absolute()
    if not path.is_dir():
        raise ValueError("not a directory")
    return path


def seeds_directory() -> Path:
    """The seeds in use: ``$AUTOPACK_SEEDS_DIR``, else ``./seeds`` when the working directory has one,
    else the packaged read-only defaults.

    Looked up from the working directory, not next to the installed code, so two checkouts (or an
    installed package) never share, or edit, each other's coefficient file.
    """
    value = os.environ.get(SEEDS_DIR_VARIABLE)
    if value:
        try:
            return _existing_directory(value)
        except ValueError as exc:
            raise SettingsError(f"invalid setting: {SEEDS_DIR_VARIABLE}: {exc} (got {value!r})") from None
    local = Path.cwd() / "seeds"
    return local if local.is_dir() else PACKAGED_SEEDS_DIR


def seeds_directory_is_configured() -> bool:
    """Whether ``$AUTOPACK_SEEDS_DIR`` chooses the seeds (rather than ``./seeds`` or the packaged ones)."""
    return bool(os.environ.get(SEEDS_DIR_VARIABLE))


def is_packaged_seeds(path: Path) -> bool:
    """Whether ``path`` is, or lies inside, the installed package: a place never to write to."""
    if path == PACKAGED_SEEDS_DIR:
        return True
    return Path(path).resolve().is_relative_to(PACKAGE_DIR)


def partitions_start() -> str:
    """First day (YYYY-MM-DD, UTC) of the per-day metric partitions: ``$AUTOPACK_PARTITIONS_START``.

    Read when the Dagster definitions load (a partitions definition is fixed then), unlike the
    settings below; events before it are in no day partition, but still in the all-time figures.
    """
    value = os.environ.get(PARTITIONS_START_VARIABLE) or DEFAULT_PARTITIONS_START
    try:
        date.fromisoformat(value)
    except ValueError:
        raise SettingsError(f"invalid setting: {PARTITIONS_START_VARIABLE}: not a YYYY-MM-DD date (got {value!r})") from None
    return value


def telemetry_flag_is_on(value: str | None) -> bool:
    """The ``TELEMETRY_DB_ENABLED`` rule: on for 1/true/yes in any case, off for anything else or unset."""
    return str(value or "").strip().lower() in _TELEMETRY_ON_VALUES


def _blank_is_unset(value: object) -> object:
    # An exported but empty variable (``DATABASE_URL=``) means "not set", as it always did.
    if isinstance(value, str) and not value.strip():
        return None
    return value.strip() if isinstance(value, str) else value


class StorageSettings(BaseModel):
    """What the telemetry database and its local files need: nothing here can be invalid.

    Kept apart from :class:`Settings` so that the database commands (``doctor``, ``db upgrade``,
    ``spool replay``) and the Builder's writer work whatever the LLM settings say; ``Settings``
    inherits every field, so a command holding a ``Settings`` passes it wherever these are wanted.
    A plain model, not a BaseSettings: :func:`load_storage_settings` picks its five variables itself,
    which is what makes it cheap enough for the writer to call on every event.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    # None: not set, so the storage default (``sqlite:///autopack.db`` in the working directory) applies.
    database_url: str | None = Field(default=None, validation_alias=DATABASE_URL_VARIABLE)
    # The raw value, kept as set (even blank), shown by `doctor`; ``telemetry_db_enabled`` applies the rule.
    telemetry_flag: str | None = Field(default=None, validation_alias=TELEMETRY_FLAG_VARIABLE)
    # Relative paths resolve against the working directory when used (storage.spool.spool_dir).
    spool_dir: Path = Field(default=DEFAULT_SPOOL_DIR, validation_alias=SPOOL_DIR_VARIABLE)
    # None: the store sits next to the SQLite file (storage.columnar.store_directory_for).
    columnar_dir: Path | None = Field(default=None, validation_alias=COLUMNAR_DIR_VARIABLE)
    # None: the `pipeline` command uses ./.dagster_home (defs.dagster_runner).
    dagster_home: Path | None = Field(default=None, validation_alias=DAGSTER_HOME_VARIABLE)

    @field_validator("database_url", "columnar_dir", "dagster_home", mode="before")
    @classmethod
    def _unset_when_blank(cls, value: object) -> object:
        return _blank_is_unset(value)

    @field_validator("spool_dir", mode="before")
    @classmethod
    def _default_spool_when_blank(cls, value: object) -> object:
        value = _blank_is_unset(value)
        return DEFAULT_SPOOL_DIR if value is None else value

    @field_validator("spool_dir", "columnar_dir", "dagster_home")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def telemetry_db_enabled(self) -> bool:
        """Whether the Builder's writer stores events (``TELEMETRY_DB_ENABLED``, default off)."""
        return telemetry_flag_is_on(self.telemetry_flag)

    def resolved_database_url(self, explicit: str | None = None) -> str:
        """The one database URL a command or asset uses: ``explicit`` (``--database-url``, a resource's
        config), else ``DATABASE_URL``, else the default, resolved by the storage rule (absolute SQLite
        path, psycopg driver). Carries the password: never log it, use ``describe_database`` for that."""
        from autopack_pipeline.storage.database_url import resolve_database_url

        return resolve_database_url(explicit or self.database_url)


class Settings(StorageSettings):
    """Every setting of the product; read once per command or asset by :func:`load_settings`.

    A plain model, like :class:`StorageSettings`: :func:`load_settings` finds its variables in the
    environment the way pydantic-settings' ``BaseSettings`` did (names in any case, the first of several
    aliases that is set, values as strings for pydantic to convert, every default validated), without
    importing pydantic-settings and its sources (dotenv, the cloud secret stores, its CLI): 10 ms at
    every command's start for twenty variables."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, validate_default=True)

    llm_backend: BackendName = Field(default="simulated", validation_alias="AUTOPACK_LLM_BACKEND")
    anthropic_api_key: SecretStr | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY")
    model: str = Field(default="claude-sonnet-4-5", validation_alias="AUTOPACK_MODEL")
    llm_stream: bool = Field(default=True, validation_alias="AUTOPACK_LLM_STREAM")
    # Seconds. Read: the longest silence in a streamed answer (the API sends pings while it works), so a
    # stalled stream is retried in minutes, not the SDK's 10; total: one answer, first byte to last.
    llm_connect_timeout: float = Field(
        default=10.0, gt=0, allow_inf_nan=False, validation_alias="AUTOPACK_LLM_CONNECT_TIMEOUT"
    )
    llm_read_timeout: float = Field(default=120.0, gt=0, allow_inf_nan=False, validation_alias="AUTOPACK_LLM_READ_TIMEOUT")
    llm_total_timeout: float = Field(
        default=1800.0, gt=0, allow_inf_nan=False, validation_alias="AUTOPACK_LLM_TOTAL_TIMEOUT"
    )
    seeds_dir: Path = Field(default_factory=seeds_directory, validation_alias="AUTOPACK_SEEDS_DIR")
    reports_dir: Path = Field(default=Path("reports"), validation_alias="AUTOPACK_REPORTS_DIR")
    simulation_seed: int = Field(default=42, validation_alias="AUTOPACK_SIM_SEED")
    replay_file: Path | None = Field(default=None, validation_alias="AUTOPACK_REPLAY_FILE")
    record_file: Path | None = Field(default=None, validation_alias="AUTOPACK_RECORD_FILE")

    task_generation_enabled: bool = Field(
        default=True,
        validation_alias=AliasChoices("AUTOPACK_TASK_GENERATION_ENABLED", "TASK_GENERATION_ENABLED"),
    )
    task_generation_auto_execute: bool = Field(
        default=True,
        validation_alias=AliasChoices("AUTOPACK_TASK_GENERATION_AUTO_EXECUTE", "TASK_GENERATION_AUTO_EXECUTE"),
    )
    task_generation_max_tasks: int = Field(
        default=10,
        ge=0,
        validation_alias=AliasChoices("AUTOPACK_TASK_GENERATION_MAX_TASKS", "TASK_GENERATION_MAX_TASKS_PER_RUN"),
    )
    task_generation_min_confidence: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        validation_alias=AliasChoices(
            "AUTOPACK_TASK_GENERATION_MIN_CONFIDENCE", "TASK_GENERATION_MIN_CONFIDENCE"
        ),
    )
    # Calibration learns from the events of this many most recent coefficient versions (the newest
    # one's alone when its error moved; 0 = every version): domain.calibration_window.
    calibration_window_versions: int = Field(default=2, ge=0, validation_alias="AUTOPACK_CALIBRATION_WINDOW_VERSIONS")
    # A collection run: how long a phase-state write is retried while the telemetry database is
    # unavailable before the run stops (resumably), and how long a crashed drain's claim on a run lasts.
    db_retry_seconds: float = Field(default=120.0, ge=0, allow_inf_nan=False, validation_alias="AUTOPACK_DB_RETRY_SECONDS")
    run_lease_seconds: float = Field(default=120.0, gt=0, allow_inf_nan=False,
                                     validation_alias="AUTOPACK_RUN_LEASE_SECONDS")

    # The rolling window the calibration gate and its inputs (clean samples, Tier-1 rates) read, in
    # days up to now; 0 reads every event, as the CLI does (an old Autopack database imported whole).
    metrics_window_days: int = Field(default=LONG_WINDOW_DAYS, ge=0, validation_alias="AUTOPACK_METRICS_WINDOW_DAYS")

    @field_validator("seeds_dir")
    @classmethod
    def _seeds_dir_exists(cls, value: Path) -> Path:
        return _existing_directory(value)

    def resolved_reports_dir(self) -> Path:
        """The reports directory as an absolute path (relative paths resolve against the cwd)."""
        return self.reports_dir.expanduser().resolve()


def _variable_names(field_name: str) -> list[str]:
    alias = Settings.model_fields[field_name].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [str(alias or field_name)]


def _variable_name(field_name: str) -> str:
    """The variable a bad value came from: the alias actually set (the first one wins, as in
    pydantic-settings), else the main name."""
    names = _variable_names(field_name)
    return next((name for name in names if name in os.environ), names[0])


def _shown(field_name: str, value: object) -> str:
    # Never echo a secret; anything else is shown, so the message says what was wrong with it.
    if field_name == "anthropic_api_key" or isinstance(value, (dict, list)):
        return ""
    return f" (got {value!r})"


def _field_for(location: str) -> str | None:
    """The field an error location names: pydantic reports an env error under the field's first alias."""
    if location in Settings.model_fields:
        return location
    return next((name for name in Settings.model_fields if location in _variable_names(name)), None)


def _settings_input(overrides: Mapping[str, object]) -> dict[str, object]:
    """What :class:`Settings` validates: each field's ``overrides`` entry (by field name or variable, in any
    case) or else its variable's value, found by name in any case (``BaseSettings``' ``case_sensitive=False``:
    of two variables that differ only in case, the later in the environment wins). Unknown overrides
    are ignored, as ``extra="ignore"`` ignored them."""
    environment = {name.lower(): value for name, value in os.environ.items()}
    given = {str(name).lower(): value for name, value in overrides.items()}
    found: dict[str, object] = {}
    for field_name in Settings.model_fields:
        names = _variable_names(field_name)
        chosen = next((name.lower() for name in (*names, field_name) if name.lower() in given), None)
        if chosen is not None:
            found[field_name] = given[chosen]
            continue
        variable = next((name for name in names if name.lower() in environment), None)
        if variable is not None:
            found[variable] = environment[variable.lower()]
    return found


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a bad value raises :class:`SettingsError` naming the environment variable."""
    try:
        return Settings.model_validate(_settings_input(overrides))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            location = str(error["loc"][0]) if error["loc"] else "?"
            field = _field_for(location)
            if field is None:
                problems.append(f"{location}: {error['msg']}")
                continue
            name = field if field in overrides else _variable_name(field)
            problems.append(f"{name}: {error['msg']}{_shown(field, error.get('input'))}")
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None


def load_storage_settings(env: Mapping[str, str] | None = None) -> StorageSettings:
    """The storage settings alone, from ``env`` (tests, a subprocess's environment) or the process
    environment. Never fails: every value of these has a meaning. Cheap (microseconds), as the
    Builder's writer asks for the telemetry flag and the spool on every event."""
    source = os.environ if env is None else env
    return StorageSettings.model_validate({name: source[name] for name in _STORAGE_VARIABLES if name in source})


_STORAGE_VARIABLES = tuple(str(field.validation_alias) for field in StorageSettings.model_fields.values())
