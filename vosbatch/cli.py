"""Command line: ``vosbatch submit | segment | export | report | compare | compact | eval``. Thin: parses,
then calls the library. An error of the input, the output, S3 or the usage is one line naming what failed
(never a traceback) and a non-zero exit status."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import click

from .config import REFINEMENTS, RunConfig, parse_method_params
from .presets import DEFAULT_PRESET, PRESETS

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Idle OpenMP threads must sleep, not spin: with several torch processes (Ray actors) on few cores,
# spinning threads starve the busy ones (measured here: 10-20x slower). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _parse_params(items) -> dict:
    """``-p lam=1 -p optimise=false`` -> {"lam": 1, "optimise": False} (JSON values, else strings)."""
    try:
        return parse_method_params(items)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--param") from exc


def _split_csv(value: Optional[str]) -> Optional[List[str]]:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


def default_data_root(dataset: str) -> Path:
    cache = Path(os.environ.get("VOSBATCH_CACHE", Path.home() / ".cache" / "vosbatch"))
    return cache / "datasets" / dataset


class _Commands(click.Group):
    """Every command's I/O and storage errors as one ``Error: ...`` line, exit status 1."""

    def invoke(self, ctx):
        import pyarrow as pa

        from .errors import VosbatchError

        try:
            return super().invoke(ctx)
        except VosbatchError as e:
            raise click.ClickException(str(e)) from e
        except (OSError, pa.ArrowException) as e:
            lines = str(e).strip().splitlines() or [""]
            raise click.ClickException(f"{type(e).__name__}: {lines[0]}") from e


def _configure_s3(ctx, param, value):
    from .io.fs import configure_s3

    configure_s3(value)
    return value


# One S3 configuration for every s3:// URI a command touches (inputs, manifests, outputs, runs, priors).
_s3_option = click.option(
    "--s3-endpoint-url", callback=_configure_s3, expose_value=True, is_eager=True,
    help="S3-compatible server (http://host:port) for every s3:// URI this command reads or writes "
         "[default: AWS, or $AWS_ENDPOINT_URL].")


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vosbatch")
def main() -> None:
    """Unsupervised video object segmentation as a distributed batch job."""


# --refine, shared by `submit` and `segment`.
def _default(name: str) -> str:
    """How --help shows a setting whose default comes from the preset."""
    return f"the preset's; {DEFAULT_PRESET}: {getattr(RunConfig(), name)}"


_preset_option = click.option(
    "--preset", type=click.Choice(list(PRESETS)), default=None,
    help="A whole configuration; options given explicitly override it. "
         + "; ".join(f"{name}: {p.summary}" for name, p in PRESETS.items()) + f". [default: {DEFAULT_PRESET}]")

# The options below set RunConfig fields. They default to None, i.e. to the preset's value (on --resume: the
# run's stored value); only those given explicitly override it.
_method_option = click.option("--method", type=click.Choice(["globalopt", "ike"]), show_default=_default("method"),
                              help="Segmentation method.")
_flow_option = click.option("--flow", type=click.Choice(["auto", "dis-fine", "dis", "dis-fast", "raft-small", "raft"]),
                            show_default=_default("flow"),
                            help="Optical flow: auto (raft-small on a GPU, dis-fine on a CPU), OpenCV DIS (dis-fine: "
                                 "down to the input's own grid; dis, dis-fast: coarser and faster) or RAFT (raft-small, "
                                 "raft: learned; the checkpoint from --flow-weights, the cache, or downloaded).")
_flow_weights_option = click.option("--flow-weights", type=click.Path(dir_okay=False),
                                    help="Checkpoint of a RAFT flow backend (default: the cache, else downloaded).")
_flow_height_option = click.option(
    "--flow-height", type=click.IntRange(min=0), show_default=_default("flow_height"),
    help="Estimate flow at this height in pixels (never above the input's) and resize it to the working grid; 0: at --work-height.")
_work_height_option = click.option("--work-height", type=click.IntRange(min=16), show_default=_default("work_height"),
                                   help="Processing height in pixels (aspect kept); masks return at the input's size.")
_refine_option = click.option(
    "--refine", type=click.Choice(list(REFINEMENTS)), show_default=_default("refine"),
    help="Before the threshold: crf (the edge-aware fast global smoother, then a dense CRF per frame), "
         "fgs (the smoother alone, about a quarter of crf's cost) or none.")
_params_option = click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
                              help="Method setting, repeatable; dotted keys reach a group, e.g. -p net.steps=200 "
                                   "(docs/methods.md lists them).")

# Options of `submit` that set RunConfig fields (option name -> field).
_CONFIG_OPTIONS = {
    "method": "method", "flow": "flow", "flow_weights": "flow_weights", "flow_iters": "flow_iters", "flow_height": "flow_height",
    "features": "features", "feature_weights": "feature_weights", "appearance_weight": "appearance_weight",
    "refine": "refine", "work_height": "work_height", "params": "method_params", "window_frames": "window_frames",
    "window_overlap": "window_overlap", "refine_from": "refine_from", "stage_refine": "stage_refine", "device": "device",
}


def _run_config(preset: Optional[str], dataset: Optional[str], values: dict) -> RunConfig:
    """The preset's configuration with the options that were given (not None) on top."""
    from .presets import preset_config

    overrides = {field: values[opt] for opt, field in _CONFIG_OPTIONS.items() if opt in values and values[opt] is not None}
    if not overrides.get("method_params"):
        overrides.pop("method_params", None)
    try:
        cfg = preset_config(preset, dataset, overrides)
        from .methods import get_method

        get_method(cfg.method).config(cfg.method_params)  # validate the method's settings before starting anything
    except (TypeError, ValueError) as e:
        raise click.UsageError(f"--preset / --method / --param: {e}")
    return cfg


def _dataset_choices() -> List[str]:
    from .data import DATASETS

    return list(DATASETS)


@main.command()
@_preset_option
@click.option("--dataset", default="davis2016", show_default=True, type=click.Choice(_dataset_choices()),
              help="Dataset in its official layout.")
@click.option("--data-root", type=click.Path(path_type=Path), envvar="VOSBATCH_DATA_ROOT",
              help="Dataset root (else $VOSBATCH_DATA_ROOT, else the cache, downloading the data when absent).")
@click.option("--split", default="val", show_default=True, type=click.Choice(["train", "val", "test", "all"]))
@click.option("--sequences", help="Comma-separated sequence names (overrides --split).")
@click.option("--input", "inputs", multiple=True,
              help="Instead of a dataset: a video file, a folder of frames or videos, a manifest (.csv/.parquet "
                   "with a path column) or an s3:// prefix (repeatable).")
@_method_option
@_flow_option
@_flow_weights_option
@click.option("--flow-iters", type=click.IntRange(min=1), show_default=_default("flow_iters"),
              help="Refinement iterations of RAFT.")
@_flow_height_option
@click.option("--flow-cache", type=click.Path(file_okay=False), help="Cache flows per sequence in this folder (opt-in).")
@click.option("--features", show_default=_default("features"),
              help="Appearance features of globalopt: colour (no weights needed), dino-vits16, dino-vits8, dino-vitb16, "
                   "dino-vitb8, dinov2-vits14 (with --weights; see --preset paper-globalopt).")
@click.option("--weights", "feature_weights", type=click.Path(dir_okay=False),
              help="Local checkpoint of a ViT feature backend (official DINO / DINOv2 .pth layouts).")
@click.option("--appearance-weight", type=click.FloatRange(min=0), show_default=_default("appearance_weight"),
              help="Weight of the per-video colour model when binarising (0: off).")
@_refine_option
@click.option("--stage-refine", type=click.Choice(list(REFINEMENTS)), show_default=_default("stage_refine"),
              help="Refinement that scores the method's intermediate stages when there is ground truth. "
                   "The output masks do not change.")
@_work_height_option
@_params_option
@click.option("--refine-from", help="Masks of another run (path or s3://) or a DAVIS-layout PNG folder for the method to refine.")
@click.option("--window-frames", type=click.IntRange(min=0), show_default=_default("window_frames"),
              help="Videos longer than this (plus the overlap) run in overlapping windows of this many frames; 0: never.")
@click.option("--window-overlap", type=click.IntRange(min=0), show_default=_default("window_overlap"),
              help="Frames shared by consecutive windows.")
@click.option("--workers", default=1, show_default=True, help="CPU actors (ignored when --gpus is set).")
@click.option("--cpus-per-worker", type=int, help="Threads (CPUs) per actor (default: the cluster's CPUs shared out).")
@click.option("--gpus", default=0, show_default=True, help="GPU actors, one GPU each.")
@click.option("--cpus-per-gpu", type=click.IntRange(min=1),
              help="CPUs of each GPU actor, for decoding, DIS flow and the CRF [default: its node's CPUs / GPUs].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), show_default=_default("device"),
              help="Where the models and the methods' maths run: auto is the actor's GPU when it has one.")
@click.option("--address", help="Existing Ray cluster (auto or ray://HOST:PORT); default: start a local one.")
@click.option("--runtime-env", help="Ray runtime_env as JSON for an existing cluster (default: ship this package).")
@click.option("--retries", default=2, show_default=True, help="Retries of a sequence whose worker died.")
@click.option("--output", default="runs", show_default=True, help="Output folder (local path or s3://bucket/prefix).")
@_s3_option
@click.option("--run-id", help="Name of the run folder (default: timestamp + config hash).")
@click.option("--resume", "resume_id", metavar="RUN_ID",
              help="Continue run RUN_ID under --output with the options it was started with (those given again "
                   "override them): sequences done with the same configuration are skipped.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="A progress bar on a terminal; otherwise, or with --no-progress, a one-line status now and then.")
@click.option("--compact/--no-compact", default=True, show_default=True,
              help="At the end, fold the run's per-sequence files into a few large Parquet files (vosbatch compact).")
@click.option("--fail-on-error", is_flag=True, help="Exit with status 1 when any sequence failed.")
@click.pass_context
def submit(ctx, preset, dataset, data_root, split, sequences, inputs, method, flow, flow_weights, flow_iters, flow_height,
           flow_cache, features, feature_weights, appearance_weight, refine, stage_refine, work_height, params,
           refine_from, window_frames, window_overlap, workers, cpus_per_worker, gpus, cpus_per_gpu, device, address,
           runtime_env, retries, output,
           s3_endpoint_url, run_id, resume_id, progress, compact, fail_on_error) -> None:
    """Segment a dataset's sequences (or --input videos) on Ray actors; masks + metrics under OUTPUT/RUN_ID/."""
    from click.core import ParameterSource

    from .data.download import ensure_dataset
    from .errors import VosbatchError
    from .metrics import format_table, summarise
    from .runinfo import code_version, host_facts
    from .runner.job import JobSpec, Terminated, run_job

    if resume_id and run_id and resume_id != run_id:
        raise click.UsageError("--resume RUN_ID names the run; do not also pass a different --run-id")
    explicit = {name for name in ctx.params if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    values = dict(ctx.params, params=_parse_params(params))
    cfg = _run_config(preset, None if inputs else dataset, values)
    explicit_cfg = {_CONFIG_OPTIONS[o] for o in explicit if o in _CONFIG_OPTIONS} | ({"preset"} if preset else set())
    if cfg.features != "colour" and cfg.method == "globalopt" and cfg.preset != "paper-globalopt":
        click.echo(f"note: --features {cfg.features} keeps the {cfg.preset} preset's settings, which were chosen for "
                   "colour features; --preset paper-globalopt is the authors' recipe for ViT features", err=True)
    if "crf" in (cfg.refine, cfg.stage_refine) and not address:  # the local actors share this environment: say it once, not per sequence
        from .postprocess.crf import CRFUnavailable, require_crf

        try:
            require_crf()
        except CRFUnavailable as e:
            raise click.UsageError(str(e))
    try:
        env = json.loads(runtime_env) if runtime_env else None
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--runtime-env")
    spec = JobSpec(dataset=dataset, data_root=str(data_root) if data_root else None, split=split,
                   sequences=_split_csv(sequences), inputs=list(inputs) or None, output=output,
                   run_id=resume_id or run_id, workers=workers, gpus=gpus, cpus_per_worker=cpus_per_worker,
                   cpus_per_gpu=cpus_per_gpu,
                   address=address, retries=retries, s3_endpoint_url=s3_endpoint_url, flow_cache=flow_cache,
                   runtime_env=env, progress=progress, compact=compact)
    explicit_inputs = {o for o in explicit if o in JobSpec.INPUT_FIELDS} | ({"data_root"} if data_root else set())
    explicit_job = {o for o in explicit if o in JobSpec.RESUMED_FIELDS}
    try:
        job = run_job(spec, cfg, resume=bool(resume_id), explicit=explicit_cfg | explicit_inputs | explicit_job,
                      download=lambda name: ensure_dataset(name, default_data_root(name), progress=progress),
                      echo=lambda m: click.echo(m, err=True), code=code_version(), host=host_facts())
    except VosbatchError:
        raise
    except KeyboardInterrupt:  # run_job recorded it and printed the command that finishes the run
        sys.exit(130)
    except Terminated:
        sys.exit(143)
    except Exception as e:  # e.g. a download's error: say what failed
        raise click.ClickException(f"{spec.source()}: {type(e).__name__}: {e}")
    metrics, counts, stats = job["metrics"], job["counts"], job["stats"]
    scored = [r for r in metrics.to_pylist() if r["status"] == "ok" and r.get("j_mean") is not None] \
        if metrics.num_rows <= 10_000 else []
    if scored:
        if len(scored) <= 100:
            click.echo(format_table(scored))
        s = summarise(scored)
        extra = ""
        if all(r.get("init_j_mean") is not None for r in scored):
            init_j = sum(r["init_j_mean"] for r in scored) / len(scored)
            extra = f"  (initialisation J {init_j:.3f}, optimisation {s['j_mean'] - init_j:+.3f})"
        click.echo(f"J&F {s['jf_mean']:.3f}  J {s['j_mean']:.3f}  F {s['f_mean']:.3f}{extra}")
    import pyarrow.compute as pc

    ok = pc.equal(metrics.column("status"), "ok")
    frames = int(pc.sum(pc.if_else(ok, metrics.column("frames"), 0)).as_py() or 0) if metrics.num_rows else 0
    elapsed = job["elapsed"]
    skipped = f", {job['skipped']} skipped (done before)" if job["skipped"] else ""
    click.echo(f"{counts['ok']} ok, {counts['failed']} failed{skipped}, {stats.retries} retried; the run has "
               f"{frames} frames; {elapsed:.1f} s (actor start-up {stats.startup_s:.1f} s, driver overhead "
               f"{stats.overhead_per_sequence_s * 1000:.1f} ms/sequence)")
    click.echo(f"run: {job['store'].uri}")
    if fail_on_error and job["info"].get("sequences_failed"):
        sys.exit(1)


@main.command("eval")
@click.option("--pred", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Predictions: PRED/<sequence>/<frame>.png (DAVIS layout).")
@click.option("--gt", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Ground truth: a DAVIS root (Annotations/480p/<sequence>/) or GT/<sequence>/.")
@click.option("--sequences", help="Comma-separated sequence names (default: every folder in --pred).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write per-sequence rows (.csv or .parquet).")
def eval_cmd(pred, gt, sequences, out) -> None:
    """Score DAVIS-layout PNG predictions with the DAVIS 2016 protocol (J and F)."""
    from .evaluation import evaluate_folders, write_rows
    from .errors import VosbatchError
    from .metrics import format_table, summarise

    try:
        rows = evaluate_folders(pred, gt, _split_csv(sequences))
    except VosbatchError as e:
        raise click.ClickException(str(e))
    ok = [r for r in rows if r["status"] == "ok"]
    for r in rows:
        if r["status"] != "ok":
            click.echo(f"FAILED {r['sequence']}: {r['error']}", err=True)
    if ok:
        click.echo(format_table(ok))
        s = summarise(ok)
        click.echo(f"J&F {s['jf_mean']:.3f}  J {s['j_mean']:.3f}  F {s['f_mean']:.3f}")
    if out:
        write_rows(rows, out)
        click.echo(f"wrote {out}")
    if not ok:
        sys.exit(1)


@main.command()
@click.argument("run")
@click.option("--png", "png_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Destination: PNG/<sequence>/<frame>.png (0/255).")
@click.option("--min-quality", type=click.FloatRange(0, 1),
              help="Only sequences whose estimated J (the metrics' quality column) is at least this.")
@click.option("--min-frame-quality", type=click.FloatRange(0, 1),
              help="Only frames whose estimated J (the masks' quality column) is at least this.")
@_s3_option
def export(run, png_dir, min_quality, min_frame_quality, s3_endpoint_url) -> None:
    """Write the masks of RUN (local or s3://) as DAVIS-layout 0/255 PNGs, a sequence at a time."""
    from .evaluation import export_pngs

    n = export_pngs(run, png_dir, min_quality, min_frame_quality)
    click.echo(f"wrote {n} masks under {png_dir}")


@main.command()
@click.argument("run")
@_s3_option
def compact(run, s3_endpoint_url) -> None:
    """Fold RUN's per-sequence Parquet files into a few large ones (compacted/); safe to interrupt and
    repeat, and to run while a job still writes into RUN."""
    from .io.store import RunStore

    store = RunStore(run)
    store.read_run_info()  # a run, or one line saying why not
    result = store.compact()
    click.echo(f"{run}: generation {result.generation}, {result.sequences} sequences compacted "
               f"({result.added} folded in now; {result.deleted} small files removed, {result.kept} rewritten meanwhile and kept)")


@main.command()
@click.argument("run")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="report.html (media in report_media/ beside it) or a folder (index.html + media/).")
@click.option("--compare", "compare", metavar="RUN_B", help="A second run shown beside RUN (local path or s3://).")
@click.option("--data-root", help="Dataset root for frames and ground truth (default: run.json's data_root).")
@click.option("--sequences", help="Comma-separated sequences to include (default: all).")
@click.option("--curves", help="Comma-separated sequences whose per-frame J is plotted (default: the 4 worst).")
@click.option("--video-format", default="mp4", show_default=True, type=click.Choice(["mp4", "webm", "webp"]),
              help="Overlay media: H.264 MP4, VP9 WebM or animated WebP.")
@click.option("--fps", default=10.0, show_default=True, help="Frame rate of the overlay videos.")
@click.option("--worst", default=3, show_default=True, help="Worst frames (lowest J) highlighted per sequence.")
@click.option("--max-width", default=640, show_default=True, help="Width of the overlay videos in pixels.")
@click.option("--self-contained", is_flag=True, help="One HTML file with the media inlined (data: URIs).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_s3_option
def report(run, out, compare, data_root, sequences, curves, video_format, fps, worst, max_width, self_contained,
           progress, s3_endpoint_url) -> None:
    """Write an HTML report of RUN (local or s3://): configuration, J&F table, plots, overlay videos."""
    from .errors import VosbatchError
    from .report import build_report

    try:
        page = build_report(run, out, compare=compare, data_root=data_root, curves=_split_csv(curves),
                            sequences=_split_csv(sequences), video_format=video_format, fps=fps, worst_k=worst,
                            max_width=max_width, self_contained=self_contained, progress=progress)
    except VosbatchError as e:
        raise click.ClickException(str(e))
    click.echo(f"wrote {page}")
    click.echo(f"open file://{page.resolve()}")


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for masks/, overlay video and summary.json.")
@_preset_option
@click.option("--max-frames", default=300, show_default=True, help="Read at most this many frames (0: all).")
@click.option("--max-height", default=480, show_default=True,
              help="Downscale taller input to this height first; masks are written at this size (0: keep).")
@_method_option
@_flow_option
@_flow_weights_option
@_flow_height_option
@_work_height_option
@_refine_option
@_params_option
@click.option("--gt", "gt_folder", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of ground-truth PNGs named like the frames (00000.png... for a video): adds J&F.")
@click.option("--fps", type=float, help="Overlay frame rate (default: the video's; 10 for a frame folder).")
@click.option("--video-format", default="mp4", show_default=True, type=click.Choice(["mp4", "webm", "webp"]))
def segment(input_path, out, preset, max_frames, max_height, method, flow, flow_weights, flow_height, work_height, refine,
            params, gt_folder, fps, video_format) -> None:
    """Segment one video file or folder of frames here (no cluster): PNG masks, overlay video, summary."""
    from .errors import VosbatchError
    from .report import format_summary, segment_input

    cfg = _run_config(preset, None, dict(method=method, flow=flow, flow_weights=flow_weights, flow_height=flow_height,
                                         work_height=work_height, refine=refine, params=_parse_params(params)))
    try:
        summary = segment_input(input_path, out, cfg, max_frames=max_frames or None, max_height=max_height or None,
                                gt_folder=gt_folder, video_format=video_format, fps=fps)
    except VosbatchError as e:
        raise click.ClickException(str(e))
    click.echo(format_summary(summary))


@main.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--threshold", default=0.01, show_default=True, type=click.FloatRange(min=0),
              help="A drop of overall J&F (B - A) larger than this is a regression.")
@click.option("--speed-threshold", type=click.FloatRange(min=0),
              help="Also a regression: seconds per frame grow by more than this fraction (0.5 = 50% slower).")
@click.option("--fail-on-regression", is_flag=True,
              help="Exit with status 1 on a regression (J&F drop beyond --threshold, or a newly failing sequence).")
@click.option("--min-agreement", type=click.FloatRange(0, 1),
              help="Runs without ground truth: also a regression when a sequence's masks in B agree with A's "
                   "(mean IoU over its frames) less than this.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write per-sequence deltas (.csv or .parquet).")
@_s3_option
def compare(run_a, run_b, threshold, speed_threshold, min_agreement, fail_on_regression, out, s3_endpoint_url) -> None:
    """Compare run B with baseline run A (local or s3://): per-sequence and overall J, F, J&F and
    seconds-per-frame deltas (B - A), or without ground truth the masks' agreement and foreground fractions;
    configuration differences, sequences failed or in one run only."""
    from .compare import compare_uris, format_comparison, write_comparison

    result = compare_uris(run_a, run_b)
    if out:
        write_comparison(result, out)
    click.echo(format_comparison(result, threshold, speed_threshold, min_agreement))
    if out:
        click.echo(f"wrote {out}")
    if fail_on_regression and result.regression_reasons(threshold, speed_threshold, min_agreement):
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
