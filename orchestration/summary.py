"""The end of a study: one row per trial (from Ray Tune's public ``ResultGrid``), the summary table printed and
logged to the parent MLflow run, the parent run's final status, and what to run next."""
from __future__ import annotations

import csv
import io
import logging
import math
import sys
from pathlib import Path

from orchestration import SWEEP_PROG as PROG
from orchestration import tracking
from orchestration.study import Study
from orchestration.tracking import TAG_TRIAL_KEY, child_runs, client_for

log = logging.getLogger(__name__)


def summarize(results, study: Study, epochs: int, run_status: dict | None = None,
              interrupted: bool = False) -> tuple[list[dict], dict]:
    """One row per trial of ``results`` (Ray Tune's public ``ResultGrid``: each ``Result``'s config, last
    metrics and error), best first, and counts per status: done, stopped early (a scheduler ended it before
    ``epochs``), FAILED (with the reason), interrupted.

    ``run_status`` (trial id -> MLflow child run status) is given after an interrupt: a trial counts as done
    only if its child run finished.
    """
    from orchestration.callbacks import config_label, error_file_text   # Ray: checked installed by sweep.main

    rows = []
    for r in results:
        res = r.metrics or {}
        epoch = int(res.get("epoch", 0))
        trial_id = res.get("trial_id") or Path(str(r.path)).name
        if r.error is not None:
            status = "FAILED"
        elif interrupted and (epoch < epochs or (run_status is not None and run_status.get(trial_id) != "FINISHED")):
            status = "interrupted"
        elif epoch < epochs:
            status = "stopped early"
        else:
            status = "done"
        value = res.get(study.metric)
        rows.append({"trial": config_label(r.config, trial_id, study.varying_keys(), bool(study.search)), "status": status,
                     "epochs": epoch, study.metric: value if isinstance(value, (int, float)) else None,
                     "time_s": round(float(res.get("time_total_s", 0.0)), 1),
                     "reason": error_file_text(Path(str(r.path)) / "error.txt", r.error) if r.error is not None else ""})
    sign = -1 if study.mode == "max" else 1
    rows.sort(key=lambda row: (row[study.metric] is None or not math.isfinite(row[study.metric]),
                               sign * (row[study.metric] or 0.0)))
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return rows, counts


def format_table(rows: list[dict], metric: str) -> str:
    cols = ["trial", "status", "epochs", metric, "time_s"]

    def cell(r, c):
        v = r[c]
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) and c == metric else str(v)

    widths = [max(len(c), *(len(cell(r, c)) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell(r, c).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    lines += [f"  {r['trial']}: {r['reason']}" for r in rows if r["reason"]]
    return "\n".join(lines)


def log_summary(info, rows: list[dict], table: str) -> None:
    client = client_for(info.uri)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["trial"])
    w.writeheader()
    w.writerows(rows)
    client.log_text(info.parent_run_id, buf.getvalue(), "summary.csv")
    client.log_text(info.parent_run_id, table + "\n", "summary.txt")


def child_statuses(info) -> dict[str, str]:
    """Trial id -> status of its MLflow child run."""
    runs = child_runs(client_for(info.uri), info.experiment_id, info.parent_run_id)
    return {r.data.tags.get(TAG_TRIAL_KEY): r.info.status for r in runs}


def mark_unfinished(info) -> None:
    """Child runs cut short by an interrupt: KILLED until --resume continues them."""
    client = client_for(info.uri)
    for run in child_runs(client, info.experiment_id, info.parent_run_id):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")


def finish(study: Study, info, results, epochs: int, wall: float, run_name: str, interrupted: bool) -> int:
    """Print and log the summary of ``results`` (a ``ResultGrid``), end the parent run; the exit status."""
    statuses = None
    if interrupted:
        try:
            statuses = child_statuses(info)
        except Exception as e:  # noqa: BLE001 (MLflow unreachable: the summary falls back on Tune's statuses)
            log.warning("could not read the child runs' statuses: %s", e)
    rows, counts = summarize(results, study, epochs, statuses, interrupted)
    not_started = max(0, study.num_trials() - len(rows)) if interrupted else 0
    if not_started:
        counts["not started"] = not_started
    table = format_table(rows, study.metric)
    failed = counts.get("FAILED", 0)
    print(f"\n{study.name}: {len(rows)} trials in {wall:.0f} s: "
          + ", ".join(f"{n} {s}" for s, n in counts.items()), flush=True)
    print(table, flush=True)
    try:
        log_summary(info, rows, table)
        if interrupted:
            mark_unfinished(info)
        status = "KILLED" if interrupted else "FAILED" if failed == len(rows) else "FINISHED"
        tracking.end_parent(info, status)
    except Exception as e:  # noqa: BLE001 (the study's results are safe in Ray's storage either way)
        log.warning("could not record the summary in MLflow: %s", e)
    if interrupted:
        print(f"{PROG}: interrupted; the state is saved. Continue with: python orchestration/sweep.py "
              f"--study {study.name} --resume {run_name}", file=sys.stderr, flush=True)
        return 130
    print(f"MLflow: parent run {info.parent_run_id} in {info.uri}; figures: python orchestration/report.py "
          f"--study {study.name}", flush=True)
    print(f"MLflow runs page: {tracking.runs_page(info.uri, info.experiment_id)}", flush=True)
    return 1 if failed else 0
