"""``g2face-eval report [--results RUN_DIR] [--out DIR]``: figures, Markdown/LaTeX tables and one
self-contained HTML page from an evaluation's results folder.

Default input: the most recently modified run under ``settings.results_dir()``; default output:
``settings.reports_dir() / <run name>``, the folder an evaluation writes its report to (``$G2FACE_REPORTS_DIR``,
else ``reports/out`` under the working directory)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from g2face_eval import atomic, settings
from g2face_eval.reports import figures, html, tables


def latest_run(results_dir: Path | None = None) -> Path:
    root = Path(results_dir or settings.results_dir())
    runs = [p for p in root.glob("*/aggregate.parquet")] if root.is_dir() else []
    if not runs:
        raise FileNotFoundError(f"no evaluation results under {root} (run `g2face-eval evaluate` first)")
    return max(runs, key=lambda p: p.stat().st_mtime).parent


def default_out(run_dir: Path) -> Path:
    """Where the run's evaluation wrote its report: the ``reports_dir`` of its ``config.json`` (as resolved when
    it ran; a relative one against the working directory, as there), else ``settings.reports_dir()``."""
    run_dir = Path(run_dir)
    cfg = _json(run_dir / "config.json")
    root = cfg.get("reports_dir") if isinstance(cfg, dict) else None
    return (Path(root) if root else settings.reports_dir()) / run_dir.name


def _json(path: Path):
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None


def provenance(run_dir: Path) -> list[str]:
    """Lines saying what computed the run: the code (commit, uncommitted changes) and software of its latest
    invocation, and every commit, device and software of the invocations a resumed run was computed by."""
    env = _json(Path(run_dir) / "environment.json") or {}
    inv = _json(Path(run_dir) / "invocations.json") or []
    dirty = {True: " (uncommitted changes)", False: "", None: " (dirty flag unknown)"}
    lines = [f"code: {env.get('git_hash') or 'unknown (not a git checkout)'}{dirty.get(env.get('git_dirty'), '')}",
             f"software: python {str(env.get('python', '?')).split()[0]}, torch {env.get('torch', '?')}, "
             f"{env.get('platform', '?')}" + (f", GPU {env['gpu']}" if env.get("gpu") else "")]
    if inv:
        commits = sorted({(h.get("git_hash") or "unknown") + (" (dirty)" if h.get("git_dirty") else "")
                          for h in inv})
        devices = sorted({str(h.get("device")) for h in inv})
        sw = {json.dumps(h.get("software"), sort_keys=True) for h in inv if h.get("software")}
        lines.append(f"invocations: {len(inv)} ({', '.join(str(h.get('status')) for h in inv)}); commits: "
                     f"{', '.join(commits)}; devices: {', '.join(devices)}"
                     + ("; package versions differ between invocations (invocations.json)" if len(sw) > 1 else ""))
    return lines


def _read(run_dir: Path, name: str) -> pd.DataFrame:
    for suffix in (".parquet", ".csv"):
        p = run_dir / (name + suffix)
        if p.exists():
            if suffix == ".parquet":
                return pd.read_parquet(p)
            try:
                return pd.read_csv(p)
            except pd.errors.EmptyDataError:
                return pd.DataFrame()
    return pd.DataFrame()


MANIFEST = ".report_files.json"  # run name -> the files the last build of that run into the folder wrote


def _remove_stale(out: Path, run: str, written: set[str]) -> None:
    """Remove the files the previous build of ``run`` into ``out`` wrote (the folder's manifest) that this build
    did not write again: leftovers of an earlier configuration under a reused --run-name (a dropped dataset or
    method). Nothing a build of this run did not write is touched (a user's files; another run's report built
    into the same folder, unless this run's build had overwritten it), then the manifest is updated."""
    manifest = out / MANIFEST
    try:
        runs = {k: set(v) for k, v in json.loads(manifest.read_text()).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        runs = {}
    others = set().union(*(v for k, v in runs.items() if k != run))
    for rel in sorted(runs.get(run, set()) - written - others):
        f = out / rel
        if f.parent in (out, out / "figures") and f.suffix in (".md", ".tex", ".png"):
            try:
                f.unlink(missing_ok=True)
            except OSError:
                pass
    runs[run] = written
    atomic.write_text(manifest, json.dumps({k: sorted(v) for k, v in sorted(runs.items())}, indent=0))


def build_report(run_dir: Path, out: Path | None = None, quiet: bool = False) -> Path:
    run_dir = Path(run_dir)
    out = Path(out) if out else default_out(run_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    agg = _read(run_dir, "aggregate")
    if agg.empty:
        raise FileNotFoundError(f"{run_dir}: no aggregate table")
    demo = _read(run_dir, "demographics")
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    unavailable = (
        json.loads((run_dir / "unavailable.json").read_text())
        if (run_dir / "unavailable.json").exists()
        else {}
    )
    lat_info = _json(run_dir / "latency.json") or {}
    lat_note = f"ms/img: {figures.latency_note(lat_info)}."
    datasets = [d for d in cfg.get("datasets", []) if d in set(agg["dataset"])] or sorted(
        d for d in agg["dataset"].unique() if d != "all"
    )

    sections: list[tuple[str, list[str]]] = []
    prov = provenance(run_dir)
    md = [f"# g2face-eval report: {run_dir.name}\n", *(f"- {ln}" for ln in prov), ""]
    tex = [f"% g2face-eval run {run_dir.name}", *(f"% {ln}" for ln in prov)]
    # tables
    tparts = []
    for d in datasets:
        w = tables.wide(agg, d)
        (out / f"table_{d}.md").write_text(tables.markdown(w))
        note = tables.NOTE + (f" {lat_note}" if "ms/img" in w.columns else "")
        tex_table = tables.latex(w, caption=f"Results on {d}. {note}", label=f"tab:{d}")
        (out / f"table_{d}.tex").write_text(tex_table)
        md += [f"## {d}\n", tables.markdown(w), f"\n{note}\n"]
        tex.append(tex_table)
        tparts += [f"<h3>{d}</h3>", html.table_html(w), f"<p>{html.html.escape(note)}</p>"]
    sections.append(("Results (value [95% CI])", tparts))
    # figures
    fparts = []
    figures_written: set[str] = set()
    for d in datasets:
        for p, cap in (
            (figures.privacy_utility(agg, d, fig_dir), f"privacy-utility trade-off, {d}"),
            (figures.metric_bars(agg, d, fig_dir), f"metrics with 95% CIs, {d}"),
        ):
            if p is not None:
                figures_written.add(p.name)
                fparts.append(html.figure(p, cap))
                md.append(f"![{cap}](figures/{p.name})\n")
    lp = figures.latency(agg, fig_dir, lat_info)
    if lp is not None:
        figures_written.add(lp.name)
        fparts.append(html.figure(lp, f"latency per method ({figures.latency_note(lat_info)})"))
        md.append(f"![latency](figures/{lp.name})\n")
    sections.append(("Figures", fparts))
    dparts = []
    for p in figures.demographics(demo, fig_dir):
        figures_written.add(p.name)
        dparts.append(html.figure(p, p.stem.replace("_", " ")))
        md.append(f"![{p.stem}](figures/{p.name})\n")
    if not demo.empty:
        shown = demo[demo["metric"].isin([*figures.demographic_metrics(demo), "n_images", "n_failed"])]
        dparts.append('<p class="muted">every per-image metric per group: demographics.csv in the run folder; '
                      "shown here: the metrics of the figures and each group's images processed and failed</p>")
        shown = shown.reindex(columns=["method", "dataset", "attribute", "group", "metric", "value", "ci_lo",
                                       "ci_hi", "n", "aggregation"])
        for c in ("value", "ci_lo", "ci_hi"):             # 4 decimals; a rate that is not 0 or 1 never reads so
            shown[c] = [("" if pd.isna(x) else tables.rate_text(x, 4) if a == "rate" else f"{x:.4f}")
                        for x, a in zip(shown[c], shown["aggregation"], strict=True)]
        dparts.append(html.table_html(shown.drop(columns="aggregation")))
    if dparts:
        sections.append(("Demographic breakdown", dparts))
    # qualitative grids (original / anonymized / recovered / wrong key)
    gparts = [
        '<p class="muted">columns: original, anonymized, recovered, wrong-key recovery '
        "(grey: not applicable, method not reversible)</p>",
        '<div class="grid">',
    ]
    samples = sorted((run_dir / "samples").glob("*.png")) if (run_dir / "samples").is_dir() else []
    for p in samples:
        q = fig_dir / f"samples_{p.name}"
        q.write_bytes(p.read_bytes())
        figures_written.add(q.name)
        gparts.append(html.figure(q, p.stem.replace("__", " on ")))
    gparts.append("</div>")
    if samples:
        sections.append(("Qualitative samples", gparts))
    if unavailable:
        sections.append(
            (
                "Unavailable metrics (reported, not faked)",
                [
                    "<ul>"
                    + "".join(
                        f"<li><b>{html.html.escape(k)}</b>: {html.html.escape(str(v))}</li>"
                        for k, v in sorted(unavailable.items())
                    )
                    + "</ul>"
                ],
            )
        )
    (out / "report.md").write_text("\n".join(md))
    (out / "tables.tex").write_text("\n".join(tex))
    meta = [
        f"run: {run_dir.name}",
        f"results: {run_dir.resolve()}",
        f"methods: {', '.join(cfg.get('methods', []))}",
        f"datasets: {', '.join(datasets)}",
        *prov,
    ]
    (out / "report.html").write_text(html.page(f"g2face-eval report — {run_dir.name}", sections, meta))
    _remove_stale(out, run_dir.name, {*(f"table_{d}.{x}" for d in datasets for x in ("md", "tex")),
                        *(f"figures/{f}" for f in figures_written)})
    if not quiet:
        print(f"report: {(out / 'report.html').resolve()}")
    return out


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="g2face-eval report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", help="results folder of one run (default: the latest under results_dir)")
    ap.add_argument("--out", help="output folder (default: the run's own reports folder, as its config.json "
                    "records it, else $G2FACE_REPORTS_DIR or ./reports/out; then /<run>)")
    ns = ap.parse_args(argv)
    try:
        run_dir = Path(ns.results) if ns.results else latest_run()
        if not (run_dir / "aggregate.parquet").exists() and not (run_dir / "aggregate.csv").exists():
            run_dir = latest_run(run_dir)  # a results root was given
        build_report(run_dir, Path(ns.out) if ns.out else None)
    except FileNotFoundError as e:
        print(f"g2face-eval report: {e}", file=sys.stderr)
        return 2
    return 0
