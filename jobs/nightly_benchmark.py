#!/usr/bin/env python
"""Nightly benchmark: segment each configured dataset, compare with the last good night, fail on a regression.

For every dataset in the config (``jobs/nightly.yaml``) this runs ``vosbatch submit`` into
``OUTPUT/nightly-<YYYYmmdd-HHMMSS>-<dataset>`` (or ``nightly-<tag>-<dataset>``), finds the baseline
(the most recent earlier nightly run of the same suite and dataset that passed), and compares the
two as ``vosbatch compare`` does. The exit status is 1 when any dataset regressed (overall J&F
dropped by more than ``threshold``, or a sequence newly failed) or its submit failed, else 0.

Each run folder gets ``nightly.json`` (suite, command, baseline, verdict) and, when compared,
``nightly-compare.csv`` (per-sequence deltas); the baseline search reads only those and run.json,
so OUTPUT may be a local folder or an ``s3://`` prefix.

    python jobs/nightly_benchmark.py --config jobs/nightly.yaml [--tag T] [--datasets davis2016] [--dry-run] [-- submit args]
    ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime-env.yaml \\
        -- python jobs/nightly_benchmark.py --config jobs/nightly.yaml

Under ``ray job submit`` (``RAY_ADDRESS`` set) submit gets ``--address auto`` and uses that cluster;
otherwise each submit starts a local Ray. To accept a deliberate drop as the new baseline, run once
with ``--baseline none`` (nothing is compared, the night passes and later nights compare with it).
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from vosbatch.compare import compare_uris, format_comparison
from vosbatch.errors import InputError
from vosbatch.io.fs import configure_s3
from vosbatch.io.store import RunStore

log = logging.getLogger("nightly")

NIGHTLY_FILE = "nightly.json"
COMPARE_FILE = "nightly-compare.csv"
DEFAULTS = {"name": "default", "output": "runs/nightly", "threshold": 0.01, "speed_threshold": None,
            "match_config": False, "workers": 1, "gpus": 0, "fail_on_error": True, "s3_endpoint_url": None,
            "submit": {}, "datasets": []}


@dataclass
class DatasetPlan:
    """One dataset's night: where its run goes and the submit command that makes it."""

    dataset: str
    run_id: str
    run_uri: str
    command: List[str]


@dataclass
class DatasetResult:
    dataset: str
    run_uri: str
    status: str  # passed | regressed | failed
    baseline: Optional[str] = None
    jf: Optional[float] = None
    d_jf: Optional[float] = None
    quality: Optional[float] = None  # mean estimated J: what a night without ground truth is tracked by
    d_quality: Optional[float] = None
    reasons: List[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Configuration and commands
# --------------------------------------------------------------------------------------------------
def load_config(path: Path) -> dict:
    """The nightly config with defaults filled in; datasets as dicts with at least ``name``."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(raw) - set(DEFAULTS)
    if unknown:
        raise SystemExit(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(DEFAULTS)})")
    cfg = {**DEFAULTS, **raw}
    datasets = []
    for entry in cfg["datasets"] or []:
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        if not entry.get("name"):
            raise SystemExit(f"{path}: every dataset needs a name")
        datasets.append(entry)
    if not datasets:
        raise SystemExit(f"{path}: no datasets configured")
    cfg["datasets"] = datasets
    return cfg


def _data_root(value) -> Optional[str]:
    """``${VAR}`` references are expanded; one left unset means no root (submit then downloads)."""
    if not value:
        return None
    expanded = os.path.expandvars(os.path.expanduser(str(value)))
    return None if "$" in expanded else expanded


def submit_options(options: Dict) -> List[str]:
    """``{"flow": "dis", "work_height": 96, "params": {"optimisation": {"lam": 1}}, "fail_on_error": True}`` ->
    ``--flow dis --work-height 96 -p optimisation.lam=1 --fail-on-error`` (False/None leave an option out)."""
    args: List[str] = []
    for key, value in options.items():
        if key == "params":
            for k, v in _dotted(value or {}).items():
                args += ["-p", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            for v in value:
                args += [flag, str(v)]
        else:
            args += [flag, str(value)]
    return args


def _dotted(params: Dict, prefix: str = "") -> Dict:
    """Nested method parameters as the dotted keys ``-p`` takes."""
    out: Dict = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def join_uri(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if "://" in base else str(Path(base).expanduser().resolve() / name)


def plan_datasets(cfg: dict, stamp: str, extra: List[str], on_cluster: bool) -> List[DatasetPlan]:
    """The submit command of every configured dataset (nothing runs here)."""
    plans = []
    for entry in cfg["datasets"]:
        name = entry["name"]
        run_id = f"nightly-{stamp}-{name}"
        options = {"dataset": name, "data_root": _data_root(entry.get("data_root")), "split": entry.get("split"),
                   "sequences": ",".join(entry["sequences"]) if isinstance(entry.get("sequences"), list)
                   else entry.get("sequences")}
        gpus = entry.get("gpus", cfg["gpus"])
        if gpus:
            options["gpus"] = gpus
        else:
            options["workers"] = entry.get("workers", cfg["workers"])
        options.update({**(cfg["submit"] or {}), **(entry.get("submit") or {})})
        options.update(output=cfg["output"], run_id=run_id, s3_endpoint_url=cfg["s3_endpoint_url"],
                       address="auto" if on_cluster else None, fail_on_error=cfg["fail_on_error"])
        args = submit_options(options) + ["--no-progress"]
        plans.append(DatasetPlan(name, run_id, join_uri(cfg["output"], run_id),
                                 [sys.executable, "-m", "vosbatch.cli", "submit", *args, *extra]))
    return plans


# --------------------------------------------------------------------------------------------------
# Run folders: nightly.json, baseline search
# --------------------------------------------------------------------------------------------------
def write_file(run_uri: str, name: str, data: bytes) -> None:
    """Write one whole file into a run folder, local or S3 (temporary name + rename locally)."""
    RunStore(run_uri)._put_bytes(name, data)


def read_json(run_uri: str, name: str) -> Optional[dict]:
    store = RunStore(run_uri)
    try:
        with store.fs.open_input_stream(f"{store.root}/{name}") as f:
            return json.loads(f.read())
    except (OSError, FileNotFoundError, ValueError):
        return None


def list_run_names(output: str) -> List[str]:
    """Names of the folders directly under OUTPUT (local or s3://); [] when OUTPUT does not exist."""
    import pyarrow.fs as pafs

    store = RunStore(output)
    infos = store.fs.get_file_info(pafs.FileSelector(store.root, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def find_baseline(output: str, dataset: str, suite: str, exclude_run_id: str,
                  config_hash: Optional[str] = None) -> Optional[str]:
    """The most recent earlier nightly run of this suite and dataset that finished and passed.

    Only passing nights count, so a regression keeps failing until it is fixed (or accepted with
    ``--baseline none``). With ``config_hash`` the method configuration must match too.
    """
    pattern = re.compile(rf"^nightly-.+-{re.escape(dataset)}$")
    candidates = []
    for name in list_run_names(output):
        if name == exclude_run_id or not pattern.match(name):
            continue
        uri = join_uri(output, name)
        meta = read_json(uri, NIGHTLY_FILE)
        info = read_json(uri, "run.json")
        if not meta or not info or meta.get("suite") != suite or meta.get("status") != "passed":
            continue
        if info.get("dataset") != dataset or info.get("status") != "done":
            continue
        if config_hash and info.get("config_hash") != config_hash:
            continue
        candidates.append((str(info.get("started") or ""), name, uri))
    return max(candidates)[2] if candidates else None


# --------------------------------------------------------------------------------------------------
# The night
# --------------------------------------------------------------------------------------------------
def shell(cmd: List[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def compare_command(baseline: str, run_uri: str, cfg: dict) -> List[str]:
    cmd = ["vosbatch", "compare", baseline, run_uri, "--threshold", str(cfg["threshold"]), "--fail-on-regression"]
    if cfg["speed_threshold"] is not None:
        cmd += ["--speed-threshold", str(cfg["speed_threshold"])]
    if cfg["s3_endpoint_url"]:
        cmd += ["--s3-endpoint-url", cfg["s3_endpoint_url"]]
    return cmd


def resolve_baseline(baseline_arg: Optional[str], plan: DatasetPlan, cfg: dict,
                     config_hash: Optional[str]) -> Optional[str]:
    """The run to compare with: ``--baseline`` (an id under output, a path, an s3:// URI, or 'none'),
    else the last passing night (see :func:`find_baseline`)."""
    if baseline_arg == "none":
        log.info("%s: --baseline none: not compared; this run becomes the baseline if it passes", plan.dataset)
        return None
    if baseline_arg:
        return baseline_arg if ("://" in baseline_arg or "/" in baseline_arg) else join_uri(cfg["output"], baseline_arg)
    baseline = find_baseline(cfg["output"], plan.dataset, cfg["name"], plan.run_id,
                             config_hash if cfg["match_config"] else None)
    if baseline is None:
        log.info("%s: no earlier passing nightly run of suite %r under %s: nothing to compare with",
                 plan.dataset, cfg["name"], cfg["output"])
    return baseline


def run_dataset(plan: DatasetPlan, cfg: dict, baseline_arg: Optional[str]) -> DatasetResult:
    meta = {"suite": cfg["name"], "dataset": plan.dataset, "run_id": plan.run_id, "status": "running",
            "submit_command": shell(plan.command), "threshold": cfg["threshold"],
            "started": dt.datetime.now(dt.timezone.utc).isoformat()}
    write_file(plan.run_uri, NIGHTLY_FILE, json.dumps(meta, indent=2).encode())
    log.info("%s: $ %s", plan.dataset, shell(plan.command))
    t0 = time.time()
    env = {k: v for k, v in os.environ.items() if k != "VOSBATCH_DATA_ROOT"}  # one root cannot serve every dataset
    rc = subprocess.call(plan.command, env=dict(env, RAY_USAGE_STATS_ENABLED="0"))
    log.info("%s: submit exited %d after %.0f s", plan.dataset, rc, time.time() - t0)
    result = DatasetResult(plan.dataset, plan.run_uri, "failed")
    info = read_json(plan.run_uri, "run.json")
    if rc != 0:
        result.reasons.append(f"vosbatch submit exited with status {rc}")
    if not info or info.get("status") != "done":
        result.reasons.append("the run did not finish (no run.json with status done)")
    else:
        comparison_error = False
        try:
            compare_with_baseline(plan, cfg, baseline_arg, info, result, meta)
        except Exception as e:  # noqa: BLE001 - an unreadable baseline fails this dataset, not the night
            comparison_error = True
            result.reasons.append(f"comparison failed: {type(e).__name__}: {e}")
        if result.jf is None:
            result.jf, result.quality = _run_means(plan.run_uri)
        result.status = "failed" if rc != 0 or comparison_error else ("regressed" if result.reasons else "passed")
    meta.update(status=result.status, baseline=result.baseline, reasons=result.reasons, returncode=rc,
                finished=dt.datetime.now(dt.timezone.utc).isoformat())
    write_file(plan.run_uri, NIGHTLY_FILE, json.dumps(meta, indent=2, default=str).encode())
    for reason in result.reasons:
        log.error("%s: %s", plan.dataset, reason)
    return result


def compare_with_baseline(plan: DatasetPlan, cfg: dict, baseline_arg: Optional[str], info: dict,
                          result: DatasetResult, meta: dict) -> None:
    """Compare the finished run with its baseline (none on a first night or with ``--baseline none``),
    adding regressions to ``result`` and the deltas to ``meta`` and the run folder."""
    import pyarrow.csv as pacsv

    result.baseline = resolve_baseline(baseline_arg, plan, cfg, info.get("config_hash"))
    if not result.baseline:
        return
    log.info("%s: $ %s", plan.dataset, shell(compare_command(result.baseline, plan.run_uri, cfg)))
    cmp = compare_uris(result.baseline, plan.run_uri)
    print(format_comparison(cmp, cfg["threshold"], cfg["speed_threshold"]), flush=True)
    result.reasons += cmp.regression_reasons(cfg["threshold"], cfg["speed_threshold"])
    result.jf, result.d_jf = cmp.overall.get("jf_b"), cmp.overall.get("d_jf")
    result.quality, result.d_quality = cmp.overall.get("quality_b"), cmp.overall.get("d_quality")
    sink = io.BytesIO()
    pacsv.write_csv(cmp.to_table(), sink)
    write_file(plan.run_uri, COMPARE_FILE, sink.getvalue())
    meta["regressed_sequences"] = [s.sequence for s in cmp.regressed_sequences(cfg["threshold"])]
    meta["overall"] = cmp.overall


def _run_means(run_uri: str):
    """Overall J&F and mean estimated J of a run for the summary line (None when unreadable or absent)."""
    from vosbatch.compare import is_scored, load_run_metrics

    try:
        run = load_run_metrics(run_uri)
    except Exception:  # noqa: BLE001 - only for the summary line
        return None, None
    ok = [r for r in run.rows.values() if is_scored(r)]
    return sum((r["j_mean"] + r["f_mean"]) / 2 for r in ok) / len(ok) if ok else None, run.mean_quality()


def format_summary(results: List[DatasetResult]) -> str:
    lines = [f"{'dataset':<12} {'status':<10} {'J&F':>6} {'ΔJ&F':>7} {'est. J':>6} {'Δest.':>6}  run  (baseline)"]
    for r in results:
        jf = f"{r.jf:.3f}" if r.jf is not None else "-"
        djf = f"{r.d_jf:+.3f}" if r.d_jf is not None else "-"
        q = f"{r.quality:.3f}" if r.quality is not None else "-"
        dq = f"{r.d_quality:+.3f}" if r.d_quality is not None else "-"
        lines.append(f"{r.dataset:<12} {r.status.upper():<10} {jf:>6} {djf:>7} {q:>6} {dq:>6}  {r.run_uri}  "
                     f"({r.baseline or 'none'})")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parent / "nightly.yaml")
    ap.add_argument("--output", help="Override the config's output (folder or s3://bucket/prefix).")
    ap.add_argument("--tag", help="Run ids nightly-<TAG>-<dataset> instead of a timestamp.")
    ap.add_argument("--datasets", help="Comma-separated subset of the configured datasets.")
    ap.add_argument("--threshold", type=float, help="Override the config's J&F regression threshold.")
    ap.add_argument("--baseline", help="Compare with this run (id under output, or a path/s3:// URI) instead of "
                                       "the last passing night; 'none' to accept this night as the new baseline.")
    ap.add_argument("--s3-endpoint-url", help="S3-compatible server for every s3:// URI (default: the config's "
                                              "s3_endpoint_url, else AWS or $AWS_ENDPOINT_URL).")
    ap.add_argument("--summary", type=Path, help="Also write the per-dataset verdicts here as JSON.")
    ap.add_argument("--dry-run", action="store_true", help="Print the commands and baselines; run nothing.")
    ap.add_argument("extra", nargs="*", help="Further vosbatch submit arguments (after --).")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s nightly %(levelname)s %(message)s", stream=sys.stderr)

    cfg = load_config(args.config)
    if args.s3_endpoint_url:
        cfg["s3_endpoint_url"] = args.s3_endpoint_url
    configure_s3(cfg["s3_endpoint_url"])  # the baseline search, the comparison and every submit alike
    if args.output:
        cfg["output"] = args.output
    if args.threshold is not None:
        cfg["threshold"] = args.threshold
    if args.datasets:
        wanted = [d.strip() for d in args.datasets.split(",") if d.strip()]
        missing = set(wanted) - {d["name"] for d in cfg["datasets"]}
        if missing:
            ap.error(f"--datasets {sorted(missing)} not in {args.config}")
        cfg["datasets"] = [d for d in cfg["datasets"] if d["name"] in wanted]
    on_cluster = bool(os.environ.get("RAY_ADDRESS"))
    stamp = args.tag or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    plans = plan_datasets(cfg, stamp, args.extra, on_cluster)
    log.info("suite %r: %s into %s; threshold %.3f; Ray: %s", cfg["name"], ", ".join(p.dataset for p in plans),
             cfg["output"], cfg["threshold"], "cluster at $RAY_ADDRESS" if on_cluster else "local per submit")

    if args.dry_run:
        for p in plans:
            print(f"# {p.dataset} -> {p.run_uri}")
            print("$", shell(p.command))
            try:
                base = resolve_baseline(args.baseline, p, cfg, None)  # read-only: lists OUTPUT
            except (OSError, InputError) as e:
                print(f"# baseline unknown: cannot list {cfg['output']} ({e})")
                continue
            print(f"$ {shell(compare_command(base, p.run_uri, cfg))}" if base else "# no baseline: nothing to compare")
        return 0

    results = [run_dataset(p, cfg, args.baseline) for p in plans]
    print("\n" + format_summary(results), flush=True)
    if args.summary:
        args.summary.write_text(json.dumps([r.__dict__ for r in results], indent=2, default=str))
    bad = [r for r in results if r.status != "passed"]
    if bad:
        log.error("%d of %d datasets did not pass: %s", len(bad), len(results),
                  ", ".join(f"{r.dataset} ({r.status})" for r in bad))
        return 1
    log.info("all %d datasets passed", len(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
