"""The orchestrator: beat, fan-out, tick queue, workers, tick runner, reaper, bus, config, CLI."""
