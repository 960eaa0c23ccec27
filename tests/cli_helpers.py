"""The `tickwork` commands run in-process through typer's CliRunner, as a user runs them.

`clean_env` gives a test an empty working directory and no TICKWORK_* settings from outside;
`cli` points TICKWORK_DATABASE_URL at the test's database. `Cli(...)` checks the exit code and
that no traceback was printed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from orchestrator.cli import app
from tests.procs import KEEP_ENV


class Cli:
    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0, env: dict[str, str] | None = None) -> Result:
        result = self.runner.invoke(app, list(args), env=env)
        assert "Traceback" not in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            repr(result.exception))
        assert result.exit_code == code, (result.exit_code, result.output)
        return result


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TICKWORK_* settings from outside, no .env, and a wide terminal (no wrapping)."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("TICKWORK_") and key not in KEEP_ENV:
            monkeypatch.delenv(key)
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture
def cli(clean_env: None, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("TICKWORK_DATABASE_URL", db_url)
    return Cli()


