"""The HTML report of a run (optionally beside a second run): one page, inline CSS/JS/SVG.

Layout written by :func:`build_report`::

    OUT.html + OUT_media/          when OUT ends in .html
    OUT/index.html + OUT/media/    otherwise
    (one file, media inlined as data: URIs, with ``self_contained=True``)

Sections: run configuration (differences highlighted when comparing), headline numbers, a
sortable J&F table (one row per sequence), plots (J per sequence, J over frames for chosen
sequences, seconds per frame by stage), and per sequence an overlay video with its worst frames.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import math
import shutil
import sys
import tempfile
from html import escape
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import overlay as ov
from ..io.runs import finite as _finite, load_run
from .data import Key, RunView, SequenceData, jf, load_sequence, resolve_data_root, stage_seconds, summary, worst_frames
from .svg import bar_chart, line_chart, scatter_chart, stacked_bar_chart

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1a202c;background:#f7fafc}
main{max-width:1280px;margin:0 auto;padding:16px 24px 64px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #cbd5e0;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.muted{color:#718096;font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:8px 12px;min-width:110px}
.card b{display:block;font-size:20px}.card span{font-size:11px;color:#4a5568}
table{border-collapse:collapse;background:#fff;font-size:12px}
th,td{border:1px solid #e2e8f0;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#edf2f7;text-align:left}
thead th{position:sticky;top:0}
table.sortable thead th{cursor:pointer;user-select:none}table.sortable thead th:not(.l){text-align:right}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
td.l,th.l{text-align:left}tfoot td{font-weight:bold;background:#f7fafc}
tr.failed td{background:#fff5f5}td.bad{color:#c53030}td.good{color:#2f855a}
table.config td{text-align:left;white-space:normal;max-width:520px;word-break:break-all}
table.config tr.diff td{background:#fefcbf}
.plots{display:flex;flex-wrap:wrap;gap:12px}
svg.chart{background:#fff;border:1px solid #e2e8f0;border-radius:4px;max-width:100%;height:auto}
section.seq{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:8px 14px;margin:12px 0}
section.seq video,section.seq img.anim{max-width:100%;min-width:min(100%,480px);height:auto;display:block;background:#000}
.thumbs{display:flex;flex-wrap:wrap;gap:8px;margin-top:6px}
.thumbs figure{margin:0;font-size:11px;color:#4a5568}
.thumbs img{display:block;width:200px;height:auto;border:2px solid #e53e3e;cursor:pointer}
pre.error{background:#fff5f5;color:#742a2a;padding:6px;white-space:pre-wrap;font-size:11px}
.legend i{display:inline-block;width:12px;height:12px;vertical-align:middle;margin:0 4px 0 10px}
"""

# Sort on header click (numbers by data-v, text otherwise; empty cells always last) and seek a
# sequence's video to a worst frame when its thumbnail is clicked. No external scripts.
JS = r"""
(function(){
  document.querySelectorAll('table.sortable').forEach(function(table){
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function(th, col){
      th.addEventListener('click', function(){
        var asc = !th.classList.contains('asc');
        Array.prototype.forEach.call(heads, function(h){ h.classList.remove('asc','desc'); });
        th.classList.add(asc ? 'asc' : 'desc');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function(a, b){
          var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
          if (x === null) { x = a.cells[col].textContent; y = b.cells[col].textContent; }
          if (x === '' || x === null) return (y === '' || y === null) ? 0 : 1;
          if (y === '' || y === null) return -1;
          var nx = parseFloat(x), ny = parseFloat(y), r;
          if (!isNaN(nx) && !isNaN(ny) && String(nx) === x.trim() && String(ny) === y.trim()) r = nx - ny;
          else r = x.localeCompare(y);
          return asc ? r : -r;
        });
        rows.forEach(function(r){ body.appendChild(r); });
      });
    });
  });
  document.querySelectorAll('img[data-seek]').forEach(function(img){
    img.addEventListener('click', function(){
      var v = document.getElementById(img.getAttribute('data-video'));
      if (!v || v.tagName !== 'VIDEO') return;
      v.pause();
      v.currentTime = parseFloat(img.getAttribute('data-seek'));
    });
  });
})();
"""


def _num(v: Optional[float], digits: int = 3) -> str:
    return "" if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.{digits}f}"


def _td(v: Optional[float], digits: int = 3, cls: str = "") -> str:
    """A numeric cell carrying its exact value in data-v (what the sort uses)."""
    text = _num(v, digits)
    data = repr(float(v)) if text else ""
    c = f' class="{cls}"' if cls else ""
    return f'<td data-v="{data}"{c}>{text}</td>'


def _delta_td(v: Optional[float]) -> str:
    """A signed difference, green when it improves and red when it worsens."""
    if v is None:
        return '<td data-v=""></td>'
    cls = ' class="good"' if v > 0.0005 else ' class="bad"' if v < -0.0005 else ""
    return f'<td data-v="{float(v)!r}"{cls}>{v:+.3f}</td>'


def _slug(key: Key) -> str:
    return "seq-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{key[0]}-{key[1]}")


def _flatten(d: dict, prefix: str = "") -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, name + "."))
        elif isinstance(v, list):
            out[name] = f"{len(v)} items" if len(v) > 8 else json.dumps(v)
        else:
            out[name] = "" if v is None else (json.dumps(v) if isinstance(v, (bool, dict)) else str(v))
    return out


def _s_per_frame(row: Optional[dict]) -> Optional[float]:
    if not row or row.get("status") != "ok" or not row.get("frames"):
        return None
    return float(row.get("seconds") or 0.0) / int(row["frames"])


class _Media:
    """Where media go: files in a folder referenced relatively, or data: URIs in the page."""

    def __init__(self, folder: Path, rel: str, inline: bool) -> None:
        self.folder, self.rel, self.inline = folder, rel, inline
        self.bytes_written = 0

    def video(self, stem: str, images: np.ndarray, fps: float, fmt: str) -> tuple[str, str]:
        path = ov.write_video(self.folder / stem, images, fps=fps, fmt=fmt)
        return self._ref(path, ov.VIDEO_FORMATS[fmt][4])

    def jpeg(self, stem: str, image: np.ndarray) -> str:
        path = self.folder / f"{stem}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ov.encode_jpeg(image))
        return self._ref(path, "image/jpeg")[0]

    def _ref(self, path: Path, mime: str) -> tuple[str, str]:
        self.bytes_written += path.stat().st_size
        if self.inline:
            return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode(), mime
        return f"{self.rel}/{path.name}", mime


def _config_section(runs: List[RunView]) -> str:
    """The configuration (what changes the masks) open, the other run.json facts folded."""
    head = "".join(f"<th class=l>run {escape(r.label)}: {escape(r.name)}</th>" for r in runs)

    def table(block: List[Dict[str, str]], css_id: str) -> str:
        rows = []
        for k in sorted(set().union(*[b.keys() for b in block])):
            vals = [b.get(k) for b in block]  # None: the key is absent (an older run.json)
            diff = len(runs) > 1 and len(set(vals)) > 1
            cells = "".join('<td class="muted" title="not in this run.json">—</td>' if v is None else f"<td>{escape(v)}</td>"
                            for v in vals)
            rows.append(f'<tr{" class=diff" if diff else ""}><th class="l">{escape(k)}</th>{cells}</tr>')
        return (f'<table class="config" id="{css_id}"><thead><tr><th class="l">key</th>{head}</tr></thead>'
                f'<tbody>{"".join(rows)}</tbody></table>')

    cfgs = [_flatten(r.info.get("config") or {}) for r in runs]
    facts = [_flatten({k: v for k, v in r.info.items() if k != "config"}) for r in runs]
    note = '<p class="muted">Rows that differ between the runs are highlighted.</p>' if len(runs) > 1 else ""
    return (f'<h2 id="config">Configuration</h2>{note}{table(cfgs, "config-table")}'
            f'<details><summary class="muted">run facts: code version, host, times (run.json)</summary>'
            f'{table(facts, "facts-table")}</details>')


def _cards(runs: List[RunView]) -> str:
    out = []
    for r in runs:
        s = summary(r)
        items = [("J&amp;F", _num(s["jf_mean"])), ("J", _num(s["j_mean"])), ("F", _num(s["f_mean"])),
                 ("initialisation J", _num(s["init_j_mean"])), ("estimated J", _num(s["quality"])),
                 ("sequences ok / failed", f'{s["ok"]} / {s["failed"]}'), ("frames", str(s["frames"])),
                 ("s / frame", _num(s["s_per_frame"]))]
        cards = "".join(f'<div class="card"><b>{v or "–"}</b><span>{k}</span></div>' for k, v in items)
        out.append(f'<h3>Run {escape(r.label)}: {escape(r.name)} <span class="muted">{escape(r.uri)}</span></h3>'
                   f'<div class="cards">{cards}</div>')
    return "".join(out)


def _table(runs: List[RunView], keys: List[Key]) -> str:
    """The J&F table: tbody has exactly one row per sequence (sortable), tfoot the means."""
    multi_ds = len({k[0] for k in keys}) > 1
    body = []
    if len(runs) == 1:
        run = runs[0]
        head = ["sequence"] + (["dataset"] if multi_ds else []) + ["status", "frames", "J&amp;F", "J", "J recall", "J decay",
                                                                   "F", "F recall", "F decay", "init J", "opt. gain",
                                                                   "est. J", "s/frame", "peak RSS GB"]
        for key in keys:
            r = run.rows[key]
            ok = r.get("status") == "ok"
            gain = r["j_mean"] - r["init_j_mean"] if ok and r.get("j_mean") is not None and r.get("init_j_mean") is not None else None
            err = str(r.get("error") or "").splitlines()[0] if r.get("error") else ""
            cells = [f'<td class="l"><a href="#{_slug(key)}">{escape(key[1])}</a></td>']
            cells += [f'<td class="l">{escape(key[0])}</td>'] if multi_ds else []
            cells += [f'<td class="l" title="{escape(err)}">{escape(str(r.get("status")))}</td>', _td(r.get("frames"), 0),
                      _td(jf(r)), _td(r.get("j_mean")), _td(r.get("j_recall")), _td(r.get("j_decay")), _td(r.get("f_mean")),
                      _td(r.get("f_recall")), _td(r.get("f_decay")), _td(r.get("init_j_mean")), _delta_td(gain),
                      _td(r.get("quality")), _td(_s_per_frame(r)), _td(r.get("peak_rss_gb"), 2)]
            body.append(f'<tr class="{"ok" if ok else "failed"}" data-sequence="{escape(key[1])}">{"".join(cells)}</tr>')
        s = summary(run)
        foot = (f'<tr><td class="l">mean ({s["ok"]} ok)</td>' + ("<td></td>" if multi_ds else "") + "<td></td><td></td>"
                + _td(s["jf_mean"]) + _td(s["j_mean"]) + "<td></td><td></td>" + _td(s["f_mean"]) + "<td></td><td></td>"
                + _td(s["init_j_mean"]) + "<td></td>" + _td(s["quality"]) + _td(s["s_per_frame"]) + "<td></td></tr>")
    else:
        a, b = runs
        head = ["sequence"] + (["dataset"] if multi_ds else []) + ["frames", "J&amp;F A", "J&amp;F B", "Δ J&amp;F", "J A", "J B",
                                                                   "F A", "F B", "s/frame A", "s/frame B", "status A", "status B"]
        for key in keys:
            ra, rb = a.rows.get(key, {}), b.rows.get(key, {})
            ja, jb = jf(ra) if ra else None, jf(rb) if rb else None
            delta = jb - ja if ja is not None and jb is not None else None
            cells = [f'<td class="l"><a href="#{_slug(key)}">{escape(key[1])}</a></td>']
            cells += [f'<td class="l">{escape(key[0])}</td>'] if multi_ds else []
            cells += [_td((ra or rb).get("frames"), 0), _td(ja), _td(jb), _delta_td(delta), _td(ra.get("j_mean")),
                      _td(rb.get("j_mean")), _td(ra.get("f_mean")), _td(rb.get("f_mean")), _td(_s_per_frame(ra)),
                      _td(_s_per_frame(rb))]
            for r in (ra, rb):
                err = str(r.get("error") or "").splitlines()[0] if r.get("error") else ""
                cells.append(f'<td class="l" title="{escape(err)}">{escape(str(r.get("status", "absent")))}</td>')
            failed = any(r and r.get("status") != "ok" for r in (ra, rb))
            body.append(f'<tr class="{"failed" if failed else "ok"}" data-sequence="{escape(key[1])}">{"".join(cells)}</tr>')
        sa, sb = summary(a), summary(b)
        d = sb["jf_mean"] - sa["jf_mean"] if sa["jf_mean"] is not None and sb["jf_mean"] is not None else None
        foot = ('<tr><td class="l">mean</td>' + ("<td></td>" if multi_ds else "") + "<td></td>" + _td(sa["jf_mean"])
                + _td(sb["jf_mean"]) + _delta_td(d) + _td(sa["j_mean"]) + _td(sb["j_mean"]) + _td(sa["f_mean"])
                + _td(sb["f_mean"]) + _td(sa["s_per_frame"]) + _td(sb["s_per_frame"]) + "<td></td><td></td></tr>")
    ths = "".join(f'<th class="{"l" if h in ("sequence", "dataset", "status", "status A", "status B") else ""}">{h}</th>' for h in head)
    return (f'<h2 id="scores">J&amp;F per sequence</h2><p class="muted">DAVIS 2016 protocol (first and last frames '
            f'excluded). Click a column to sort; hover a status for its error.</p>'
            f'<table class="sortable scores" id="scores-table"><thead><tr>{ths}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody><tfoot>{foot}</tfoot></table>')


def _quality_section(runs: List[RunView]) -> str:
    """The estimate against the truth, one dot per sequence, with Spearman's ρ (runs with ground truth)."""
    from scipy.stats import spearmanr

    plots = []
    for run in runs:
        pts = [(r["j_mean"], r["quality"], r["sequence"]) for r in run.ok_rows()
               if _finite(r.get("quality")) and _finite(r.get("j_mean"))]
        if len(pts) < 2:
            continue
        rho = spearmanr([p[0] for p in pts], [p[1] for p in pts])[0]
        title = f"{run.label or run.name}: Spearman ρ {rho:.2f} over {len(pts)} sequences"
        plots.append(scatter_chart(pts, title, "true J", "estimated J (quality)"))
    if not plots:
        return ""
    return ('<h3>Estimated J against true J</h3><p class="muted">The quality column predicts each sequence\'s J '
            'without ground truth; a calibrated estimate lies on the diagonal.</p>'
            f'<div class="plots" id="quality-plot">{"".join(plots)}</div>')


def _timing_chart(runs: List[RunView], keys: List[Key]) -> str:
    """Seconds per frame by stage: each run's total, then one bar per sequence (and run)."""
    cats: List[str] = []
    per_cat: List[Dict[str, float]] = []
    for run in runs:
        tot: Dict[str, float] = {}
        frames = 0
        for r in run.rows.values():
            if r.get("status") == "ok" and r.get("frames"):
                frames += int(r["frames"])
                for k, v in stage_seconds(r).items():
                    tot[k] = tot.get(k, 0.0) + v
        if frames and tot:
            cats.append(f"all ({run.label})" if len(runs) > 1 else "all sequences")
            per_cat.append({k: v / frames for k, v in tot.items()})
    for key in keys:
        for run in runs:
            r = run.rows.get(key)
            st = stage_seconds(r) if r and r.get("status") == "ok" and r.get("frames") else {}
            if st:
                cats.append(key[1] + (f" ({run.label})" if len(runs) > 1 else ""))
                per_cat.append({k: v / int(r["frames"]) for k, v in st.items()})
    if not cats:
        return '<p class="muted">No per-stage timings recorded.</p>'
    stages: List[str] = []
    for d in per_cat:
        stages += [k for k in d if k not in stages]
    return stacked_bar_chart(cats, {s: [d.get(s, 0.0) for d in per_cat] for s in stages}, "seconds per frame")


def _curve_keys(runs: List[RunView], keys: List[Key], chosen: Optional[Sequence[str]], n: int = 4) -> List[Key]:
    """The sequences whose per-frame curves are drawn: those named, else the ``n`` worst of run A."""
    if chosen:
        wanted = list(chosen)
        return [k for name in wanted for k in keys if k[1] == name]
    scored = [(jf(runs[0].rows[k]), k) for k in keys if k in runs[0].rows and jf(runs[0].rows[k]) is not None]
    if not scored:
        return keys[:n]
    return [k for _, k in sorted(scored)[:n]]


def _sequence_section(runs: List[RunView], key: Key, data: SequenceData, media: _Media, fps: float, fmt: str,
                      worst_k: int, max_width: int) -> str:
    """One sequence: status and scores per run, the overlay video (runs side by side), worst frames."""
    slug = _slug(key)
    parts = [f'<section class="seq" id="{slug}"><h3>{escape(key[1])} <span class="muted">{escape(key[0])}</span></h3>']
    facts = []
    for run in runs:
        r = run.rows.get(key)
        if not r:
            facts.append(f"<b>{escape(run.label)}</b>: not in this run")
            continue
        if r.get("status") == "ok":
            facts.append(f"<b>{escape(run.label)}</b>: J&amp;F {_num(jf(r)) or '–'} · J {_num(r.get('j_mean')) or '–'} · "
                         f"F {_num(r.get('f_mean')) or '–'} · {r.get('frames')} frames · {_num(_s_per_frame(r))} s/frame")
        else:
            facts.append(f"<b>{escape(run.label)}</b>: {escape(str(r.get('status')))}")
    parts.append(f'<p>{"<br>".join(facts)}</p>')
    for run in runs:
        r = run.rows.get(key)
        if r and r.get("error"):
            parts.append(f'<pre class="error">run {escape(run.label)}: {escape(str(r["error"]))}</pre>')
    for note in data.notes:
        parts.append(f'<p class="muted">{escape(note)}</p>')
    labels = [run.label for run in runs if run.label in data.masks]
    if not labels:
        parts.append('<p class="muted">No masks stored for this sequence.</p></section>')
        return "".join(parts)
    T, H, W = next(iter(data.masks.values())).shape
    h, w = ov.display_size(H, W, max_width if len(labels) == 1 else max_width * 3 // 4)  # A | B: ~1000 px
    frames = ov.resize_stack(data.frames, h, w) if data.frames is not None else None
    gt = ov.resize_stack(data.gt, h, w, nearest=True) if data.gt is not None else None
    panels, thumbs = [], []
    for label in labels:
        js = data.per_frame_j(label)
        worst = worst_frames(js, worst_k)
        masks = ov.resize_stack(data.masks[label], h, w, nearest=True)
        img = ov.render_overlay(frames, masks, gt)
        prefix = f"{label} " if len(runs) > 1 else ""
        texts = [f"{prefix}{name}" + (f"  J {js[t]:.2f}" if js is not None else "") for t, name in enumerate(data.frame_names)]
        img = ov.mark_frames(img, texts, worst)
        panels.append(img)
        for rank, t in enumerate(worst):
            src = media.jpeg(f"{slug}-{label}-worst{rank}", img[t])
            thumbs.append(f'<figure><img src="{src}" alt="{escape(key[1])} frame {escape(data.frame_names[t])}" '
                          f'data-video="{slug}-video" data-seek="{(t + 0.5) / fps:.3f}" title="click: show in the video">'
                          f'<figcaption>{escape(prefix)}frame {escape(data.frame_names[t])} · J {js[t]:.3f}</figcaption></figure>')
    gap = np.full((T, h, 4, 3), 255, np.uint8)
    film = panels[0] if len(panels) == 1 else np.concatenate([p for pair in zip(panels, [gap] * len(panels)) for p in pair][:-1], axis=2)
    src, mime = media.video(f"{slug}-overlay", film, fps, fmt)
    if fmt == "webp":
        parts.append(f'<img class="anim" id="{slug}-video" src="{src}" alt="{escape(key[1])} overlay">')
    else:
        poster = media.jpeg(f"{slug}-poster", film[0])  # shown before playing (and in screenshots)
        parts.append(f'<video id="{slug}-video" controls loop muted playsinline preload="metadata" poster="{poster}" '
                     f'width="{film.shape[2]}" height="{film.shape[1]}"><source src="{src}" type="{mime}"></video>')
    legend = ('<span class="legend"><i style="background:rgb(255,96,0)"></i>prediction'
              + ('<i style="background:rgb(0,230,80)"></i>ground truth' if gt is not None else "")
              + ('<i style="background:rgb(230,0,40)"></i>worst frames (red border)' if thumbs else "") + "</span>")
    parts.append(f'<p class="muted">{legend} · {T} frames at {fps:g} fps</p>')
    if thumbs:
        parts.append(f'<div class="thumbs">{"".join(thumbs)}</div>')
    parts.append("</section>")
    return "".join(parts)


def output_paths(out: Path) -> tuple[Path, Path, str]:
    """(page, media folder, media href prefix) for ``-o OUT`` (see the module docstring)."""
    out = Path(out)
    if out.suffix.lower() in (".html", ".htm"):
        return out, out.parent / f"{out.stem}_media", f"{out.stem}_media"
    return out / "index.html", out / "media", "media"


def build_report(
    run_uri: str,
    out: Path,
    compare: Optional[str] = None,
    data_root: Optional[str] = None,
    curves: Optional[Sequence[str]] = None,
    sequences: Optional[Sequence[str]] = None,
    video_format: str = "mp4",
    fps: float = 10.0,
    worst_k: int = 3,
    max_width: int = 640,
    self_contained: bool = False,
    progress: bool = False,
    s3_options: Optional[dict] = None,
) -> Path:
    """Write the report of ``run_uri`` (beside ``compare`` when given); returns the page's path."""
    runs = [load_run(run_uri, "A", **(s3_options or {}))]
    if compare:
        runs.append(load_run(compare, "B", **(s3_options or {})))
    keys = sorted(set().union(*[r.rows.keys() for r in runs]), key=lambda k: (k[0], k[1]))
    if sequences:
        keys = [k for k in keys if k[1] in set(sequences)]
    fmt = ov.pick_format(video_format)
    page, media_dir, rel = output_paths(out)
    page.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="vosbatch-report-")) if self_contained else None
    if not self_contained:
        if media_dir.exists():
            shutil.rmtree(media_dir)  # stale media of an earlier report must not linger
    media = _Media(tmp if self_contained else media_dir, rel, self_contained)
    roots = [resolve_data_root(r.info, data_root) for r in runs]
    curve_keys = set(_curve_keys(runs, keys, curves))
    curves_svg: Dict[Key, str] = {}
    sections = []
    try:
        from tqdm import tqdm

        for key in tqdm(keys, desc="report", unit="seq", disable=not progress, file=sys.stderr):
            data = load_sequence(runs, key, next((r for r in roots if r is not None), None))
            sections.append(_sequence_section(runs, key, data, media, fps, fmt, worst_k, max_width))
            if key in curve_keys and data.masks:
                use_j = data.gt is not None
                series = {}
                for run in runs:
                    vals = data.per_frame_j(run.label) if use_j else data.foreground(run.label)
                    if vals is not None:
                        series[f"run {run.label}" if len(runs) > 1 else "J" if use_j else "foreground"] = (list(range(len(vals))), list(vals))
                marks = worst_frames(data.per_frame_j(runs[0].label), worst_k) if use_j else []
                curves_svg[key] = line_chart(series, key[1], "J" if use_j else "foreground fraction",
                                             vmax=1.0 if use_j else None, marks=marks)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    scored = [k for k in keys if any(k in r.rows and jf(r.rows[k]) is not None for r in runs)]
    scored.sort(key=lambda k: (runs[0].rows.get(k, {}).get("j_mean") is None, runs[0].rows.get(k, {}).get("j_mean") or 0.0))
    j_plot = (bar_chart([k[1] for k in scored], {f"run {r.label}": [r.rows.get(k, {}).get("j_mean") for k in scored] for r in runs},
                        "J (region similarity), worst first", vmax=1.0)
              if scored else '<p class="muted">No scored sequences (no ground truth or all failed).</p>')
    curve_html = "".join(curves_svg[k] for k in keys if k in curves_svg) or '<p class="muted">No curves: none of the chosen sequences has masks.</p>'
    title = f"vosbatch report: {runs[0].name}" + (f" vs {runs[1].name}" if len(runs) > 1 else "")
    nav = " · ".join(f'<a href="#{_slug(k)}">{escape(k[1])}</a>' for k in keys)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{escape(title)}</title><style>{CSS}</style></head>
<body><main>
<h1>{escape(title)}</h1>
<p class="muted">Generated {generated} by vosbatch report · {len(keys)} sequences ·
<a href="#config">configuration</a> · <a href="#scores">scores</a> · <a href="#plots">plots</a> · <a href="#sequences">sequences</a></p>
{_cards(runs)}
{_config_section(runs)}
{_table(runs, keys)}
<h2 id="plots">Plots</h2>
<h3>J per sequence</h3><div class="plots">{j_plot}</div>
<h3>J over frames <span class="muted">(worst frames of run A ticked in red; all frames, the DAVIS means skip the first and last)</span></h3>
<div class="plots" id="curves">{curve_html}</div>
{_quality_section(runs)}
<h3>Seconds per frame by stage</h3><div class="plots">{_timing_chart(runs, keys)}</div>
<h2 id="sequences">Sequences</h2><p class="muted">{nav}</p>
{"".join(sections)}
</main><script>{JS}</script></body></html>
"""
    tmp_page = page.with_name(f".{page.name}.tmp")
    tmp_page.write_text(html, encoding="utf-8")
    tmp_page.replace(page)
    return page
