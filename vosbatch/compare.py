"""Compare two runs: per-sequence and overall J, F, J&F and speed deltas, and what regressed.

``A`` is the baseline (e.g. last night's run) and ``B`` the candidate; every delta is ``B - A``, so
a negative ΔJ&F is a loss and a positive Δs/frame a slowdown. Runs are read through
:class:`~vosbatch.io.store.RunStore`, so either may be a local folder or an ``s3://`` prefix.

Runs without ground truth (pseudo-labelling a corpus) are compared on what they have: how far B's
masks agree with A's (mean IoU per sequence), the foreground fraction, speed, and failures.

Kept free of click and printing (apart from :func:`format_comparison`, which returns text) so the
nightly benchmark job and tests use the same numbers as ``vosbatch compare``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InputError
from .io.runs import Key, RunView, finite as _finite, load_run


# run.json entries, besides the method configuration, whose change explains a difference in results.
RUN_FACTS = ("dataset", "split", "workers", "gpus", "code.package", "code.git_commit", "code.git_dirty")


def load_run_metrics(uri: str, **s3_options) -> RunView:
    """A run as a comparison needs it (see :func:`vosbatch.io.runs.load_run`)."""
    return load_run(uri, **s3_options)


def is_scored(row: Optional[dict]) -> bool:
    """A sequence that finished and has both J and F; anything else counts as failed."""
    return bool(row) and row.get("status") == "ok" and _finite(row.get("j_mean")) and _finite(row.get("f_mean"))


def seconds_per_frame(row: Optional[dict]) -> Optional[float]:
    if not row or not _finite(row.get("seconds")) or not row.get("frames"):
        return None
    return float(row["seconds"]) / float(row["frames"])


def _jf(row: Optional[dict]) -> Optional[float]:
    return (float(row["j_mean"]) + float(row["f_mean"])) / 2 if is_scored(row) else None


def _delta(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return b - a if a is not None and b is not None else None


@dataclass
class SequenceDelta:
    """One (dataset, sequence) present in either run."""

    dataset: str
    sequence: str
    status_a: Optional[str]  # None: not in run A
    status_b: Optional[str]
    j_a: Optional[float] = None
    j_b: Optional[float] = None
    f_a: Optional[float] = None
    f_b: Optional[float] = None
    jf_a: Optional[float] = None
    jf_b: Optional[float] = None
    spf_a: Optional[float] = None  # seconds per frame
    spf_b: Optional[float] = None
    error_b: Optional[str] = None
    agreement: Optional[float] = None  # mean IoU of B's masks with A's, frame by frame (runs without GT)
    fg_a: Optional[float] = None  # mean foreground fraction of the masks
    fg_b: Optional[float] = None

    @property
    def key(self) -> Key:
        return (self.dataset, self.sequence)

    @property
    def both_scored(self) -> bool:
        return self.jf_a is not None and self.jf_b is not None

    @property
    def d_j(self) -> Optional[float]:
        return _delta(self.j_a, self.j_b)

    @property
    def d_f(self) -> Optional[float]:
        return _delta(self.f_a, self.f_b)

    @property
    def d_jf(self) -> Optional[float]:
        return _delta(self.jf_a, self.jf_b)

    @property
    def d_spf(self) -> Optional[float]:
        return _delta(self.spf_a, self.spf_b)

    def as_row(self) -> Dict[str, Any]:
        return {"dataset": self.dataset, "sequence": self.sequence, "status_a": self.status_a,
                "status_b": self.status_b, "j_a": self.j_a, "j_b": self.j_b, "d_j": self.d_j, "f_a": self.f_a,
                "f_b": self.f_b, "d_f": self.d_f, "jf_a": self.jf_a, "jf_b": self.jf_b, "d_jf": self.d_jf,
                "s_per_frame_a": self.spf_a, "s_per_frame_b": self.spf_b, "d_s_per_frame": self.d_spf,
                "agreement": self.agreement, "foreground_a": self.fg_a, "foreground_b": self.fg_b}


@dataclass
class Comparison:
    """Everything ``vosbatch compare`` reports about run B against baseline run A."""

    run_a: str
    run_b: str
    sequences: List[SequenceDelta]
    config_diff: Dict[str, Tuple[Any, Any]]
    overall: Dict[str, Optional[float]] = field(default_factory=dict)

    @property
    def common(self) -> List[SequenceDelta]:
        """Sequences scored in both runs: the only ones the overall means are taken over."""
        return [s for s in self.sequences if s.both_scored]

    @property
    def only_in_a(self) -> List[Key]:
        return [s.key for s in self.sequences if s.status_b is None]

    @property
    def only_in_b(self) -> List[Key]:
        return [s.key for s in self.sequences if s.status_a is None]

    @property
    def scored(self) -> bool:
        """Whether the runs have ground truth to compare on (else masks are compared with each other)."""
        return any(s.jf_a is not None or s.jf_b is not None for s in self.sequences)

    def _ok(self, side: str, s: SequenceDelta) -> bool:
        return getattr(s, f"jf_{side}") is not None if self.scored else getattr(s, f"status_{side}") == "ok"

    @property
    def newly_failed(self) -> List[Key]:
        """Scored (or, without GT, ok) in A but failed in B: a regression whatever the means say."""
        return [s.key for s in self.sequences if self._ok("a", s) and s.status_b is not None and not self._ok("b", s)]

    @property
    def fixed(self) -> List[Key]:
        return [s.key for s in self.sequences if s.status_a is not None and not self._ok("a", s) and self._ok("b", s)]

    def disagreeing(self, min_agreement: Optional[float]) -> List[SequenceDelta]:
        """Sequences whose masks in B agree with A's less than ``min_agreement`` (mean IoU), worst first."""
        if min_agreement is None:
            return []
        return sorted((s for s in self.sequences if s.agreement is not None and s.agreement < min_agreement),
                      key=lambda s: s.agreement)

    def regressed_sequences(self, threshold: float) -> List[SequenceDelta]:
        """Common sequences whose J&F dropped by more than ``threshold``, worst first."""
        worse = [s for s in self.common if s.d_jf < -threshold]
        return sorted(worse, key=lambda s: s.d_jf)

    def regression_reasons(self, threshold: float, speed_threshold: Optional[float] = None,
                           min_agreement: Optional[float] = None) -> List[str]:
        """Why B counts as a regression of A (empty: it does not).

        With ground truth, the overall J&F (mean over common sequences) must not drop by more than
        ``threshold``; without, B's masks must agree with A's (mean IoU per sequence) at least
        ``min_agreement`` when it is given. Either way no sequence may newly fail, and, when
        ``speed_threshold`` is given, seconds per frame must not grow by more than that fraction (0.5 = 50 % slower).
        """
        reasons = []
        o = self.overall
        if o.get("d_jf") is not None and o["d_jf"] < -threshold:
            reasons.append(f"overall J&F {o['jf_a']:.3f} -> {o['jf_b']:.3f} ({o['d_jf']:+.3f}, threshold {threshold:.3f})")
        if self.newly_failed:
            reasons.append("newly failed: " + ", ".join(_name(k) for k in self.newly_failed))
        if self.scored and self.sequences and not self.common and not self.newly_failed:
            reasons.append("no sequence scored in both runs")
        low = self.disagreeing(min_agreement)
        if low:
            reasons.append(f"{len(low)} sequence(s) agree with A below {min_agreement:.2f} mean IoU: "
                           + ", ".join(f"{_name(s.key)} ({s.agreement:.3f})" for s in low[:10]))
        if speed_threshold is not None and o.get("spf_a") and o.get("spf_b") is not None:
            if o["spf_b"] > o["spf_a"] * (1 + speed_threshold):
                reasons.append(f"s/frame {o['spf_a']:.3f} -> {o['spf_b']:.3f} "
                               f"(+{o['spf_b'] / o['spf_a'] - 1:.0%}, threshold +{speed_threshold:.0%})")
        return reasons

    def to_table(self) -> pa.Table:
        rows = [s.as_row() for s in self.sequences]
        names = list(SequenceDelta("", "", None, None).as_row())
        types = {n: (pa.string() if n in ("dataset", "sequence", "status_a", "status_b") else pa.float64()) for n in names}
        return pa.table({n: pa.array([r[n] for r in rows], types[n]) for n in names})


def _name(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(info_a: dict, info_b: dict) -> Dict[str, Tuple[Any, Any]]:
    """Method settings (``config.*``) and run facts (dataset, workers, code commit...) that differ."""
    flat_a = {f"config.{k}": v for k, v in _flatten(info_a.get("config") or {}).items()}
    flat_b = {f"config.{k}": v for k, v in _flatten(info_b.get("config") or {}).items()}
    fa, fb = _flatten(info_a), _flatten(info_b)
    for fact in RUN_FACTS:
        if fact in fa or fact in fb:
            flat_a[fact], flat_b[fact] = fa.get(fact), fb.get(fact)
    return {k: (flat_a.get(k), flat_b.get(k)) for k in sorted(set(flat_a) | set(flat_b)) if flat_a.get(k) != flat_b.get(k)}


def _sequence_delta(key: Key, a: Optional[dict], b: Optional[dict]) -> SequenceDelta:
    def score(row, col):
        return float(row[col]) if is_scored(row) else None

    return SequenceDelta(
        dataset=key[0], sequence=key[1], status_a=a.get("status") if a else None, status_b=b.get("status") if b else None,
        j_a=score(a, "j_mean"), j_b=score(b, "j_mean"), f_a=score(a, "f_mean"), f_b=score(b, "f_mean"),
        jf_a=_jf(a), jf_b=_jf(b), spf_a=seconds_per_frame(a), spf_b=seconds_per_frame(b),
        error_b=str(b.get("error")).splitlines()[0] if b and b.get("error") else None,
    )


def mask_agreement(run_a: RunView, run_b: RunView, key: Key) -> Optional[float]:
    """Mean over the frames both runs have of IoU(B's mask, A's mask); two empty masks agree fully."""
    from .io.png import decode_mask

    def by_frame(run):
        table = run.store.read_masks(*key).select(["frame_name", "mask_png"])
        return dict(zip(table.column("frame_name").to_pylist(), table.column("mask_png").to_pylist()))

    a, b = by_frame(run_a), by_frame(run_b)
    ious = []
    for name in sorted(set(a) & set(b)):
        ma, mb = decode_mask(a[name]), decode_mask(b[name])
        union = np.logical_or(ma, mb).sum()
        ious.append(float(np.logical_and(ma, mb).sum() / union) if union else 1.0)
    return float(np.mean(ious)) if ious else None


def _foreground(run: RunView, key: Key) -> Optional[float]:
    table = run.store.read_masks(*key).select(["foreground_fraction"])
    return float(pc.mean(table.column("foreground_fraction")).as_py()) if table.num_rows else None


def _overall(common: List[SequenceDelta], rows_a: Dict[Key, dict], rows_b: Dict[Key, dict]) -> Dict[str, Optional[float]]:
    """Means over the sequences scored in both runs, so a sequence missing from one run cannot
    move the comparison; speed is total seconds over total frames of those sequences."""
    out: Dict[str, Optional[float]] = {"sequences": len(common)}
    for side, rows in (("a", rows_a), ("b", rows_b)):
        if not common:
            out.update({f"j_{side}": None, f"f_{side}": None, f"jf_{side}": None, f"spf_{side}": None})
            continue
        out[f"j_{side}"] = sum(getattr(s, f"j_{side}") for s in common) / len(common)
        out[f"f_{side}"] = sum(getattr(s, f"f_{side}") for s in common) / len(common)
        out[f"jf_{side}"] = (out[f"j_{side}"] + out[f"f_{side}"]) / 2
        timed = [rows[s.key] for s in common if seconds_per_frame(rows[s.key]) is not None]
        frames = sum(int(r["frames"]) for r in timed)
        out[f"spf_{side}"] = sum(float(r["seconds"]) for r in timed) / frames if frames else None
    for m in ("j", "f", "jf", "spf"):
        out[f"d_{m}"] = _delta(out[f"{m}_a"], out[f"{m}_b"])
    return out


def compare_runs(run_a: RunView, run_b: RunView) -> Comparison:
    """Join two runs on (dataset, sequence) and compute every delta (B - A); without ground truth, the
    masks' agreement and foreground fractions of the sequences both runs finished."""
    keys = sorted(set(run_a.rows) | set(run_b.rows))
    seqs = [_sequence_delta(k, run_a.rows.get(k), run_b.rows.get(k)) for k in keys]
    common = [s for s in seqs if s.both_scored]
    cmp = Comparison(run_a.uri, run_b.uri, seqs, config_differences(run_a.info, run_b.info),
                     _overall(common, run_a.rows, run_b.rows))
    # the estimated J (quality) over the sequences both runs finished: a corpus's only quality signal
    both_ok = [k for k in keys if (run_a.rows.get(k) or {}).get("status") == "ok" and (run_b.rows.get(k) or {}).get("status") == "ok"]
    for side, run in (("a", run_a), ("b", run_b)):
        cmp.overall[f"quality_{side}"] = run.mean_quality(both_ok)
    cmp.overall["d_quality"] = _delta(cmp.overall["quality_a"], cmp.overall["quality_b"])
    if not cmp.scored:
        both = [s for s in seqs if s.status_a == "ok" and s.status_b == "ok"]
        for s in both:
            s.agreement = mask_agreement(run_a, run_b, s.key)
            s.fg_a, s.fg_b = _foreground(run_a, s.key), _foreground(run_b, s.key)
        agreements = [s.agreement for s in both if s.agreement is not None]
        cmp.overall["agreement"] = float(np.mean(agreements)) if agreements else None
        cmp.overall["sequences"] = len(both)
    return cmp


def compare_uris(uri_a: str, uri_b: str, **s3_options) -> Comparison:
    """:func:`compare_runs` of two run addresses (see :func:`load_run_metrics` for the S3 options)."""
    return compare_runs(load_run_metrics(uri_a, **s3_options), load_run_metrics(uri_b, **s3_options))


def _fmt(v: Optional[float], signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def format_comparison(cmp: Comparison, threshold: float = 0.01, speed_threshold: Optional[float] = None,
                      min_agreement: Optional[float] = None) -> str:
    """Readable report: the per-sequence table with an overall line, then config differences,
    sequences in one run only, newly failed ones and the verdict. Runs without ground truth show the
    masks' agreement and foreground fractions instead of J and F."""
    several = len({s.dataset for s in cmp.sequences}) > 1
    if cmp.scored:
        header = ["sequence", "J&F A", "J&F B", "ΔJ&F", "ΔJ", "ΔF", "s/f A", "s/f B", "Δs/f", ""]
    else:
        header = ["sequence", "fg A", "fg B", "IoU(B,A)", "s/f A", "s/f B", "Δs/f", ""]
    lines = []
    for s in cmp.sequences:
        name = _name(s.key) if several else s.sequence
        if s.status_a is None:
            mark = "only in B"
        elif s.status_b is None:
            mark = "only in A"
        elif s.key in cmp.newly_failed:
            mark = f"FAILED in B: {s.error_b or s.status_b}"
        elif s.key in cmp.fixed:
            mark = "fixed (failed in A)"
        elif not cmp._ok("a", s):
            mark = "failed in both"
        elif cmp.scored:
            mark = "REGRESSED" if s.both_scored and s.d_jf < -threshold else ""
        else:
            mark = "DISAGREES" if min_agreement is not None and s.agreement is not None and s.agreement < min_agreement else ""
        if cmp.scored:
            lines.append([name, _fmt(s.jf_a), _fmt(s.jf_b), _fmt(s.d_jf, True), _fmt(s.d_j, True), _fmt(s.d_f, True),
                          _fmt(s.spf_a), _fmt(s.spf_b), _fmt(s.d_spf, True), mark])
        else:
            lines.append([name, _fmt(s.fg_a), _fmt(s.fg_b), _fmt(s.agreement), _fmt(s.spf_a), _fmt(s.spf_b),
                          _fmt(s.d_spf, True), mark])
    o = cmp.overall
    if cmp.scored:
        footer = [f"mean of {len(cmp.common)} common", _fmt(o.get("jf_a")), _fmt(o.get("jf_b")), _fmt(o.get("d_jf"), True),
                  _fmt(o.get("d_j"), True), _fmt(o.get("d_f"), True), _fmt(o.get("spf_a")), _fmt(o.get("spf_b")),
                  _fmt(o.get("d_spf"), True), ""]
    else:
        footer = [f"mean of {o.get('sequences', 0)} in both", "", "", _fmt(o.get("agreement")), _fmt(o.get("spf_a")),
                  _fmt(o.get("spf_b")), _fmt(o.get("d_spf"), True), ""]
    widths = [max(len(r[c]) for r in [header, footer, *lines]) for c in range(len(header))]

    def fmt(row):
        cells = [row[0].ljust(widths[0])] + [row[c].rjust(widths[c]) for c in range(1, len(row) - 1)] + [row[-1]]
        return "  ".join(cells).rstrip()

    rule = "-" * len(fmt(header))
    out = [f"A (baseline):  {cmp.run_a}", f"B (candidate): {cmp.run_b}", "", fmt(header), rule,
           *[fmt(r) for r in lines], rule, fmt(footer)]
    if o.get("quality_a") is not None or o.get("quality_b") is not None:
        out.append(f"estimated J (quality, mean over the sequences both finished): {_fmt(o.get('quality_a'))} -> "
                   f"{_fmt(o.get('quality_b'))} ({_fmt(o.get('d_quality'), True)})")
    if cmp.config_diff:
        out += ["", "configuration differences (A -> B):"]
        out += [f"  {k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}" for k, (a, b) in cmp.config_diff.items()]
    else:
        out += ["", "configuration: identical"]
    for title, keys in (("only in A", cmp.only_in_a), ("only in B", cmp.only_in_b), ("fixed in B", cmp.fixed)):
        if keys:
            out.append(f"{title}: " + ", ".join(_name(k) for k in keys))
    regressed = cmp.regressed_sequences(threshold)
    if regressed:
        out.append(f"regressed sequences (ΔJ&F < -{threshold:.3f}): "
                   + ", ".join(f"{_name(s.key)} ({s.d_jf:+.3f})" for s in regressed))
    reasons = cmp.regression_reasons(threshold, speed_threshold, min_agreement)
    out.append("")
    if reasons:
        out += [f"REGRESSION: {r}" for r in reasons]
    elif cmp.scored:
        out.append(f"no regression (threshold {threshold:.3f})")
    else:
        out.append("no regression (no ground truth: no sequence newly failed"
                   + (f", every agreement >= {min_agreement:.2f})" if min_agreement is not None else
                      "; set --min-agreement to also check the masks' agreement)"))
    return "\n".join(out)


def write_comparison(cmp: Comparison, out: Path) -> None:
    """Per-sequence deltas as .csv or .parquet (written to a temporary name, then renamed)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out)
    if out.suffix not in (".csv", ".parquet"):
        raise InputError(f"{out}: --out must end in .csv or .parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    table = cmp.to_table()
    if out.suffix == ".parquet":
        pq.write_table(table, tmp)
    else:
        pacsv.write_csv(table, tmp)
    tmp.replace(out)
