#!/usr/bin/env python3
"""bench/lag/plot.py CSV SVG — draws the closed-loop curves (lag over time,
limiter off and on, and the admitted fraction) as a dependency-free SVG.

CSV columns: limiter,t_s,lag,fraction,admitted,shed (written by
tests/e2e/lag_closed_loop.rs with LAG_CLOSED_LOOP_CSV=path)."""
import csv
import sys

W, H, PAD = 720, 360, 50
THRESHOLD = 200


def main(src, dst):
    rows = list(csv.DictReader(open(src)))
    series = {}
    for r in rows:
        series.setdefault(r["limiter"], []).append(
            (float(r["t_s"]), int(r["lag"]), float(r["fraction"])))
    tmax = max(t for s in series.values() for t, _, _ in s)
    lmax = max(l for s in series.values() for _, l, _ in s)
    lmax = max(lmax, THRESHOLD * 2)

    def x(t):
        return PAD + (W - 2 * PAD) * t / tmax

    def y(v, vmax):
        return H - PAD - (H - 2 * PAD) * v / vmax

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<line x1="{PAD}" y1="{H-PAD}" x2="{W-PAD}" y2="{H-PAD}" stroke="black"/>',
           f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H-PAD}" stroke="black"/>',
           f'<text x="{W/2}" y="{H-12}" text-anchor="middle">time (s)</text>',
           f'<text x="14" y="{H/2}" transform="rotate(-90 14 {H/2})" text-anchor="middle">lag (messages)</text>',
           f'<text x="{W-PAD+4}" y="{H/2}" transform="rotate(90 {W-PAD+4} {H/2})" text-anchor="middle" fill="#2a7">admitted fraction (limiter on)</text>']
    for i in range(6):
        v = lmax * i / 5
        out.append(f'<text x="{PAD-6}" y="{y(v, lmax)+4:.1f}" text-anchor="end">{v:.0f}</text>')
        t = tmax * i / 5
        out.append(f'<text x="{x(t):.1f}" y="{H-PAD+16}" text-anchor="middle">{t:.0f}</text>')
    out.append(f'<line x1="{PAD}" y1="{y(THRESHOLD, lmax):.1f}" x2="{W-PAD}" y2="{y(THRESHOLD, lmax):.1f}" stroke="#999" stroke-dasharray="4 4"/>')
    out.append(f'<text x="{W-PAD-4}" y="{y(THRESHOLD, lmax)-4:.1f}" text-anchor="end" fill="#999">threshold {THRESHOLD}</text>')
    colors = {"off": "#c33", "on": "#36c"}
    for name, pts in series.items():
        path = " ".join(f"{x(t):.1f},{y(l, lmax):.1f}" for t, l, _ in pts)
        out.append(f'<polyline fill="none" stroke="{colors.get(name, "black")}" stroke-width="2" points="{path}"/>')
    if "on" in series:
        path = " ".join(f"{x(t):.1f},{y(f, 1.0):.1f}" for t, _, f in series["on"])
        out.append(f'<polyline fill="none" stroke="#2a7" stroke-width="1.5" stroke-dasharray="6 3" points="{path}"/>')
    out.append(f'<text x="{PAD+10}" y="{PAD+4}" fill="#c33">limiter off</text>')
    out.append(f'<text x="{PAD+10}" y="{PAD+20}" fill="#36c">limiter on</text>')
    out.append("</svg>")
    open(dst, "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py CSV SVG")
    main(sys.argv[1], sys.argv[2])
