#!/usr/bin/env python
"""Pseudo-label a corpus of unlabelled videos: masks for every frame, written as a vosbatch run.

Runs ``vosbatch submit --input ... --output ...`` (inputs: video files, frame folders, manifests
(.csv/.parquet with a path column) or s3:// prefixes; repeatable), then reports how many videos
and frames got masks and which failed. The masks are ``OUTPUT/RUN_ID/masks/`` (Hive-partitioned
Parquet, one lossless PNG per frame; ``vosbatch export`` writes them as PNG files). An interrupted
or partly failed job continues with ``--resume RUN_ID``: videos already done are skipped.

    python jobs/pseudo_label.py --input s3://bucket/videos/ --output s3://bucket/pseudo --gpus 8
    python jobs/pseudo_label.py --input manifest.parquet --output s3://bucket/pseudo --resume pseudo-20260101-120000
    ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime-env.yaml \\
        -- python jobs/pseudo_label.py --input s3://bucket/videos/ --output s3://bucket/pseudo --gpus 8

Under ``ray job submit`` (``RAY_ADDRESS`` set) submit gets ``--address auto`` and uses that cluster;
otherwise it starts a local Ray.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

log = logging.getLogger("pseudo_label")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", dest="inputs", action="append", required=True,
                    help="Video file, frame folder, manifest (.csv/.parquet) or s3:// prefix (repeatable).")
    ap.add_argument("--output", required=True, help="Output folder or s3://bucket/prefix.")
    actors = ap.add_mutually_exclusive_group()
    actors.add_argument("--gpus", type=int, help="GPU actors, one GPU each.")
    actors.add_argument("--workers", type=int, help="CPU actors.")
    run = ap.add_mutually_exclusive_group()
    run.add_argument("--resume", metavar="RUN_ID", help="Continue this run: videos already done are skipped.")
    run.add_argument("--run-id", help="Name of a new run (default: pseudo-<YYYYmmdd-HHMMSS>).")
    ap.add_argument("--method", help="Segmentation method (default: submit's).")
    ap.add_argument("--flow", help="Flow backend, e.g. raft-small on GPUs (default: submit's).")
    ap.add_argument("--flow-weights", help="Checkpoint for a learned flow backend.")
    ap.add_argument("-p", "--param", dest="params", action="append", default=[], help="Method parameter KEY=VALUE.")
    ap.add_argument("--s3-endpoint-url", help="S3-compatible server for s3:// inputs and output.")
    ap.add_argument("--fail-on-error", action="store_true", help="Exit 1 when any video failed (default: report them).")
    ap.add_argument("--dry-run", action="store_true", help="Print the submit command; run nothing.")
    ap.add_argument("extra", nargs="*", help="Further vosbatch submit arguments (after --).")
    return ap.parse_args(argv)


def run_id_of(args: argparse.Namespace, now: Optional[dt.datetime] = None) -> str:
    return args.resume or args.run_id or f"pseudo-{(now or dt.datetime.now()):%Y%m%d-%H%M%S}"


def build_submit_command(args: argparse.Namespace, run_id: str, on_cluster: bool) -> List[str]:
    """The ``vosbatch submit`` command line this job runs (``--resume`` continues ``run_id``)."""
    cmd = [sys.executable, "-m", "vosbatch.cli", "submit"]
    for item in args.inputs:
        cmd += ["--input", item]
    cmd += ["--output", args.output]
    cmd += ["--resume", run_id] if args.resume else ["--run-id", run_id]
    if args.gpus:
        cmd += ["--gpus", str(args.gpus)]
    elif args.workers:
        cmd += ["--workers", str(args.workers)]
    for option in ("method", "flow", "flow_weights", "s3_endpoint_url"):
        value = getattr(args, option)
        if value:
            cmd += ["--" + option.replace("_", "-"), value]
    for param in args.params:
        cmd += ["-p", param]
    if on_cluster:
        cmd += ["--address", "auto"]
    if args.fail_on_error:
        cmd.append("--fail-on-error")
    return cmd + ["--no-progress", *args.extra]


def run_uri_of(output: str, run_id: str) -> str:
    return f"{output.rstrip('/')}/{run_id}" if "://" in output else str(Path(output).expanduser().resolve() / run_id)


def report(run_uri: str) -> dict:
    """Videos and frames labelled, failures, speed: from the run's metrics (there is no ground truth)."""
    from vosbatch.compare import load_run_metrics

    run = load_run_metrics(run_uri)
    ok = [r for r in run.rows.values() if r.get("status") == "ok"]
    failed = [r for r in run.rows.values() if r.get("status") != "ok"]
    frames = sum(int(r.get("frames") or 0) for r in ok)
    seconds = sum(float(r.get("seconds") or 0.0) for r in ok)
    for r in failed:
        log.warning("FAILED %s/%s: %s", r.get("dataset"), r.get("sequence"), str(r.get("error") or "").splitlines()[:1])
    return {"videos_ok": len(ok), "videos_failed": len(failed), "frames": frames,
            "seconds_per_frame": seconds / frames if frames else None, "quality": quality_summary(run.store, ok)}


THRESHOLDS = (0.5, 0.6, 0.7, 0.8)


def quality_summary(store, ok_rows) -> Optional[dict]:
    """How many videos and frames pass common thresholds of the estimated J (None: the run has no estimate).
    Frames are counted from the masks' quality column alone, so a corpus's masks are never decoded."""
    videos = [r["quality"] for r in ok_rows if r.get("quality") is not None]
    if not videos:
        return None
    table = store.read_masks(columns=["quality"])
    frames = [q for q in table.column("quality").to_pylist() if q is not None] if table.num_rows else []
    out = {"videos": len(videos), "frames": len(frames), "mean_video_quality": sum(videos) / len(videos)}
    for t in THRESHOLDS:
        v = sum(q >= t for q in videos)
        f = sum(q >= t for q in frames)
        out[f">={t}"] = {"videos": v, "video_share": v / len(videos), "frames": f,
                         "frame_share": f / len(frames) if frames else None}
    return out


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from vosbatch.io.fs import configure_s3

    configure_s3(args.s3_endpoint_url)  # the report below reads the run where submit wrote it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s pseudo_label %(levelname)s %(message)s",
                        stream=sys.stderr)
    on_cluster = bool(os.environ.get("RAY_ADDRESS"))
    run_id = run_id_of(args)
    cmd = build_submit_command(args, run_id, on_cluster)
    run_uri = run_uri_of(args.output, run_id)
    shell = " ".join(shlex.quote(c) for c in cmd)
    if args.dry_run:
        print(f"$ {shell}")
        return 0
    log.info("%d input(s) -> %s (%s); Ray: %s", len(args.inputs), run_uri, "resuming" if args.resume else "new run",
             "cluster at $RAY_ADDRESS" if on_cluster else "local")
    log.info("$ %s", shell)
    t0 = time.time()
    rc = subprocess.call(cmd, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    log.info("submit exited %d after %.0f s", rc, time.time() - t0)
    try:
        facts = report(run_uri)
    except Exception as e:  # noqa: BLE001 - the run may not exist when submit failed early
        log.error("no readable run at %s: %s", run_uri, e)
        return rc or 1
    spf = f"{facts['seconds_per_frame']:.3f} s/frame" if facts["seconds_per_frame"] else "no frames"
    log.info("%d videos labelled (%d frames, %s), %d failed; masks: %s", facts["videos_ok"], facts["frames"],
             spf, facts["videos_failed"], run_uri)
    q = facts["quality"]
    if q is None:
        log.info("no quality estimate in this run (no calibrated model for its method)")
    else:
        log.info("estimated J: mean %.3f over %d videos", q["mean_video_quality"], q["videos"])
        for t in THRESHOLDS:
            s = q[f">={t}"]
            frame_share = f"{s['frame_share']:.0%}" if s["frame_share"] is not None else "-"
            log.info("  quality >= %.1f: %d videos (%.0f%%), %d frames (%s); export them with "
                     "vosbatch export %s --png DIR --min-quality %.1f", t, s["videos"], 100 * s["video_share"],
                     s["frames"], frame_share, run_uri, t)
    if rc != 0 or facts["videos_failed"]:
        resume = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--resume", "--run-id", run_id)]
        log.info("to retry what is missing: python jobs/pseudo_label.py %s --resume %s",
                 " ".join(shlex.quote(a) for a in resume), run_id)
    return rc


if __name__ == "__main__":
    sys.exit(main())
