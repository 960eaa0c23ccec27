"""Hardening of the pages and the API (response headers, throttled failed sign-ins): `install`
adds it to the app."""

from __future__ import annotations

from fastapi import FastAPI

from orchestrator.runtime import Runtime


def install(app: FastAPI, rt: Runtime) -> None:
    """Nothing yet."""
