#!/usr/bin/env python3
"""Renders deploy/grafana/dashboards/hookline.json from a real Prometheus, to a PNG.

Grafana itself cannot be installed here (it is AGPL-licensed), so this draws the
dashboard the way Grafana lays it out: every panel at its `gridPos` (24 columns), its
title, and each of its targets' PromQL `expr` evaluated by Prometheus' HTTP API over the
time range (`query_range` for time series, the last value for stat panels), with the
panel's `legendFormat`. `$__rate_interval` becomes the --rate-interval given. What it
shows is what the queries return; styling (colours, thresholds, units beyond a suffix)
is simpler than Grafana's.

    scripts/render-dashboard.py --prometheus http://127.0.0.1:9095 --minutes 10 \\
        --out docs/img/dashboard.png

Needs matplotlib and requests (pip).
"""

import argparse
import json
import re
import sys
import time
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import requests  # noqa: E402

ROW_HEIGHT_IN = 0.42  # one grid unit of height, in inches
WIDTH_IN = 24.0


def legend(fmt, labels):
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def query_range(prom, expr, start, end, step):
    answer = requests.get(
        f"{prom}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step},
        timeout=30,
    ).json()
    if answer.get("status") != "success":
        raise RuntimeError(f"{expr}: {answer.get('error')}")
    return answer["data"]["result"]


UNITS = {"s": " s", "percentunit": "", "bytes": " B", "reqps": "/s", "ops": "/s", "short": ""}


def fmt_value(value, unit):
    if unit == "percentunit":
        return f"{value * 100:.1f} %"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"
    if unit == "bytes":
        for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if value >= scale:
                return f"{value / scale:.1f} {suffix}"
    if abs(value) >= 1000:
        return f"{value:,.0f}{UNITS.get(unit, '')}"
    return f"{value:.3g}{UNITS.get(unit, '')}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--dashboard", default="deploy/grafana/dashboards/hookline.json")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--end", type=float, default=None, help="unix time (default now)")
    parser.add_argument("--rate-interval", default="1m")
    parser.add_argument("--out", default="docs/img/dashboard.png")
    args = parser.parse_args()

    dashboard = json.load(open(args.dashboard, encoding="utf-8"))
    panels = dashboard["panels"]
    end = args.end or time.time()
    start = end - args.minutes * 60
    step = max(5, int(args.minutes * 60 / 240))
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(WIDTH_IN, bottom * ROW_HEIGHT_IN + 0.8))
    span = f"{datetime.fromtimestamp(start, timezone.utc):%Y-%m-%d %H:%M} – {datetime.fromtimestamp(end, timezone.utc):%H:%M} UTC"
    fig.suptitle(f"{dashboard['title']} — {span} (rendered from Prometheus by scripts/render-dashboard.py)", fontsize=14, x=0.01, y=0.998, ha="left", va="top")
    height = bottom * ROW_HEIGHT_IN + 0.8
    top_margin = 1.1 / height
    failures = []
    for panel in panels:
        g = panel["gridPos"]
        left, width = g["x"] / 24, g["w"] / 24
        top = 1 - top_margin - (g["y"] / bottom) * (1 - top_margin)
        h = (g["h"] / bottom) * (1 - top_margin)
        if panel["type"] == "row":
            fig.text(left + 0.003, top - h / 2, panel["title"], fontsize=13, weight="bold", va="center")
            continue
        pad_x, pad_top, pad_bottom = 0.012, 0.022 * 8 / bottom * 4, 0.03 * 8 / bottom * 4
        ax = fig.add_axes([left + pad_x, top - h + pad_bottom, width - 1.6 * pad_x, h - pad_top - pad_bottom])
        ax.set_title(panel["title"], fontsize=10, loc="left")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        series = []
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", args.rate_interval)
            try:
                for result in query_range(args.prometheus, expr, start, end, step):
                    points = [(float(t), float(v)) for t, v in result["values"] if v not in ("NaN", "+Inf", "-Inf")]
                    if points:
                        series.append((legend(target.get("legendFormat"), result["metric"]), points))
            except (RuntimeError, requests.RequestException) as err:
                failures.append(f"panel {panel['id']} {panel['title']!r}: {err}")
        if panel["type"] == "stat":
            ax.axis("off")
            if not series:
                ax.text(0.5, 0.5, "No data", ha="center", va="center", fontsize=12, color="grey")
            for i, (name, points) in enumerate(series[:6]):
                y = 1 - (i + 0.5) / max(1, min(len(series), 6))
                ax.text(0.02, y, name, fontsize=8, va="center", transform=ax.transAxes)
                ax.text(0.98, y, fmt_value(points[-1][1], unit), fontsize=13, weight="bold", ha="right", va="center", color="tab:green", transform=ax.transAxes)
            continue
        if not series:
            ax.text(0.5, 0.5, "No data", ha="center", va="center", fontsize=12, color="grey", transform=ax.transAxes)
        for name, points in series[:12]:
            ax.plot([datetime.fromtimestamp(t, timezone.utc) for t, _ in points], [v for _, v in points], label=name, linewidth=1.2)
        ax.set_xlim(datetime.fromtimestamp(start, timezone.utc), datetime.fromtimestamp(end, timezone.utc))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _, unit=unit: fmt_value(v, unit)))
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=6, loc="upper left", ncol=2, framealpha=0.6)
    fig.savefig(args.out, dpi=70)
    print(f"wrote {args.out} ({len(panels)} panels)")
    for failure in failures:
        print("query failed:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
