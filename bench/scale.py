#!/usr/bin/env python3
"""How cost grows with the number of steps (issue 32): piper, ninja and make
on the file-backed DAGs of gen.py (`cached-N`: each step copies
in/NAME.txt to out/NAME, in layers of 100 each depending on two of the
layer before), at every size asked for.

Per size and tool: the cached no-op, a one-leaf edit (one input of the last
layer changes: one step runs), and peak memory of the no-op; for piper also
evaluating piper.lua (`list --no-config-cache`) and loading the
configuration cache (`list`). Each tool builds the project once first, in
its own copy (each judges the outputs by its own records). Make runs up to
--make-max steps: its no-op at 100,000 takes minutes.

Writes the chart (SVG, drawn here: no plotting library needed) and prints
the numbers as JSON for report.py, or stands alone:

    python3 bench/gen.py --out W --sizes "" --cached-sizes 1000,10000,100000
    python3 bench/scale.py --work W --piper target/release/piper \\
        --sizes 1000,10000,100000 --svg docs/scale.svg
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import hyperfine, peak_rss_mb  # noqa: E402


def quiet(argv, cwd):
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def runs_for(n):
    return 30 if n <= 1000 else 10 if n <= 10000 else 3


def measure_tool(d, name, build, noop, n):
    """Builds `d` with `build`, then times the no-op and a one-leaf edit."""
    quiet(build, d)
    runs = runs_for(n)
    command = " ".join(noop)
    times = hyperfine(d, [(name, command)], runs=runs, warmup=1)
    width = 50 if n <= 1000 else 100  # as gen.py lays them out
    leaf = f"in/s{n // width - 1}_0.txt"
    edit = hyperfine(d, [(name, command)], runs=runs, warmup=1, prepare=f"sh -c 'echo >> {leaf}'")
    return {"noop_s": times[name], "edit_s": edit[name], "peak_mb": peak_rss_mb(d, noop)}


def measure(work, piper, sizes, make_max):
    results = {}
    for n in sizes:
        src = os.path.join(work, f"cached-{n}")
        row = {}
        tools = [("piper", [piper, "exec", "all", "-j2"]), ("ninja", [shutil.which("ninja"), "-j2", "--quiet"])]
        if n <= make_max:
            tools.append(("make", [shutil.which("make"), "-s", "-j2"]))
        for name, argv in tools:
            d = f"{src}-{name}"
            if not os.path.isdir(d):
                shutil.copytree(src, d, symlinks=True)
            row[name] = measure_tool(d, name, argv, argv, n)
            if name == "piper":
                evaluated = hyperfine(d, [("eval", f"{piper} --no-config-cache list")], runs=min(runs_for(n), 5))
                loaded = hyperfine(d, [("load", f"{piper} list")], runs=runs_for(n), warmup=1)
                row[name]["evaluate_s"] = evaluated["eval"]
                row[name]["config_cache_s"] = loaded["load"]
                row[name]["evaluate_peak_mb"] = peak_rss_mb(d, [piper, "--no-config-cache", "list"])
            shutil.rmtree(d, ignore_errors=True)
            print(f"scale: {n} steps, {name}: {row[name]}", file=sys.stderr)
        results[n] = row
    return results


def fmt(seconds):
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def lines(results, chart):
    """The Markdown section: a table per size and the chart."""
    out = ["", "## How cost grows with the number of steps", "",
           "`bench/scale.py`: the file-backed DAG (`cached-N`: each step copies its own input, in layers "
           "of 50 (1,000 steps) or 100, each depending on two of the layer before) at each size; every tool builds its own copy "
           "first. A one-leaf edit changes the input of one step of the last layer: one step runs. Peak "
           "memory is the no-op's, by GNU time. Make is left out past 10,000 steps (its no-op takes minutes).",
           "", f"![cached no-op, one-leaf edit and peak memory against steps]({chart})", "",
           "| steps | tool | cached no-op | one-leaf edit | peak memory | evaluate piper.lua | configuration cache |",
           "|---|---|---|---|---|---|---|"]
    for n in sorted(results, key=int):
        for tool, r in results[n].items():
            out.append(f"| {int(n):,} | {tool} | {fmt(r['noop_s'])} | {fmt(r['edit_s'])} | {r['peak_mb']:.0f} MB | "
                       f"{fmt(r.get('evaluate_s'))} | {fmt(r.get('config_cache_s'))} |")
    big = str(max(int(n) for n in results))
    if "ninja" in results.get(big, {}) and "piper" in results[big]:
        p, nj = results[big]["piper"], results[big]["ninja"]
        ratio = p["noop_s"] / nj["noop_s"]
        out += ["", f"At {int(big):,} steps: cached no-op {ratio:.2f}× ninja (target ≤ 1.0×: "
                f"{'met' if ratio <= 1.0 else 'missed'}); evaluation {fmt(p['evaluate_s'])} (whole process, "
                f"`piper --no-config-cache list`; target < 1 s: {'met' if p['evaluate_s'] < 1 else 'missed'}); "
                f"peak memory {p['peak_mb']:.0f} MB no-op, {p['evaluate_peak_mb']:.0f} MB evaluating "
                f"(target < 300 MB: {'met' if max(p['peak_mb'], p['evaluate_peak_mb']) < 300 else 'missed'})."]
    return out


COLOURS = {"piper": "#1f6feb", "ninja": "#d1242f", "make": "#8250df"}


def svg(results, path):
    """Three log-log panels against steps: cached no-op, one-leaf edit, peak memory."""
    sizes = sorted(results)
    panels = [("cached no-op (s)", "noop_s"), ("one-leaf edit (s)", "edit_s"), ("peak memory, no-op (MB)", "peak_mb")]
    w, h, pad = 300, 220, 48
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * len(panels) + 20}" height="{h + 60}" '
           'font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>']
    import math
    for p, (title, key) in enumerate(panels):
        x0 = 10 + p * w
        values = [results[n][t][key] for n in sizes for t in results[n] if results[n][t].get(key)]
        lo, hi = math.log10(min(values)), math.log10(max(values))
        lo, hi = math.floor(lo), math.ceil(hi) if hi > math.floor(lo) else math.floor(lo) + 1
        xl, xh = math.log10(sizes[0]), math.log10(sizes[-1]) if len(sizes) > 1 else math.log10(sizes[0]) + 1

        def px(n):
            return x0 + pad + (math.log10(n) - xl) / (xh - xl) * (w - pad - 20)

        def py(v):
            return 20 + (hi - math.log10(v)) / (hi - lo) * (h - 40)
        out.append(f'<text x="{x0 + w / 2}" y="14" text-anchor="middle" font-weight="bold">{title}</text>')
        out.append(f'<line x1="{x0 + pad}" y1="{h - 20}" x2="{x0 + w - 20}" y2="{h - 20}" stroke="#888"/>')
        out.append(f'<line x1="{x0 + pad}" y1="20" x2="{x0 + pad}" y2="{h - 20}" stroke="#888"/>')
        for e in range(lo, hi + 1):
            label = f"{10 ** e:g}"
            out.append(f'<text x="{x0 + pad - 4}" y="{py(10 ** e) + 4}" text-anchor="end">{label}</text>')
            out.append(f'<line x1="{x0 + pad}" y1="{py(10 ** e)}" x2="{x0 + w - 20}" y2="{py(10 ** e)}" '
                       'stroke="#eee"/>')
        for n in sizes:
            out.append(f'<text x="{px(n)}" y="{h - 6}" text-anchor="middle">{n:,}</text>')
        for tool, colour in COLOURS.items():
            points = [(px(n), py(results[n][tool][key])) for n in sizes
                      if tool in results[n] and results[n][tool].get(key)]
            if not points:
                continue
            line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
            for x, y in points:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
    for i, (tool, colour) in enumerate(COLOURS.items()):
        x = 10 + pad + i * 90
        out.append(f'<rect x="{x}" y="{h + 20}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 16}" y="{h + 30}">{tool}</text>')
    out.append(f'<text x="{10 + pad + 280}" y="{h + 30}">steps (x), log scales; 2 cores, -j2</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="gen.py's output directory")
    ap.add_argument("--piper", required=True)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--make-max", type=int, default=10000)
    ap.add_argument("--svg", help="where to draw the chart")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    results = measure(args.work, os.path.abspath(args.piper), sizes, args.make_max)
    if args.svg:
        svg(results, args.svg)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
