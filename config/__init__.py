"""Settings: read once from the environment at start, validated, frozen.

A bad value stops the process with one line naming the variable (exit code 2), never a
traceback; `load_settings` raises `ConfigError` and the CLI turns it into that line.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

import attrs
import phonenumbers

__all__ = ["ConfigError", "Settings", "load_settings"]

DEV_ENVIRONMENTS = frozenset({"development", "test"})
LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
LOG_FORMATS = frozenset({"text", "json"})
HTTP_SERVERS = frozenset({"fast", "hypercorn"})


class ConfigError(Exception):
    """A variable of the environment has a value the server cannot use."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


@attrs.frozen
class Settings:
    database_url: str | None  # None: start the embedded PostgreSQL under var_dir
    redis_url: str | None
    allowed_origins: tuple[str, ...]  # ("*",) allows any origin
    default_country_code: str
    secret_key_base: str | None  # None only until the embedded mode made one
    host: str = "0.0.0.0"
    port: int = 3000
    public_url: str | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    environment: str = "development"
    var_dir: Path = Path("var")
    rate_limit_per_key_per_minute: int = 600
    rate_limit_register_per_minute: int = 20
    gateway_send_rate_per_minute: int = 30
    otp_sends_per_key_per_hour: int = 100
    message_ttl_seconds: int = 86_400
    sms_max_attempts: int = 3
    tz_daily_reset: str = "UTC"
    db_pool_size: int = 10
    statement_timeout_ms: int = 5_000
    sms_retry_delays: tuple[float, ...] = (30.0, 120.0, 480.0)
    otp_message_template: str = "Your verification code is: {code}"
    webhook_concurrency: int = 10
    webhook_timeout_seconds: int = 10
    metrics_token: str | None = None  # None: GET /metrics needs no key
    redis_prefix: str = "smsgw"  # every Redis key and channel of the backplane starts with it
    node_id: str | None = None   # None: a random id per process (the backplane's presence)
    workers: int = 1  # `smsgw serve` processes on this machine (more than one needs Redis)
    http_server: str = "fast"  # "fast": web/fast_lane.py serves HTTP/1.1; "hypercorn": Hypercorn alone

    def websocket_url(self, request_host: str | None = None, scheme: str = "http") -> str:
        """The `/cable` URL a newly registered gateway is told to open."""
        base = self.public_url or f"{scheme}://{request_host or f'localhost:{self.port}'}"
        split = urlsplit(base)
        ws_scheme = "wss" if split.scheme == "https" else "ws"
        path = split.path.rstrip("/")
        return f"{ws_scheme}://{split.netloc}{path}/cable"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every variable; raise `ConfigError` on the first bad one."""
    env = os.environ if environ is None else environ
    read = _Reader(env)
    environment = read.choice("SMSGW_ENV", {"development", "test", "production"}, "development")
    database_url = read.url("DATABASE_URL", {"postgres", "postgresql"})
    secret = read.text("SECRET_KEY_BASE")
    if secret is not None and len(secret) < 16:
        raise ConfigError("SECRET_KEY_BASE", "must be at least 16 characters")
    if secret is None and environment not in DEV_ENVIRONMENTS:
        raise ConfigError("SECRET_KEY_BASE", f"is required when SMSGW_ENV={environment}")
    return Settings(
        database_url=database_url,
        redis_url=read.url("REDIS_URL", {"redis", "rediss", "unix"}),
        allowed_origins=read.origins("ALLOWED_ORIGINS"),
        default_country_code=read.country("DEFAULT_COUNTRY_CODE"),
        secret_key_base=secret,
        host=read.text("HOST") or "0.0.0.0",
        port=read.integer("PORT", 3000, low=0, high=65535),  # 0: an ephemeral port
        public_url=read.url("PUBLIC_URL", {"http", "https"}),
        log_level=read.choice("LOG_LEVEL", LOG_LEVELS, "INFO", upper=True),
        log_format=read.choice("LOG_FORMAT", LOG_FORMATS, "text"),
        environment=environment,
        var_dir=Path(read.text("SMSGW_VAR_DIR") or "var"),
        rate_limit_per_key_per_minute=read.integer("RATE_LIMIT_PER_KEY_PER_MINUTE", 600, low=0),
        rate_limit_register_per_minute=read.integer("RATE_LIMIT_REGISTER_PER_MINUTE", 20, low=0),
        gateway_send_rate_per_minute=read.integer("GATEWAY_SEND_RATE_PER_MINUTE", 30, low=0),
        otp_sends_per_key_per_hour=read.integer("OTP_SENDS_PER_KEY_PER_HOUR", 100, low=0),
        message_ttl_seconds=read.integer("MESSAGE_TTL_SECONDS", 86_400, low=1),
        sms_max_attempts=read.integer("SMS_MAX_ATTEMPTS", 3, low=1, high=20),
        tz_daily_reset=read.timezone("TZ_DAILY_RESET"),
        db_pool_size=read.integer("DB_POOL_SIZE", 10, low=2, high=200),
        statement_timeout_ms=read.integer("STATEMENT_TIMEOUT_MS", 5_000, low=100),
        sms_retry_delays=read.delays("SMS_RETRY_DELAYS", (30.0, 120.0, 480.0)),
        otp_message_template=_otp_template(read.text("OTP_MESSAGE_TEMPLATE")),
        webhook_concurrency=read.integer("WEBHOOK_CONCURRENCY", 10, low=1, high=1000),
        webhook_timeout_seconds=read.integer("WEBHOOK_TIMEOUT_SECONDS", 10, low=1, high=300),
        metrics_token=_metrics_token(read.text("METRICS_TOKEN")),
        redis_prefix=_identifier("REDIS_PREFIX", read.text("REDIS_PREFIX")) or "smsgw",
        node_id=_identifier("NODE_ID", read.text("NODE_ID")),
        workers=read.integer("WORKERS", 1, low=1, high=256),
        http_server=read.choice("HTTP_SERVER", HTTP_SERVERS, "fast"),
    )


def ensure_secret(settings: Settings) -> Settings:
    """In development with no SECRET_KEY_BASE, make one once and keep it under var_dir."""
    if settings.secret_key_base is not None:
        return settings
    path = settings.var_dir / "secret_key_base"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_hex(64))
        path.chmod(0o600)
    return attrs.evolve(settings, secret_key_base=path.read_text().strip())


def _metrics_token(raw: str | None) -> str | None:
    """METRICS_TOKEN: the bearer token GET /metrics then requires; 16+ visible characters."""
    if raw is not None and (len(raw) < 16 or any(c.isspace() for c in raw)):
        raise ConfigError("METRICS_TOKEN", "must be at least 16 characters with no spaces")
    return raw


def _identifier(variable: str, raw: str | None) -> str | None:
    """REDIS_PREFIX, NODE_ID: 1 to 64 letters, digits, `_`, `-`, `.` (no spaces or colons)."""
    if raw is not None and not (len(raw) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-.") for c in raw)):
        raise ConfigError(variable, f"must be 1-64 letters, digits, '_', '-' or '.', got {raw!r}")
    return raw


def _otp_template(raw: str | None) -> str:
    """OTP_MESSAGE_TEMPLATE: a text with {code} and optionally {purpose}, nothing else."""
    if raw is None:
        return "Your verification code is: {code}"
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(raw) if name is not None]
    except ValueError as exc:
        raise ConfigError("OTP_MESSAGE_TEMPLATE", f"is not a valid template ({exc})") from None
    if any(name not in ("code", "purpose") or spec or conv for name, spec, conv in fields):
        raise ConfigError("OTP_MESSAGE_TEMPLATE", f"may use only {{code}} and {{purpose}}, got {raw!r}")
    if "code" not in {name for name, _, _ in fields}:
        raise ConfigError("OTP_MESSAGE_TEMPLATE", f"must contain {{code}}, got {raw!r}")
    if len(raw) > 500:
        raise ConfigError("OTP_MESSAGE_TEMPLATE", "must be at most 500 characters")
    return raw


@attrs.frozen
class _Reader:
    env: Mapping[str, str]

    def text(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def integer(self, name: str, default: int, *, low: int | None = None, high: int | None = None) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, f"must be an integer, got {raw!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(name, f"must be {bounds}, got {value}")
        return value

    def choice(self, name: str, allowed: set[str] | frozenset[str], default: str, *, upper: bool = False) -> str:
        raw = self.text(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ConfigError(name, f"must be one of {', '.join(sorted(allowed))}, got {raw!r}")
        return value

    def url(self, name: str, schemes: set[str]) -> str | None:
        raw = self.text(name)
        if raw is None:
            return None
        split = urlsplit(raw)
        if split.scheme not in schemes:
            raise ConfigError(name, f"must be a {'/'.join(sorted(schemes))} URL, got {raw!r}")
        if not split.netloc and split.scheme not in {"unix", "postgres", "postgresql"}:
            raise ConfigError(name, f"has no host: {raw!r}")
        try:
            split.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise ConfigError(name, f"has a malformed port: {raw!r}") from None
        return raw

    def delays(self, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            values = tuple(float(part) for part in raw.split(","))
        except ValueError:
            raise ConfigError(name, f"must be a comma list of seconds, got {raw!r}") from None
        if not values or any(v < 0 or v != v or v > 86_400 for v in values):
            raise ConfigError(name, f"each delay must be between 0 and 86400 seconds, got {raw!r}")
        return values

    def origins(self, name: str) -> tuple[str, ...]:
        raw = self.text(name)
        if raw is None or raw == "*":
            return ("*",)
        origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
        for origin in origins:
            split = urlsplit(origin)
            if split.scheme not in {"http", "https"} or not split.netloc:
                raise ConfigError(name, f"must be * or a comma list of http(s) origins, got {origin!r}")
        return origins

    def country(self, name: str) -> str:
        raw = (self.text(name) or "US").upper()
        if raw not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(name, f"is not a known ISO 3166 country code: {raw!r}")
        return raw

    def timezone(self, name: str) -> str:
        raw = self.text(name) or "UTC"
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(raw)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(name, f"is not a known time zone: {raw!r}") from None
        return raw
