"""The run report: ``report.json`` and a self-contained ``report.html``.

The HTML page has no external assets: inline CSS and SVG only. It shows the
verdict per invariant, a timeline of faults and operations per region,
availability per region over time, failover figures, op counts, and links to
Porcupine's visualization and the raw history when they exist.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

COLORS = {"ok": "#2e7d32", "fail": "#c62828", "info": "#ef6c00"}
REGION_COLORS = ["#1565c0", "#6a1b9a", "#00838f", "#ad1457", "#558b2f"]


def overall(verdicts: list[dict[str, Any]]) -> bool | None:
    """False if any invariant failed; None if none failed but one is unknown; else True."""
    values = [v["valid"] for v in verdicts]
    if any(v is False for v in values):
        return False
    if not values or any(v is None for v in values):
        return None
    return True


def write(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(report))
    return json_path, html_path


def _e(x: object) -> str:
    return html.escape(str(x))


def _secs(ns: int | None) -> str:
    return "" if ns is None else f"{ns / 1e9:.2f}"


def _label(valid: bool | None) -> str:
    cls = {True: "ok", False: "bad", None: "unk"}[valid]
    text = {True: "valid", False: "INVALID", None: "unknown"}[valid]
    return f'<span class="v {cls}">{text}</span>'


def _timeline(report: dict[str, Any]) -> str:
    """Faults as bands, then per region a row of stacked op outcome bars per bucket."""
    avail = report["availability"]
    bucket_s = avail["bucket_s"]
    regions = list(avail["regions"])
    n = max((len(rows) for rows in avail["regions"].values()), default=0)
    duration = max(n * bucket_s, report.get("elapsed_s", 0.0), 1.0)
    left, width, row_h = 110, 900, 46
    faults = report["faults"]
    fault_h = 18 * max(1, len(faults))
    height = 30 + fault_h + row_h * len(regions) + 20
    sx = width / duration

    def x(t_s: float) -> float:
        return float(left + t_s * sx)

    parts = [f'<svg viewBox="0 0 {left + width + 20} {height}" class="chart">']
    for t in range(0, int(duration) + 1, max(1, int(duration // 10) or 1)):
        parts.append(
            f'<line x1="{x(t):.1f}" y1="20" x2="{x(t):.1f}" y2="{height - 15}" class="grid"/>'
            f'<text x="{x(t):.1f}" y="14" class="tick">{t}s</text>'
        )
    for i, f in enumerate(faults):
        start = f["start"] / 1e9
        end = (
            (f["stopped"] or f["stop"] or f["start"]) / 1e9
            if (f["stopped"] or f["stop"])
            else duration
        )
        y = 22 + i * 18
        parts.append(
            f'<rect x="{x(start):.1f}" y="22" width="{max(2.0, (end - start) * sx):.1f}" '
            f'height="{height - 40}" class="band"><title>{_e(f["name"])}</title></rect>'
            f'<rect x="{x(start):.1f}" y="{y}" width="{max(2.0, (end - start) * sx):.1f}" '
            f'height="14" class="fault"/><text x="{x(start) + 3:.1f}" y="{y + 11}" '
            f'class="flabel">{_e(f["name"])}{" (error: " + _e(f["error"]) + ")" if f.get("error") else ""}</text>'
        )
    top = 26 + fault_h
    for r_i, region in enumerate(regions):
        y0 = top + r_i * row_h
        parts.append(f'<text x="4" y="{y0 + row_h / 2:.0f}" class="rlabel">{_e(region)}</text>')
        rows = avail["regions"][region]
        peak = max(
            (sum(b.values()) for rows_ in avail["regions"].values() for b in rows_), default=1
        )
        for b_i, b in enumerate(rows):
            y = y0 + row_h - 6
            for kind in ("ok", "info", "fail"):
                h = (row_h - 10) * b[kind] / max(peak, 1)
                if h <= 0:
                    continue
                y -= h
                parts.append(
                    f'<rect x="{x(b_i * bucket_s):.1f}" y="{y:.1f}" width="{max(1.0, bucket_s * sx - 1):.1f}" '
                    f'height="{h:.1f}" fill="{COLORS[kind]}"><title>{_e(region)} t={b_i * bucket_s:g}s '
                    f"{kind}={b[kind]}</title></rect>"
                )
    parts.append("</svg>")
    return "".join(parts)


def _availability_chart(report: dict[str, Any]) -> str:
    avail = report["availability"]
    bucket_s = avail["bucket_s"]
    n = max((len(rows) for rows in avail["regions"].values()), default=0)
    if n == 0:
        return "<p>No operations.</p>"
    left, width, height = 50, 900, 160
    sx = width / max(n * bucket_s, 1)
    parts = [f'<svg viewBox="0 0 {left + width + 160} {height + 30}" class="chart">']
    for pct in (0, 50, 100):
        y = 10 + height * (1 - pct / 100)
        parts.append(
            f'<line x1="{left}" y1="{y}" x2="{left + width}" y2="{y}" class="grid"/>'
            f'<text x="4" y="{y + 4}" class="tick">{pct}%</text>'
        )
    for i, (region, rows) in enumerate(avail["regions"].items()):
        color = REGION_COLORS[i % len(REGION_COLORS)]
        pts = []
        for b_i, b in enumerate(rows):
            total = sum(b.values())
            if total:
                frac = b["ok"] / total
                pts.append(
                    f"{left + (b_i + 0.5) * bucket_s * sx:.1f},{10 + height * (1 - frac):.1f}"
                )
        parts.append(
            f'<polyline points="{" ".join(pts)}" fill="none" stroke="{color}" stroke-width="1.5"/>'
        )
        parts.append(
            f'<text x="{left + width + 10}" y="{20 + 16 * i}" fill="{color}" class="tick">{_e(region)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    verdict_rows = "".join(
        f"<tr><td>{_e(v['invariant'])}</td><td>{_label(v['valid'])}</td><td>{_e(v['summary'])}"
        + (
            f"<details><summary>{v['error_count']} violation(s)</summary><pre>"
            f"{_e(json.dumps(v['errors'], indent=1))}</pre></details>"
            if v["errors"]
            else ""
        )
        + (
            f' &middot; <a href="{_e(v["details"]["visualization"])}">Porcupine visualization</a>'
            if v.get("details", {}).get("visualization")
            else ""
        )
        + "</td></tr>"
        for v in report["verdicts"]
    )
    failover_rows = "".join(
        f"<tr><td>{_e(f['fault'])}</td><td>{_e(region)}</td><td>{r['longest_gap_s']}</td>"
        f"<td>{'' if r['first_ok_after_heal_s'] is None else r['first_ok_after_heal_s']}</td></tr>"
        for f in report["failover"]
        for region, r in f["regions"].items()
    )
    fault_rows = "".join(
        f"<tr><td>{_e(f['name'])}</td><td>{f['start'] / 1e9:.2f}</td>"
        f"<td>{_secs(f['started'])}</td><td>{_secs(f['stop'])}</td><td>{_secs(f['stopped'])}</td>"
        f"<td>{_e(f.get('error') or '')}</td></tr>"
        for f in report["faults"]
    )
    count_rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{c['ok']}</td><td>{c['fail']}</td><td>{c['info']}</td></tr>"
        for name, c in sorted(report["op_counts"].items())
    )
    opts = _e(json.dumps(report["options"]))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Meridian chaos: {_e(report["scenario"])}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
.v {{ font-weight: bold; padding: 1px 6px; border-radius: 3px; color: #fff; }}
.v.ok {{ background: #2e7d32; }} .v.bad {{ background: #c62828; }} .v.unk {{ background: #757575; }}
.chart {{ width: 100%; background: #fafafa; border: 1px solid #ddd; }}
.grid {{ stroke: #e0e0e0; }} .tick {{ font-size: 10px; fill: #555; }}
.band {{ fill: #ffcc80; opacity: .25; }} .fault {{ fill: #ffb74d; }}
.flabel {{ font-size: 10px; }} .rlabel {{ font-size: 12px; font-weight: bold; }}
pre {{ max-height: 300px; overflow: auto; background: #f5f5f5; padding: 6px; }}
</style></head><body>
<h1>{_e(report["scenario"])} {_label(report["valid"])}</h1>
<p>{_e(report["description"])}</p>
<p>Started {_e(report["started_at"])}, {report["elapsed_s"]:.1f}s of load. Options: <code>{opts}</code>.
Files: <a href="history.json">history.json</a>, <a href="report.json">report.json</a>.</p>
<h2>Invariants</h2>
<table><tr><th>invariant</th><th>verdict</th><th>summary</th></tr>{verdict_rows}</table>
<h2>Timeline</h2>
<p>Fault bands on top; per region, ops by completion second: <span style="color:{COLORS["ok"]}">ok</span>,
<span style="color:{COLORS["info"]}">info (indeterminate)</span>, <span style="color:{COLORS["fail"]}">fail</span>.</p>
{_timeline(report)}
<h2>Availability per region</h2>
<p>Share of ops completed ok, per {report["availability"]["bucket_s"]:g}s.</p>
{_availability_chart(report)}
<h2>Faults</h2>
<table><tr><th>fault</th><th>asked (s)</th><th>started (s)</th><th>heal asked (s)</th><th>healed (s)</th><th>error</th></tr>{fault_rows}</table>
<h2>Failover</h2>
<p>Longest stretch without an ok op overlapping the fault, and the time from heal to the first ok op invoked after it (seconds; reported, not asserted).</p>
<table><tr><th>fault</th><th>region</th><th>longest gap (s)</th><th>first ok after heal (s)</th></tr>{failover_rows}</table>
<h2>Operations</h2>
<table><tr><th>f</th><th>ok</th><th>fail</th><th>info</th></tr>{count_rows}</table>
</body></html>
"""
