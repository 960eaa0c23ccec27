"""A process that writes outbox events in transactions of random length, some rolled back:
`python -m tests.outbox_writer URL SEED COUNT`. Prints the ids it committed, one per line."""

from __future__ import annotations

import random
import sys
import time

from orchestrator.store import open_store
from orchestrator.store.outbox import emit_many
from schema.db import Database


class Rollback(Exception):
    pass


def main() -> None:
    url, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    db = Database(url)
    store = open_store(db, lease_clock="process")
    try:
        for n in range(count):
            events = rng.randint(1, 3)
            rollback = rng.random() < 0.1
            try:
                with store.write() as conn:
                    emit_many(conn, time.time(), [("stack.updated", None, None,
                                                   {"writer": seed, "n": n, "i": i})
                                                  for i in range(events)])
                    time.sleep(rng.uniform(0, 0.02))  # held open: others commit meanwhile
                    if rollback:
                        raise Rollback
            except Rollback:
                continue
    finally:
        db.close()


if __name__ == "__main__":
    main()
