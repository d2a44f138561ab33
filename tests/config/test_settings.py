import pytest

from config import ConfigError, ensure_secret, load_settings

BASE = {"SECRET_KEY_BASE": "x" * 32}


def test_defaults():
    s = load_settings({})
    assert s.port == 3000 and s.host == "0.0.0.0"
    assert s.database_url is None and s.redis_url is None
    assert s.allowed_origins == ("*",)
    assert s.default_country_code == "US"
    assert s.rate_limit_per_key_per_minute == 600 and s.rate_limit_register_per_minute == 20
    assert s.gateway_send_rate_per_minute == 30
    assert s.workers == 1
    assert s.http_server == "fast"
    assert s.sms_retry_delays == (30.0, 120.0, 480.0)


@pytest.mark.parametrize("env, variable", [
    ({"PORT": "70000"}, "PORT"),
    ({"WORKERS": "0"}, "WORKERS"),
    ({"WORKERS": "two"}, "WORKERS"),
    ({"PORT": "-1"}, "PORT"),
    ({"PORT": "http"}, "PORT"),
    ({"DEFAULT_COUNTRY_CODE": "XX"}, "DEFAULT_COUNTRY_CODE"),
    ({"DEFAULT_COUNTRY_CODE": "USA"}, "DEFAULT_COUNTRY_CODE"),
    ({"DATABASE_URL": "mysql://localhost/db"}, "DATABASE_URL"),
    ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
    ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://localhost:notaport/0"}, "REDIS_URL"),
    ({"PUBLIC_URL": "ftp://example.com"}, "PUBLIC_URL"),
    ({"PUBLIC_URL": "https://"}, "PUBLIC_URL"),
    ({"ALLOWED_ORIGINS": "example.com"}, "ALLOWED_ORIGINS"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ({"HTTP_SERVER": "nginx"}, "HTTP_SERVER"),
    ({"SMSGW_ENV": "production"}, "SECRET_KEY_BASE"),
    ({"SECRET_KEY_BASE": "short"}, "SECRET_KEY_BASE"),
    ({"RATE_LIMIT_PER_KEY_PER_MINUTE": "-5"}, "RATE_LIMIT_PER_KEY_PER_MINUTE"),
    ({"GATEWAY_SEND_RATE_PER_MINUTE": "many"}, "GATEWAY_SEND_RATE_PER_MINUTE"),
    ({"TZ_DAILY_RESET": "Mars/Olympus"}, "TZ_DAILY_RESET"),
    ({"SMS_RETRY_DELAYS": "30,x"}, "SMS_RETRY_DELAYS"),
    ({"SMS_RETRY_DELAYS": "-1"}, "SMS_RETRY_DELAYS"),
])
def test_bad_value_names_the_variable(env, variable):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(variable + ":")


@pytest.mark.parametrize("env, field, expected", [
    ({"PORT": "8080"}, "port", 8080),
    ({"DEFAULT_COUNTRY_CODE": "gb"}, "default_country_code", "GB"),
    ({"ALLOWED_ORIGINS": "https://a.example, http://b.example:8080/"}, "allowed_origins",
     ("https://a.example", "http://b.example:8080")),
    ({"DATABASE_URL": "postgresql://u:p@db:5432/sms"}, "database_url", "postgresql://u:p@db:5432/sms"),
    ({"REDIS_URL": "redis://localhost:6379/1"}, "redis_url", "redis://localhost:6379/1"),
    ({"LOG_LEVEL": "debug"}, "log_level", "DEBUG"),
    ({"HTTP_SERVER": "hypercorn"}, "http_server", "hypercorn"),
    ({"RATE_LIMIT_PER_KEY_PER_MINUTE": "0"}, "rate_limit_per_key_per_minute", 0),
    ({"TZ_DAILY_RESET": "Europe/Paris"}, "tz_daily_reset", "Europe/Paris"),
    ({"SMS_RETRY_DELAYS": "1,2.5"}, "sms_retry_delays", (1.0, 2.5)),
    ({"SMSGW_ENV": "production", **BASE}, "environment", "production"),
])
def test_good_values(env, field, expected):
    assert getattr(load_settings(env), field) == expected


@pytest.mark.parametrize("public_url, host, scheme, expected", [
    (None, "localhost:3000", "http", "ws://localhost:3000/cable"),
    (None, "gw.example:8443", "https", "wss://gw.example:8443/cable"),
    ("https://sms.example.com", "ignored", "http", "wss://sms.example.com/cable"),
    ("http://sms.example.com/base/", "ignored", "http", "ws://sms.example.com/base/cable"),
])
def test_websocket_url(public_url, host, scheme, expected):
    env = {"PUBLIC_URL": public_url} if public_url else {}
    assert load_settings(env).websocket_url(host, scheme) == expected


def test_development_secret_is_generated_once_and_kept(tmp_path):
    settings = load_settings({"SMSGW_VAR_DIR": str(tmp_path)})
    first = ensure_secret(settings)
    second = ensure_secret(settings)
    assert first.secret_key_base and first.secret_key_base == second.secret_key_base
    assert (tmp_path / "secret_key_base").stat().st_mode & 0o777 == 0o600
