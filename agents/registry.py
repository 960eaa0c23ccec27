"""Which agents exist: the four built-ins, plus the user's own.

Users add agents in either of two ways:
- an entry point in their package's metadata, group ``tickwork.agents``
  (``myagent = "mypkg.agents:MyAgent"``), found at start-up;
- ``TICKWORK_AGENTS="mypkg.agents:MyAgent,..."``, import paths read from the settings.
A stack names its team from these; a stack that names none gets the default team.

An import path is looked up on Python's path with the current directory first, as
`python -m` does: a `mypkg/` folder beside where tickwork starts is found without installing.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points

from agents.base import Agent
from agents.builder import Builder
from agents.communicator import Communicator
from agents.planner import Planner
from agents.reviewer import Reviewer

DEFAULT_TEAM: tuple[str, ...] = ("planner", "builder", "communicator", "reviewer")
ENTRY_POINT_GROUP = "tickwork.agents"

AgentFactory = Callable[[], object]


class UnknownAgent(ValueError):
    pass


class AgentRegistry:
    def __init__(self) -> None:
        self._factories: dict[str, AgentFactory] = {}
        self._instances: dict[str, Agent] = {}

    def register(self, factory: AgentFactory, name: str | None = None) -> None:
        """Register an agent class (or any callable returning an agent) under its name."""
        key = name or getattr(factory, "name", None)
        if not isinstance(key, str) or not key:
            raise ValueError(f"{factory!r} has no name; pass name=")
        self._factories[key] = factory
        self._instances.pop(key, None)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> Agent:
        if name not in self._instances:
            factory = self._factories.get(name)
            if factory is None:
                known = ", ".join(self.names())
                raise UnknownAgent(f"no agent named {name!r} (known: {known})")
            agent = factory()
            if not isinstance(agent, Agent):
                raise TypeError(f"{name!r} does not implement the Agent protocol")
            self._instances[name] = agent
        return self._instances[name]

    def team(self, names: Iterable[str] | None) -> list[Agent]:
        return [self.get(n) for n in (names or DEFAULT_TEAM)]

    def check(self, names: Iterable[str]) -> None:
        """Raise UnknownAgent unless every name is registered."""
        missing = [n for n in names if n not in self._factories]
        if missing:
            known = ", ".join(self.names())
            raise UnknownAgent(f"unknown agent(s) {', '.join(missing)} (known: {known})")

    @classmethod
    def default(cls, import_paths: Iterable[str] = (), *, plugins: bool = True) -> AgentRegistry:
        registry = cls()
        for builtin in (Planner, Builder, Communicator, Reviewer):
            registry.register(builtin)
        if plugins:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                registry.register(ep.load(), ep.name)
        for path in import_paths:
            registry.register(load_object(path))
        return registry


class AgentLoadError(ValueError):
    """An agent named by TICKWORK_AGENTS or an entry point cannot be loaded; says why."""


def _import(module_name: str) -> object:
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(module_name)


def load_object(path: str) -> AgentFactory:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise AgentLoadError(f"an agent's import path looks like 'package.module:Class', "
                             f"not {path!r}")
    try:
        module = _import(module_name)
    except ImportError as exc:
        raise AgentLoadError(f"cannot import {module_name!r} for {path} ({exc}); the module "
                             f"must be importable from the current directory ({os.getcwd()}) "
                             "or installed") from None
    except Exception as exc:
        raise AgentLoadError(f"importing {module_name!r} for {path} raised {exc!r}") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise AgentLoadError(f"{module_name!r} has no {attr!r} (from {path})")
    if not callable(obj):
        raise AgentLoadError(f"{path} is not a class or factory")
    return obj
