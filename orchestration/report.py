"""The paper's figures and tables from a study's MLflow runs: ``python orchestration/report.py --study NAME``.

Reads the study's parent run (the latest one, or ``--run-id``) and its child runs back from MLflow, and
draws what the study file's ``report`` section asks for, from the study YAML stored with the parent run
(so a report matches what was run):

* figures: one panel per metric, the metric's final value against a config key (e.g. the supervision
  rate), one line per series (e.g. model and observed modality), mean +- std over the other keys (the
  seeds), e.g. Fig. 5, 7, 21 and 22;
* tables: mean +- std of metrics per row key combination, as Markdown and CSV (appendix H, Table 2);
* claims: for each relative claim of the paper the study names (``report.claims``), whether it holds on
  these runs: the mean of one side against the other's, in every group (e.g. every supervision rate),
  with "within seed noise" where the gap is smaller than the two sides' standard deviations combined
  (``claims.md``, ``claims.csv``).

Figures and tables may use only some of the runs (``where``).

Files go to ``--out`` (default ``runs/reports/<parent run name>/``) and to the parent run's artifacts
under ``report/``. Only finished child runs count (failed or interrupted ones are listed and skipped).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from meme.models import TrainConfig
from meme.errors import MemeError
from orchestration import INPUTS, check_orchestration_installed
from orchestration.study import Study, load_study, parse_study, study_names
from orchestration.tracking import (PARENT_TAG, STUDY_ARTIFACT, TAG_ROLE, TAG_STUDY, check_reachable, child_runs,
                                    client_for, default_tracking_uri)

if TYPE_CHECKING:   # the spec classes come with pydantic (the orchestrate extra): imported where they are built
    from orchestration.study_schema import ClaimSide, ClaimSpec, FigureSpec, TableSpec

log = logging.getLogger("orchestration.report")

PROG = "report.py"
_TYPES = TrainConfig.types()


@dataclass(frozen=True)
class RunRecord:
    name: str
    status: str
    config: dict      # typed TrainConfig values
    metrics: dict     # final (latest step) value of each metric


def _typed(key: str, value: str):
    typ = _TYPES.get(key)
    if typ == "bool":
        return value == "True"
    if typ == "int":
        return int(value)
    if typ == "float":
        return float(value)
    return value


# --------------------------------------------------------------- reading
def find_parent(client, study: str, experiment: str | None, run_id: str | None):
    if run_id:
        try:
            return client.get_run(run_id)
        except Exception as e:  # mlflow's own exception types
            raise MemeError(f"no MLflow run {run_id} ({type(e).__name__})") from None
    name = experiment or study
    exp = client.get_experiment_by_name(name)
    if exp is None:
        if experiment is None and study not in study_names():
            raise MemeError(f"unknown study {study!r}; valid: {', '.join(study_names())} (or a study YAML file)")
        raise MemeError(f"no MLflow experiment {name!r} at this tracking URI; run the study first "
                        f"(sweep.py --study {study}) or pass --tracking-uri / --experiment")
    runs = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`{TAG_ROLE}` = 'study' and tags.`{TAG_STUDY}` = '{study}'"), order_by=["attributes.start_time DESC"],
        max_results=1)
    if not runs:
        raise MemeError(f"experiment {name!r} holds no run of study {study!r}")
    return runs[0]


def study_of(client, parent, fallback: str) -> Study:
    """The study as it was run (the YAML stored with the parent run); the file in search_spaces/ otherwise."""
    try:
        with tempfile.TemporaryDirectory() as d:
            path = client.download_artifacts(parent.info.run_id, STUDY_ARTIFACT, d)
            text = Path(path).read_text()
        return parse_study(text, parent.data.tags.get(TAG_STUDY, fallback), f"{STUDY_ARTIFACT} of run {parent.info.run_id}")
    except MemeError:
        raise
    except Exception as e:  # artifact missing or unreachable
        log.warning("cannot read %s of the parent run (%s); using the study file", STUDY_ARTIFACT, e)
        return load_study(fallback)


def load_records(client, parent) -> tuple[list[RunRecord], list[str]]:
    """Finished child runs as records, and one line per skipped (failed, interrupted) run."""
    records, skipped = [], []
    for run in child_runs(client, parent.info.experiment_id, parent.info.run_id):
        name = run.info.run_name or run.info.run_id
        if run.info.status != "FINISHED":
            skipped.append(f"{name}: {run.info.status} {run.data.tags.get('meme.failure', '')}".strip())
            continue
        config = {k: _typed(k, v) for k, v in run.data.params.items() if k in _TYPES}
        records.append(RunRecord(name, run.info.status, config, dict(run.data.metrics)))
    return records, skipped


def load_run_dirs(root: Path) -> tuple[list[RunRecord], list[str]]:
    """``meme train`` run directories under ``root`` (config.json and metrics.jsonl) as records: each metric's
    latest value, evaluations under their trial names (``eval_coherence_...`` -> ``coherence_...``); a run that
    has not reached its last epoch is skipped, with one line."""
    records, skipped = [], []
    for cfg_path in sorted(root.rglob("config.json")):
        run = cfg_path.parent
        name = str(run.relative_to(root)) if run != root else run.name
        try:
            config = TrainConfig.load(cfg_path).to_dict()
        except MemeError as e:
            skipped.append(f"{name}: unreadable config.json ({e})")
            continue
        metrics, epoch = {}, 0
        log_path = run / "metrics.jsonl"
        for line in (log_path.read_text().splitlines() if log_path.is_file() else []):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue   # a line cut by a kill
            epoch = max(epoch, int(row.get("epoch", 0)))
            metrics.update({k.removeprefix("eval_"): float(v) for k, v in row.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if epoch < config["epochs"]:
            skipped.append(f"{name}: epoch {epoch} of {config['epochs']}")
            continue
        records.append(RunRecord(name, "FINISHED", config, metrics))
    return records, skipped


# ------------------------------------------------------------- aggregates
def select(records: list[RunRecord], where: tuple) -> list[RunRecord]:
    """The records whose config has every (key, value) of ``where``."""
    return [r for r in records if all(r.config.get(k) == v for k, v in where)]


def run_value(r: RunRecord, metric: str) -> float | None:
    """A metric of one run, or the difference ``m1 - m2`` of two."""
    parts = [p.strip() for p in metric.split(" - ")]
    if not all(p in r.metrics for p in parts):
        return None
    return r.metrics[parts[0]] - (r.metrics[parts[1]] if len(parts) == 2 else 0.0)


def mean_std(values: list[float]) -> tuple[float, float, int]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    m = sum(vals) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return m, sd, n


def group(records: list[RunRecord], keys: tuple[str, ...], metric: str) -> dict[tuple, tuple[float, float, int]]:
    """(values of ``keys``) -> (mean, std, n) of ``metric`` over the records holding it (std: n - 1)."""
    buckets: dict[tuple, list[float]] = {}
    for r in records:
        if metric in r.metrics:
            buckets.setdefault(tuple(r.config.get(k) for k in keys), []).append(r.metrics[metric])
    return {k: mean_std(v) for k, v in sorted(buckets.items(), key=lambda kv: tuple(map(_sort_key, kv[0])))}


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def fmt_value(key: str, v) -> str:
    if key == "supervision" and isinstance(v, float):
        fr = Fraction(v).limit_denominator(1024)
        return str(fr) if abs(float(fr) - v) < 1e-9 else f"{v:g}"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def series_label(keys, values) -> str:
    return ", ".join(str(v) if isinstance(v, str) else f"{k}={fmt_value(k, v)}" for k, v in zip(keys, values)
                     if v != "") or "all"   # "": a key the series' model does not have (meme_combine of a baseline)


# --------------------------------------------------------------- outputs
def inputs_of(metric: str) -> int:
    """The number of input modalities a ``..._given_<k>`` metric is about."""
    tail = metric.rsplit("_", 1)[-1]
    if not tail.isdigit():
        raise MemeError(f"figure x: inputs needs metrics ending in _<number of inputs> (coherence_given_1, ...), "
                        f"got {metric!r}")
    return int(tail)


def points_by_inputs(spec: FigureSpec, records: list[RunRecord]) -> dict[tuple, list[tuple]]:
    """Per series, (number of inputs, mean, std, runs) of each ``spec.y`` metric, sorted by the number of inputs."""
    lines: dict[tuple, list] = {}
    for metric in spec.y:
        for key, (m, sd, n) in group(records, tuple(spec.series), metric).items():
            lines.setdefault(key, []).append((inputs_of(metric), m, sd, n))
    return {k: sorted(v) for k, v in lines.items()}


def _draw_by_inputs(spec: FigureSpec, records: list[RunRecord], out_dir: Path) -> Path | None:
    """One panel: x the number of input modalities, y the ``spec.y`` metric for it, one line per series."""
    from matplotlib.figure import Figure

    lines = points_by_inputs(spec, records)
    if not lines:
        log.warning("figure %s: no finished run logged any of %s", spec.name, ", ".join(spec.y))
        return None
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.subplots()
    _colours(ax, len(lines))
    for skey, pts in sorted(lines.items(), key=lambda kv: tuple(map(_sort_key, kv[0]))):
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", ms=4, capsize=3,
                    label=series_label(spec.series, skey))
    ax.set_xticks(sorted({p[0] for pts in lines.values() for p in pts}))
    ax.set_xlabel("number of input modalities")
    ax.set_ylabel(spec.y[0].rsplit("_", 1)[0].removesuffix("_given"))
    ax.grid(alpha=0.3)
    return _finish(fig, ax, spec, records, out_dir)


def _colours(ax, n_series: int) -> None:
    """Past the default ten colours, twenty, so that no two of the series share one."""
    if n_series > 10:
        from matplotlib import colormaps

        ax.set_prop_cycle(color=colormaps["tab20"].colors)


def _finish(fig, ax, spec, records, out_dir: Path) -> Path:
    """The legend (from ``ax``'s series), the title with the number of runs, and the PNG."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle(f"{spec.title or spec.name}\n(mean ± std over seeds; {len({r.name for r in records})} runs)",
                 fontsize=10)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.name}.png"
    fig.savefig(path, dpi=120)
    return path


def draw_figure(spec: FigureSpec, records: list[RunRecord], out_dir: Path) -> Path | None:
    from matplotlib.figure import Figure

    records = select(records, spec.where)
    if spec.x == INPUTS:
        return _draw_by_inputs(spec, records, out_dir)
    panels = [(m, group(records, (*spec.series, spec.x), m)) for m in spec.y]
    if not any(g for _, g in panels):
        log.warning("figure %s: no finished run logged any of %s", spec.name, ", ".join(spec.y))
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    xs_all = sorted({k[-1] for _, g in panels for k in g if isinstance(k[-1], (int, float))})
    n_series = len({k[:-1] for _, g in panels for k in g})
    for ax, (metric, g) in zip(axes, panels):
        lines: dict[tuple, list] = {}
        for key, (m, sd, n) in g.items():
            lines.setdefault(key[:-1], []).append((key[-1], m, sd, n))
        _colours(ax, n_series)
        for skey, pts in lines.items():
            pts.sort(key=lambda p: _sort_key(p[0]))
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", ms=4,
                        capsize=3, label=series_label(spec.series, skey))
        if not g:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        if spec.logx and xs_all and min(xs_all) > 0:
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs_all, [fmt_value(spec.x, x) for x in xs_all])
            ax.minorticks_off()
        ax.set_xlabel(spec.x)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    return _finish(fig, axes[0], spec, records, out_dir)


def build_table(spec: TableSpec, records: list[RunRecord]) -> tuple[list[str], list[list[str]], list[dict]]:
    """Header and rows for Markdown (mean ± std (n)), and the same as CSV dicts (mean, std, n separately)."""
    records = select(records, spec.where)
    groups = {m: group(records, spec.rows, m) for m in spec.columns}
    keys = sorted({k for g in groups.values() for k in g}, key=lambda k: tuple(map(_sort_key, k)))
    header = [*spec.rows, *spec.columns]
    md_rows, csv_rows = [], []
    for k in keys:
        cells = [fmt_value(r, v) for r, v in zip(spec.rows, k)]
        row = dict(zip(spec.rows, k))
        for m in spec.columns:
            mean, sd, n = groups[m].get(k, (math.nan, math.nan, 0))
            cells.append("-" if n == 0 else f"{mean:.4f} ± {sd:.4f} ({n})")
            row.update({f"{m}_mean": mean, f"{m}_std": sd, f"{m}_n": n})
        md_rows.append(cells)
        csv_rows.append(row)
    return header, md_rows, csv_rows


def write_table(spec: TableSpec, records: list[RunRecord], out_dir: Path) -> list[Path]:
    header, md_rows, csv_rows = build_table(spec, records)
    if not md_rows:
        log.warning("table %s: no finished run logged any of %s", spec.name, ", ".join(spec.columns))
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"### {spec.title or spec.name}", "", "| " + " | ".join(header) + " |",
          "|" + "|".join("---" for _ in header) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in md_rows]
    md_path = out_dir / f"{spec.name}.md"
    md_path.write_text("\n".join(md) + "\n\nmean ± std over seeds (number of runs)\n")
    csv_path = out_dir / f"{spec.name}.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        w.writeheader()
        w.writerows(csv_rows)
    return [md_path, csv_path]


def _side(side: ClaimSide, records: list[RunRecord], per: tuple, key: tuple) -> tuple[float, float, int]:
    if side.value is not None:
        return side.value, 0.0, 0
    runs = [r for r in select(records, side.where) if tuple(r.config.get(k) for k in per) == key]
    return mean_std([run_value(r, side.metric) for r in runs])


def _side_text(side: ClaimSide) -> str:
    if side.value is not None:
        return f"{side.value:g}"
    where = ", ".join(f"{k}={fmt_value(k, v)}" for k, v in side.where)
    return f"{side.metric} [{where}]" if where else side.metric


def evaluate_claim(spec: ClaimSpec, records: list[RunRecord]) -> tuple[str, list[dict]]:
    """The verdict on one claim (holds | holds, within seed noise | does not hold | no runs) and one row per group.

    In a group the claim holds if mean(a) > mean(b); "within seed noise" if the gap is smaller than
    sqrt(sd_a^2 + sd_b^2). The claim holds if it holds in every group.
    """
    sides = [r for side in (spec.a, spec.b) if side.value is None for r in select(records, side.where)]
    keys = sorted({tuple(r.config.get(k) for k in spec.per) for r in sides}, key=lambda k: tuple(map(_sort_key, k)))
    rows = []
    for key in keys:
        (ma, sa, na), (mb, sb, nb) = _side(spec.a, records, spec.per, key), _side(spec.b, records, spec.per, key)
        if na == 0 or (spec.b.value is None and nb == 0):
            verdict = "no runs"
        elif ma > mb:
            verdict = "holds" if ma - mb >= math.hypot(sa, sb) else "holds, within seed noise"
        else:
            verdict = "does not hold"
        rows.append({"claim": spec.name, **{k: v for k, v in zip(spec.per, key)}, "a_mean": ma, "a_std": sa, "a_n": na,
                     "b_mean": mb, "b_std": sb, "b_n": nb, "verdict": verdict})
    verdicts = {r["verdict"] for r in rows}
    if not rows or verdicts == {"no runs"}:
        overall = "no runs"
    elif "does not hold" in verdicts:
        overall = "does not hold"
    elif "no runs" in verdicts:
        overall = "incomplete"
    elif "holds, within seed noise" in verdicts:
        overall = "holds, within seed noise"
    else:
        overall = "holds"
    return overall, rows


def write_claims(claims: tuple, records: list[RunRecord], out_dir: Path) -> list[Path]:
    if not claims:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    md = ["### The paper's relative claims on these runs", "",
          "| claim | verdict | group | a: mean ± std (n) | b: mean ± std (n) |", "|---|---|---|---|---|"]
    csv_rows = []
    for spec in claims:
        overall, rows = evaluate_claim(spec, records)
        md.append(f"| **{spec.text}** | **{overall}** | | {_side_text(spec.a)} | {_side_text(spec.b)} |")
        for r in rows:
            group_txt = ", ".join(f"{k}={fmt_value(k, r[k])}" for k in spec.per) or "all runs"
            b = f"{r['b_mean']:.4f}" if spec.b.value is not None else f"{r['b_mean']:.4f} ± {r['b_std']:.4f} ({r['b_n']})"
            md.append(f"| | {r['verdict']} | {group_txt} | {r['a_mean']:.4f} ± {r['a_std']:.4f} ({r['a_n']}) | {b} |")
            csv_rows.append({**r, "group": group_txt, "overall": overall})
    md_path = out_dir / "claims.md"
    md_path.write_text("\n".join(md) + "\n\nA claim holds where mean(a) > mean(b) in every group; within seed noise where "
                       "the gap is below sqrt(std_a^2 + std_b^2).\n")
    csv_path = out_dir / "claims.csv"
    fieldnames = ["claim", "group", "verdict", "overall", "a_mean", "a_std", "a_n", "b_mean", "b_std", "b_n"]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
        w.writeheader()
        w.writerows(csv_rows)
    return [md_path, csv_path]


def default_specs(study: Study) -> tuple[tuple, tuple]:
    """Without a report section: one table of the study's metric per varying keys."""
    rows = tuple(k for k in study.varying_keys() if k != "seed") or ("model",)
    from orchestration.study_schema import TableSpec   # pydantic: checked installed by main

    return (), (TableSpec("summary", rows, (study.metric,), f"{study.name}: {study.metric}"),)


def make_report(study: Study, records: list[RunRecord], out_dir: Path) -> list[Path]:
    own = study.figures or study.tables or study.claims
    figures, tables = (study.figures, study.tables) if own else default_specs(study)
    files = [p for spec in figures if (p := draw_figure(spec, records, out_dir)) is not None]
    for spec in tables:
        files += write_table(spec, records, out_dir)
    return files + write_claims(study.claims, records, out_dir)


def report(study_name: str, tracking_uri: str, experiment: str | None = None, run_id: str | None = None,
           out: str | None = None, log_to_mlflow: bool = True) -> tuple[list[Path], list[str]]:
    if study_name.endswith((".yaml", ".yml")):   # a study given as a file is tracked under its stem
        study_name = Path(study_name).stem
    check_reachable(tracking_uri)   # the same check as sweep.py: one line, not minutes of retries
    client = client_for(tracking_uri)
    parent = find_parent(client, study_name, experiment, run_id)
    if parent.data.tags.get(TAG_ROLE) != "study" or PARENT_TAG in parent.data.tags:
        raise MemeError(f"run {parent.info.run_id} is not a study's parent run")
    study = study_of(client, parent, study_name)
    records, skipped = load_records(client, parent)
    if not records:
        raise MemeError(f"the parent run {parent.info.run_id} of study {study.name!r} has no finished child runs"
                        + (f" ({len(skipped)} not finished)" if skipped else ""))
    out_dir = Path(out) if out else Path.cwd() / "runs" / "reports" / (parent.info.run_name or parent.info.run_id)
    files = make_report(study, records, out_dir)
    if not files:
        raise MemeError(f"none of the metrics the report of {study.name!r} asks for were logged by its runs")
    if log_to_mlflow:
        for f in files:
            client.log_artifact(parent.info.run_id, str(f), "report")
    return files, skipped


def report_runs(study_name: str, runs: str, out: str | None = None) -> tuple[list[Path], list[str]]:
    """The report of ``meme train`` run directories under ``runs`` (trials run without Ray and MLflow, e.g. by
    ``benchmarks/claims_device.py``), against the study file's figures, tables and claims."""
    root = Path(runs)
    if not root.is_dir():
        raise MemeError(f"--runs {runs}: no such folder")
    study = load_study(study_name)
    records, skipped = load_run_dirs(root)
    if not records:
        raise MemeError(f"no finished run (config.json and metrics.jsonl up to its last epoch) under {root}"
                        + (f" ({len(skipped)} not finished)" if skipped else ""))
    files = make_report(study, records, Path(out) if out else root / "report")
    if not files:
        raise MemeError(f"none of the metrics the report of {study.name!r} asks for were logged by the runs under {root}")
    return files, skipped


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=(
        "Regenerate a study's figures and tables (mean ± std over seeds) from its runs in MLflow; they are "
        "written to --out and logged to the study's parent run under report/."))
    p.add_argument("--study", required=True, help=f"the study ({', '.join(study_names())}, or a study file)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (default: the study name)")
    p.add_argument("--run-id", help="the study's parent run (default: its latest)")
    p.add_argument("--out", help="output folder (default: runs/reports/<parent run name>/)")
    p.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    p.add_argument("--runs", metavar="DIR", help="read `meme train` run directories under DIR (config.json, "
                                                 "metrics.jsonl) instead of MLflow; output default: DIR/report/")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_orchestration_installed()
        if args.runs:
            mlflow_opts = [o for o, v in (("--tracking-uri", args.tracking_uri), ("--experiment", args.experiment),
                                          ("--run-id", args.run_id), ("--no-log", args.no_log)) if v]
            if mlflow_opts:
                raise MemeError(f"--runs reads run directories, not MLflow; drop {', '.join(mlflow_opts)}")
            files, skipped = report_runs(args.study, args.runs, args.out)
        else:
            files, skipped = report(args.study, args.tracking_uri or default_tracking_uri(), args.experiment,
                                    args.run_id, args.out, not args.no_log)
    except MemeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    for s in skipped:
        print(f"skipped (not finished): {s}")
    for f in files:
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":  # run as a file: use the package's module
    from orchestration.report import main as _main

    sys.exit(_main())
