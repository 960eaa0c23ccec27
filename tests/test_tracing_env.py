"""Tracing follows the standard OpenTelemetry variables: on with an OTLP endpoint, off (and
the SDK never loaded) without one or when disabled; prompts and answers only when asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.runtime import Runtime
from orchestrator.telemetry import NoopTracing, open_tracing, traces_endpoint
from orchestrator.telemetry.otel import OtelTracing
from schema.clock import FakeClock
from tests.conftest import make_settings
from tests.procs import clean_env

BASE = "http://collector.example:4318"


@pytest.mark.parametrize(("env", "endpoint"), [
    ({}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": BASE}, f"{BASE}/v1/traces"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": f"{BASE}/"}, f"{BASE}/v1/traces"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, None),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{BASE}/custom/path",
      "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318"}, f"{BASE}/custom/path"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": BASE, "OTEL_SDK_DISABLED": "true"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": BASE, "OTEL_TRACES_EXPORTER": "none"}, None),
])
def test_the_endpoint_comes_from_the_standard_variables(env: dict[str, str],
                                                        endpoint: str | None) -> None:
    assert traces_endpoint(env) == endpoint
    tracing = open_tracing(env)
    try:
        assert tracing.enabled is (endpoint is not None)
        assert isinstance(tracing, OtelTracing if endpoint else NoopTracing)
    finally:
        tracing.close()


@pytest.mark.parametrize(("value", "captured"), [(None, False), ("false", False),
                                                  ("true", True), ("TRUE", True)])
def test_content_is_captured_only_when_asked(value: str | None, captured: bool) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": BASE}
    if value is not None:
        env["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = value
    tracing = open_tracing(env)
    try:
        assert isinstance(tracing, OtelTracing) and tracing.capture_content is captured
    finally:
        tracing.close()


def test_a_runtime_traces_when_its_environment_names_an_endpoint(tmp_path: Path,
                                                                 clock: FakeClock) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 't.db'}")
    off = Runtime.build(settings, clock, env={})
    on = Runtime.build(settings, clock, env={"OTEL_EXPORTER_OTLP_ENDPOINT": BASE,
                                             "OTEL_SERVICE_NAME": "tickwork-eu"})
    try:
        assert not off.tracing.enabled
        assert isinstance(on.tracing, OtelTracing) and on.tracing.enabled
        assert on.tracing.target.startswith(f"{BASE}/v1/traces")
        assert on.tracing.service_name == "tickwork-eu"
    finally:
        off.close()
        on.close()


def test_without_an_endpoint_the_sdk_is_never_loaded(tmp_path: Path) -> None:
    # A whole runtime built and a tick traced through the no-op: the OpenTelemetry trace SDK
    # and its exporter stay unimported, so the hot path cannot pay for them. (The Redis
    # client loads the metrics part of the SDK for its own use.)
    code = (
        "import sys\n"
        "from orchestrator.runtime import Runtime\n"
        "from orchestrator.config import Settings\n"
        "from orchestrator.store.abc import Claimed\n"
        f"s = Settings(_env_file=None, database_url='sqlite:///{tmp_path / 'n.db'}')\n"
        "rt = Runtime.build(s)\n"
        "trace = rt.runner.trace(Claimed(1, 1, 1, 1, 0.0))\n"
        "trace.end(0.0)\n"
        "rt.close()\n"
        "print(rt.tracing.enabled, sorted(m for m in sys.modules\n"
        "      if m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter'))))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False []"


def test_the_batch_processor_is_sized_for_a_fleet_unless_the_variables_say_otherwise() -> None:
    from orchestrator.telemetry import batching

    assert batching({})["max_queue_size"] >= 32_768  # the SDK's 2,048 drop spans at 1,000 stacks
    assert "max_queue_size" not in batching({"OTEL_BSP_MAX_QUEUE_SIZE": "100"})
