#!/usr/bin/env python3
"""Run the CPU benchmarks in one go and write one table of ratios.

    python3 benchmarks/cpu_report.py                      # every benchmarks/bench_*.py
    python3 benchmarks/cpu_report.py bench_dcp bench_asm  # some of them
    python3 benchmarks/cpu_report.py -k "recover or photo"

Runs ``pytest <files> --benchmark-only --benchmark-json`` (one pytest-benchmark run, so every
ratio compares providers measured in the same run), then prints and writes
``benchmarks/results/cpu_<date>.md`` (+ the raw JSON): per benchmark group, min and median time
of each provider (fused, eager, compile, opencv) and the speed-up of ``fused`` over each other
provider, by min and by median. Extra numbers a benchmark records (peak memory, MP/s, GB)
are listed beside it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROVIDERS = ("fused", "eager", "compile", "opencv")


def provider_of(bench: dict) -> str | None:
    params = bench.get("params") or {}
    for v in params.values():
        if v in PROVIDERS:
            return v
    for tok in (bench.get("param") or "").replace("[", "-").replace("]", "-").split("-"):
        if tok in PROVIDERS:
            return tok
    return None


def summarise(data: dict) -> list[str]:
    groups: dict[str, dict] = {}
    extras: dict[str, list] = {}
    info_only: dict[str, dict] = {}  # benchmarks that only record numbers (e.g. peak memory per provider)
    for b in data["benchmarks"]:
        prov = provider_of(b)
        g = b.get("group") or b["name"]
        if prov is None:
            if b.get("extra_info"):
                info_only[g] = b["extra_info"]
            continue
        groups.setdefault(g, {})[prov] = (b["stats"]["min"], b["stats"]["median"], b["stats"]["rounds"])
        if b.get("extra_info"):
            extras.setdefault(g, []).append((prov, b["extra_info"]))
    lines = ["| group | provider | min ms | median ms | rounds | fused speed-up (min / median) | extra |",
             "|---|---|---|---|---|---|---|"]
    for g in sorted(groups):
        d = groups[g]
        for prov in PROVIDERS:
            if prov not in d:
                continue
            mn, md, n = d[prov]
            sp = ""
            if prov != "fused" and "fused" in d:
                sp = f"{mn / d['fused'][0]:.2f}x / {md / d['fused'][1]:.2f}x"
            ex = "; ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for p, e in extras.get(g, []) if p == prov for k, v in e.items())
            lines.append(f"| {g} | {prov} | {mn * 1e3:.2f} | {md * 1e3:.2f} | {n} | {sp} | {ex} |")
    for g in sorted(info_only):
        ex = "; ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info_only[g].items())
        lines.append(f"| {g} | | | | | | {ex} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help="bench_* module names (default: all)")
    ap.add_argument("-k", default=None, help="pytest -k expression")
    ap.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    mods = args.modules or sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    files = [str(ROOT / "benchmarks" / (m if m.endswith(".py") else m + ".py")) for m in mods]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = pathlib.Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"cpu_{stamp}.json"
    cmd = [sys.executable, "-m", "pytest", *files, "--benchmark-only", f"--benchmark-json={raw}", "-q",
           "-p", "no:cacheprovider", "--benchmark-columns=min,median,rounds"]
    if args.k:
        cmd += ["-k", args.k]
    print(" ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=ROOT)
    if not raw.exists() or raw.stat().st_size == 0:
        print("cpu_report: pytest wrote no benchmark results", file=sys.stderr)
        raw.unlink(missing_ok=True)
        return r.returncode or 1
    data = json.loads(raw.read_text())
    mi = data.get("machine_info", {})
    head = [f"# CPU benchmarks {stamp}", "",
            f"`{' '.join(['python3 benchmarks/cpu_report.py', *args.modules] + (['-k', repr(args.k)] if args.k else []))}`"
            f" ({mi.get('cpu', {}).get('brand_raw', platform.processor())}, {os.cpu_count()} cores, "
            f"python {platform.python_version()}); speed-up = other provider's time / fused time.", ""]
    text = "\n".join(head + summarise(data)) + "\n"
    (out / f"cpu_{stamp}.md").write_text(text)
    print(text)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
