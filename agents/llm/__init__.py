"""LLMs: the protocol, the simulated model, and (with keys) the provider chain."""
