"""Observability settings from the environment: defaults, parsing, refusals."""

from __future__ import annotations

import pytest

from tenantry import Settings
from tenantry.errors import ConfigurationError


def test_defaults_are_json_logs_metrics_on_tracing_off() -> None:
    """With nothing set: JSON logs with redaction, metrics capped at 200 tenants, no
    tracing, usage metering on."""
    settings = Settings.from_env({})
    assert settings.log.format == "json"
    assert "password" in settings.log.redact_keys
    assert settings.metrics.enabled is True
    assert settings.metrics.tenant_cap == 200
    assert settings.metrics.multiproc_dir is None
    assert settings.metrics.port is None
    assert settings.tracing.enabled is False
    assert settings.usage.enabled is True


def test_variables_are_read() -> None:
    """Every documented variable reaches its setting."""
    settings = Settings.from_env(
        {
            "TENANTRY_LOG_FORMAT": "console",
            "TENANTRY_LOG_LEVEL": "WARNING",
            "TENANTRY_LOG_REDACT": "SSN, iban-number",
            "TENANTRY_ACCESS_LOG": "off",
            "TENANTRY_METRICS_TENANT_CAP": "50",
            "TENANTRY_METRICS_TENANTS": "acme,globex",
            "TENANTRY_METRICS_PROMOTE_AFTER": "5",
            "PROMETHEUS_MULTIPROC_DIR": "/run/tenantry/prom",
            "TENANTRY_METRICS_PORT": "9464",
            "TENANTRY_TRACING": "on",
            "TENANTRY_TRACE_SAMPLE_RATIO": "0.25",
            "OTEL_SERVICE_NAME": "hr-api",
            "TENANTRY_USAGE_FLUSH_SECONDS": "2.5",
        }
    )
    assert settings.log.format == "console"
    assert settings.log.level == "warning"
    assert {"ssn", "iban_number"} <= set(settings.log.redact_keys)
    assert settings.log.access_log is False
    assert settings.metrics.tenant_cap == 50
    assert settings.metrics.tenant_allow == ("acme", "globex")
    assert settings.metrics.promote_after == 5
    assert settings.metrics.multiproc_dir == "/run/tenantry/prom"
    assert settings.metrics.port == 9464
    assert settings.tracing.enabled is True
    assert settings.tracing.sample_ratio == 0.25
    assert settings.tracing.service_name == "hr-api"
    assert settings.usage.flush_seconds == 2.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TENANTRY_LOG_FORMAT", "xml"),
        ("TENANTRY_METRICS_TENANT_CAP", "-1"),
        ("TENANTRY_METRICS_TENANT_CAP", "many"),
        ("TENANTRY_TRACE_SAMPLE_RATIO", "1.5"),
        ("TENANTRY_TRACING", "maybe"),
    ],
)
def test_malformed_values_are_refused_with_the_variable_named(name: str, value: str) -> None:
    """A bad value stops start-up with a message naming the variable."""
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: value})
