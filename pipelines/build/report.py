"""What a build changed and did: the change lists, the report stored with the snapshot, its commit message."""

from __future__ import annotations

from typing import Any

from pipelines.build.plan import BuildPlan, previous_reader


def find_changes(plan: BuildPlan, rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    added, changed = [], []
    for w, row in zip(plan.work, rows, strict=True):
        if w.previous is None:
            added.append(row["path"])
        elif not w.unchanged(row) or w.previous.get("split") != row["split"]:
            changed.append(row["path"])
    new_keys = [] if plan.previous_snapshot is None else _new_frame_keys(plan)
    # a recording that was quarantined before and is unchanged stays quarantined: no change
    return {
        "added": added,
        "changed": changed,
        "removed": plan.removed,
        "new_frames": new_keys,
        "statics": [] if plan.reuse_statics else ["reloaded"],
    }


def _new_frame_keys(plan: BuildPlan) -> list[str]:
    have = set(previous_reader(plan.config.store, plan.previous_snapshot).frame_keys())
    return [s.key for s in plan.specs if s.key not in have]


def build_report(
    plan: BuildPlan,
    rows: list[dict],
    static_rows: list[dict],
    changes: dict[str, list[str]],
    bad_fraction: float,
) -> dict[str, Any]:
    good = [r for r in rows if r["status"] == "ok"]
    events = int(sum(r.get("events", 0) for r in good))
    process = plan.timings.get("process", 0.0)
    return {
        "source": plan.config.source,
        "recordings": len(good),
        "events": events,
        "images": int(sum(r.get("items", 0) for r in static_rows if r["status"] == "ok")),
        "classes": len(plan.classes),
        "decoded": sum(1 for r in rows if r.get("action") == "decoded"),
        "reused": sum(1 for r in rows if r.get("action") == "reused"),
        "quarantined": [
            {"path": r["path"], "kind": r["kind"], "reason": r["reason"]}
            for r in rows + static_rows
            if r["status"] != "ok"
        ],
        "bad_fraction": bad_fraction,
        "changes": {k: len(v) for k, v in changes.items()},
        "changed_paths": {k: v[:50] for k, v in changes.items() if k in ("added", "changed", "removed")},
        "parent_snapshot": plan.previous_snapshot,
        "frames_key": plan.config.frame_spec().key,
        "events_per_s_processing": events / process if process else None,
        "workers": plan.config.workers if not plan.config.dask_address else plan.config.dask_address,
        "timings": dict(plan.timings),
    }


def commit_message(plan: BuildPlan, changes: dict[str, list[str]]) -> str:
    counts = ", ".join(f"{k} {len(v)}" for k, v in changes.items() if v)
    kind = "refresh" if plan.previous_snapshot else "build"
    return f"{kind} {plan.config.source}: {counts or 'no data change'}"
