"""The data behind the dashboard's charts."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.runtime import Runtime


def router(rt: Runtime) -> APIRouter:
    return APIRouter(tags=["charts"])
