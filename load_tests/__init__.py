"""Load tests: N stacks in one process for a while, measured (never run as unit tests)."""
