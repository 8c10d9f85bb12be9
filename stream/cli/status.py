"""What `ringwatch status` adds to the runtime's nodes and actors: each consumer group's aligned checkpoints.

The engines of a group on a cluster keep their checkpoint records in the GCS
(`GcsCheckpointRecords`); this section lists, per group, the records kept (epoch
and age) and, for the newest, every engine's records consumed, low watermark
and how long ago it last published its progress.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ringwatch.runtime import cli as runtime_cli

if TYPE_CHECKING:
    from ringwatch.runtime.gcs import RedisGcs


class EngineCheckpoints:
    """The `engines` section of `ringwatch status`."""

    name = "engines"

    def collect(self, gcs: RedisGcs) -> list[dict[str, Any]]:
        from ..checkpoint import GcsCheckpointRecords, groups  # pyarrow: for `ringwatch status`, not its --help

        now = time.time()
        found = []
        for group in groups(gcs):
            store = GcsCheckpointRecords(group, kv=gcs)
            records = store.history()
            live = store.group_progress()
            newest = records[-1] if records else None
            found.append({
                "group": group,
                "checkpoints": [{"epoch": c.epoch, "age_s": round(now - c.created_at, 3), "shards": len(c.shards)}
                                for c in records],
                "engines": [{"engine": engine, "transactions": progress.transactions,
                             "low_watermark": progress.low_watermark,
                             "published_age_s": round(now - progress.published_at, 3) if progress.published_at
                             else None, "live": engine in live}
                            for engine, progress in sorted((newest.engines if newest else {}).items())],
            })
        return found

    def render(self, data: list[dict[str, Any]]) -> list[str]:
        if not data:
            return ["no engine checkpoints in this cluster's GCS"]
        lines = []
        for group in data:
            epochs = ", ".join(f"epoch {c['epoch']} ({c['age_s']:.1f} s ago)" for c in reversed(group["checkpoints"]))
            lines.append(f"consumer group {group['group']}: {epochs or 'no checkpoint yet'}")
            for engine in group["engines"]:
                low = engine["low_watermark"]
                low_text = "none" if low is None else datetime.fromtimestamp(low / 1000, timezone.utc).strftime(
                    "%Y-%m-%d %H:%M:%S")
                age = engine["published_age_s"]
                state = "live" if engine["live"] else "gone"
                lines.append(f"  {engine['engine']:<48} {state:<5} {engine['transactions']:>12,} records  "
                             f"low watermark {low_text}  progress {'?' if age is None else f'{age:.1f} s'} ago")
        return lines


def register(subparsers: argparse._SubParsersAction) -> None:
    runtime_cli.register_status(subparsers, sections=[EngineCheckpoints()])
