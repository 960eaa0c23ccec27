"""Agents: the protocol, the four built-in agents, the registry and the team pipeline."""
