"""Report building: figures, Markdown/LaTeX tables and the self-contained HTML page, rendered in headless
Chromium (Debian package ``chromium``): every <img> must decode (naturalWidth > 0) and the results table must
render. Skipped only when chromium is absent outside CI; in CI (env CI set) a missing chromium fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from g2face_eval.reports import build, figures, tables

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def require_chromium() -> str:
    exe = chromium_binary()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail(
                "CI requires Debian chromium for the report rendering test (apt-get install chromium)"
            )
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return exe


def render_check(html_path: Path, tmp_path: Path) -> dict:
    """Open the page in headless Chromium, return the #render-check attributes and a screenshot path."""
    exe = require_chromium()
    prof = tmp_path / "chromium-profile"
    url = html_path.resolve().as_uri()
    base = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={prof}", "--virtual-time-budget=10000"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    m = re.search(r'<p id="render-check"[^>]*>', dom)
    assert m, f"render-check element missing from the dumped DOM (chromium output: {dom[:300]!r})"
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', m.group(0)))
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1200,900", url], capture_output=True, timeout=180
    )
    return {"attrs": attrs, "screenshot": shot, "dom": dom}


def synthetic_run(run_dir: Path) -> Path:
    """A results folder shaped like the harness's, with made-up numbers (for the report plumbing)."""
    rng = np.random.default_rng(0)
    rows = []
    methods = ["blur_s4", "pixelate_8", "mask_black", "identity"]
    for i, m in enumerate(methods):
        for metric, v in (
            ("deid_success_rate_sface", [0.2, 0.9, 1.0, 0.0][i]),
            ("ssim", [0.9, 0.6, 0.4, 1.0][i]),
            ("pose_error_deg", [1.0, 5.0, 20.0, 0.0][i]),
            ("fd_effnet_lite0", [10, 80, 200, 0][i]),
        ):
            ci = (np.nan, np.nan) if metric.startswith("fd") else (v - 0.05, v + 0.05)
            rows.append(
                dict(
                    method=m,
                    dataset="celebahq256",
                    metric=metric,
                    value=float(v),
                    ci_lo=ci[0],
                    ci_hi=ci[1],
                    n=8,
                    aggregation="mean",
                    higher_is_better=None,
                )
            )
        rows.append(
            dict(
                method=m,
                dataset="all",
                metric="latency_ms_per_image",
                value=float(rng.uniform(1, 50)),
                ci_lo=np.nan,
                ci_hi=np.nan,
                n=3,
                aggregation="median",
                higher_is_better=False,
            )
        )
    run_dir.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(run_dir / "aggregate.parquet")
    demo = pd.DataFrame(
        [
            dict(
                method=m,
                dataset="utkface",
                attribute="gender",
                group=g,
                metric="deid_success_rate_sface",
                value=0.5,
                ci_lo=0.3,
                ci_hi=0.7,
                n=4,
            )
            for m in methods
            for g in ("male", "female")
        ]
    )
    demo.to_csv(run_dir / "demographics.csv", index=False)
    (run_dir / "config.json").write_text(json.dumps({"datasets": ["celebahq256"], "methods": methods}))
    (run_dir / "samples").mkdir()
    import cv2

    cv2.imwrite(
        str(run_dir / "samples" / "blur_s4__celebahq256.png"), rng.integers(0, 255, (64, 128, 3), np.uint8)
    )
    return run_dir


def test_pareto_front():
    x = np.array([0.9, 0.6, 0.4, 1.0, 0.5])
    y = np.array([0.2, 0.9, 1.0, 0.0, 0.5])
    f = figures.pareto_front(x, y, True, True)
    assert f.tolist() == [True, True, True, True, False]
    f2 = figures.pareto_front(np.array([10.0, 80.0, 200.0]), np.array([0.2, 0.9, 0.8]), False, True)
    assert f2.tolist() == [True, True, False]


def test_tables_markdown_latex():
    df = pd.DataFrame({"method": ["a_b", "c"], "SSIM": ["0.5 [0.4, 0.6]", "–"]})
    md = tables.markdown(df)
    assert md.count("\n") == 4 and "| a_b |" in md
    tex = tables.latex(df, caption="x", label="tab:x")
    assert r"a\_b" in tex and r"\toprule" in tex and "--" in tex


def test_wide_table_shows_counts_authentication_and_mesh_coverage():
    """What qualifies the other columns is in the table: images processed and failed (integers), the share of
    recoveries that authenticated, wrong keys rejected, mesh coverage of the attribute columns, KID."""
    vals = {"n_images": 30, "n_failed": 4, "recovery_ok_rate": 0.0, "wrongkey_rejected_rate": 1.0,
            "mesh_detected_rate": 0.4, "kid_effnet_lite0": 0.1, "pose_error_deg": 3.0}
    agg = pd.DataFrame([dict(method="g", dataset="d", metric=k, value=float(v), ci_lo=np.nan, ci_hi=np.nan)
                        for k, v in vals.items()])
    w = tables.wide(agg, "d").iloc[0]
    assert (w["n ok"], w["n failed"]) == ("30", "4")
    assert (w["Rec. auth."], w["Wrong key rej."], w["Mesh found"], w["KID-EffNet"]) == ("0.000", "1.000", "0.400",
                                                                                        "0.100")


def test_wide_table_flags_small_n_and_writes_no_negative_zero():
    """A mean over fewer than 10 images says so (a pose error over 4 meshed faces must not read like one over 500),
    and so does an FD or KID over a handful of images; counts never get an n; a value that rounds to zero has no
    minus sign."""
    rows = [("n_images", 500, np.nan, np.nan, 500, "count"), ("pose_error_deg", 8.154, 3.324, 15.756, 4, "mean"),
            ("ssim", 0.42, 0.414, 0.426, 500, "mean"), ("fd_effnet_lite0", 275.6, np.nan, np.nan, 500, "set"),
            ("kid_effnet_lite0", 0.25, np.nan, np.nan, 3, "set"), ("n_failed", 2, np.nan, np.nan, 2, "count"),
            ("wrongkey_similarity_sface", 0.0004, -0.0002, 0.014, 500, "mean")]
    agg = pd.DataFrame([dict(method="g", dataset="d", metric=m, value=float(v), ci_lo=lo, ci_hi=hi, n=n,
                             aggregation=a) for m, v, lo, hi, n, a in rows])
    w = tables.wide(agg, "d").iloc[0]
    assert w["Pose err."] == "8.154 [3.324, 15.756] (n=4)"
    assert (w["n ok"], w["SSIM"], w["FD-EffNet"]) == ("500", "0.420 [0.414, 0.426]", "275.600")
    assert w["Wrong-key sim. (SFace)"] == "0.000 [0.000, 0.014]"
    assert (w["KID-EffNet"], w["n failed"]) == ("0.250 (n=3)", "2")


def test_a_rate_that_is_not_all_or_none_never_reads_1_or_0():
    """1,999 of 2,000 faces de-identified is 0.9995, not 1.000 (and 1 of 2,000 is not 0.000), in the tables and
    the console summary; exact 0 and 1, and means, keep 3 decimals."""
    from g2face_eval.harness import evaluate as E

    rows = [("deid_success_rate_sface", 1999 / 2000, 0.99717, 0.99991, "rate"),
            ("recovery_ok_rate", 1 / 2000, 0.0000883, 0.00283, "rate"), ("wrongkey_rejected_rate", 1.0, 0.998, 1.0,
                                                                          "rate"),
            ("deid_success_rate_dlib", 0.0, 0.0, 0.0019, "rate"), ("ssim", 0.99996, 0.99994, 0.99998, "mean")]
    agg = pd.DataFrame([dict(method="g", dataset="d", metric=m, value=v, ci_lo=lo, ci_hi=hi, n=2000,
                             aggregation=a) for m, v, lo, hi, a in rows])
    w = tables.wide(agg, "d").iloc[0]
    assert w["De-ID (SFace)"] == "0.9995 [0.997, 0.9999]"
    assert w["Rec. auth."] == "0.001 [0.0001, 0.003]"             # rounds to 0.001: already not none
    assert w["Wrong key rej."] == "1.000 [0.998, 1.000]" and w["De-ID (dlib)"] == "0.000 [0.000, 0.002]"
    assert w["SSIM"] == "1.000 [1.000, 1.000]"                       # a mean, not a rate: 3 decimals
    summary = E.format_summary(agg).splitlines()
    cols, vals = summary[0].split(), summary[-1].split()
    got = dict(zip(cols, vals[-len(cols):], strict=True))
    assert got["deid_success_rate_sface"] == "0.9995" and got["deid_success_rate_dlib"] == "0.000"


def test_wide_table_keeps_significant_figures_of_small_set_metrics():
    """A set metric near zero (KID of a mild blur) keeps 3 significant figures instead of reading 0.003 or
    0.000; large ones (FD) and per-image means keep 3 decimals."""
    rows = [("kid_effnet_lite0", 0.0032147, "set"), ("kid", -0.00041234, "set"), ("fid", 12.34567, "set"),
            ("fd_effnet_lite0", 0.0, "set"), ("ssim", 0.0032147, "mean")]
    agg = pd.DataFrame([dict(method="g", dataset="d", metric=m, value=v, ci_lo=np.nan, ci_hi=np.nan, n=500,
                             aggregation=a) for m, v, a in rows])
    w = tables.wide(agg, "d").iloc[0]
    assert (w["KID-EffNet"], w["KID"], w["FID"], w["FD-EffNet"]) == ("0.00321", "-0.000412", "12.346", "0.000")
    assert w["SSIM"] == "0.003"
    assert tables._set_digits(1e-12) == 8


def test_report_from_synthetic_results_renders(tmp_path):
    run = synthetic_run(tmp_path / "results" / "run1")
    out = build.build_report(run, tmp_path / "out", quiet=True)
    for f in (
        "report.html",
        "report.md",
        "tables.tex",
        "table_celebahq256.md",
        "table_celebahq256.tex",
        "figures/privacy_utility_celebahq256.png",
        "figures/metrics_celebahq256.png",
        "figures/latency.png",
        "figures/demographics_utkface_gender.png",
    ):
        assert (out / f).is_file(), f
    page = (out / "report.html").read_text()
    assert tables.NOTE in (out / "report.md").read_text() and "Rec. auth." in tables.NOTE
    assert 'src="data:image/png;base64,' in page and "<img" in page
    assert not re.search(r'src="(?!data:)', page), "report must be self-contained"
    r = render_check(out / "report.html", tmp_path)
    a = r["attrs"]
    assert int(a["images-total"]) >= 5
    assert a["images-ok"] == a["images-total"], a
    assert int(a["table-rows"]) >= 4, a
    shot = r["screenshot"]
    assert shot.is_file()
    import cv2

    img = cv2.imread(str(shot))
    assert img is not None and img.std() > 5, "blank screenshot"


def test_report_cli_latest(tmp_path, monkeypatch):
    synthetic_run(tmp_path / "results" / "run1")
    monkeypatch.setenv("G2FACE_RESULTS_DIR", str(tmp_path / "results"))
    assert build.cli(["--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "report.html").is_file()
    assert build.cli(["--results", str(tmp_path / "nope")]) == 2


def test_report_cli_writes_where_an_evaluation_does(tmp_path, monkeypatch):
    """Without --out, the report goes to the evaluation's reports folder (env var, else ./reports/out), never into
    the package's source tree."""
    synthetic_run(tmp_path / "results" / "run1")
    monkeypatch.setenv("G2FACE_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("G2FACE_REPORTS_DIR", str(tmp_path / "rep"))
    assert build.cli([]) == 0
    assert (tmp_path / "rep" / "run1" / "report.html").is_file()
    monkeypatch.delenv("G2FACE_REPORTS_DIR")
    monkeypatch.chdir(tmp_path / "results")
    out = build.default_out(tmp_path / "results" / "run1").resolve()
    assert out == tmp_path / "results" / "reports" / "out" / "run1"


def test_console_summary_prints_counts_as_integers():
    """``summary.txt`` / the console summary: images processed and failed as integers beside the rates (1 failure
    must not read "1.000" next to rates), rates and means to 3 decimals."""
    from g2face_eval.harness import evaluate as E

    agg = pd.DataFrame([dict(method="blur", dataset="d", metric=m, value=v, ci_lo=np.nan, ci_hi=np.nan)
                        for m, v in (("n_images", 999.0), ("n_failed", 1.0), ("deid_success_rate_sface", 0.25))])
    lines = E.format_summary(agg).splitlines()
    assert lines[0].split()[1:] == ["n_images", "n_failed", "deid_success_rate_sface"]
    assert lines[-1].split()[-3:] == ["999", "1", "0.250"]


# ------------------------------------------------------------------------------------ figures say what they draw
def _agg(rows):
    """rows: (method, metric, value, ci_lo, ci_hi, n, aggregation) on dataset 'd'."""
    return pd.DataFrame([dict(method=m, dataset="d", metric=k, value=float(v), ci_lo=lo, ci_hi=hi, n=n,
                              aggregation=a) for m, k, v, lo, hi, n, a in rows])


class _Calls:
    """Records what the figure functions ask matplotlib to draw (method name -> list of (args, kwargs))."""

    def __init__(self, monkeypatch, *names):
        import matplotlib.axes

        self.calls: dict[str, list] = {n: [] for n in names}
        for n in names:
            orig = getattr(matplotlib.axes.Axes, n)

            def wrap(ax, *a, _n=n, _orig=orig, **k):
                self.calls[_n].append((a, k))
                return _orig(ax, *a, **k)

            monkeypatch.setattr(matplotlib.axes.Axes, n, wrap)


def test_privacy_utility_keeps_small_n_points_out_of_the_front_and_lists_missing_methods(tmp_path, monkeypatch):
    """A pose error over 3 meshed faces is drawn hollow with its n and cannot be on the Pareto front (it would
    dominate on a handful of faces); a method with no value on an axis, or whose every image failed (count rows
    only), is named on the panel."""
    rows = []
    for m, deid, pose, n in (("a", 0.9, 2.0, 3), ("b", 0.8, 4.0, 500), ("c", 0.2, 1.0, 500)):
        rows += [(m, "deid_success_rate_sface", deid, deid - 0.05, deid + 0.05, 500, "rate"),
                 (m, "pose_error_deg", pose, pose - 0.5, pose + 0.5, n, "mean")]
    rows += [("dead", "n_images", 0, np.nan, np.nan, 0, "count"), ("dead", "n_failed", 10, np.nan, np.nan, 10, "count"),
             ("nopose", "deid_success_rate_sface", 0.5, 0.4, 0.6, 500, "rate")]
    c = _Calls(monkeypatch, "errorbar", "annotate", "text", "plot")
    assert figures.privacy_utility(_agg(rows), "d", tmp_path) is not None
    hollow = {a[0][0] for a in c.calls["errorbar"] if a[1].get("mfc") == "none"}
    assert hollow == {2.0}                                               # the point of 'a' (x = its pose error)
    labels = [a[0][0] for a in c.calls["annotate"]]
    assert "a (n=3)" in labels and "b" in labels
    front_x = [a[0][0] for a in c.calls["plot"] if a[1].get("label") == "Pareto front"][0]
    assert 2.0 not in list(front_x) and set(front_x) == {1.0, 4.0}
    texts = " ".join(str(a[0][2]) for a in c.calls["text"])
    assert "dead" in texts and "nopose" in texts and "hollow" in texts


def test_metric_bars_keep_every_method_and_say_which_interval(tmp_path, monkeypatch):
    rows = [("a", "recovery_psnr", 30.0, 29.0, 31.0, 50, "mean"), ("b", "ssim", 0.5, 0.4, 0.6, 50, "mean"),
            ("a", "ssim", 0.7, 0.6, 0.8, 4, "mean")]
    import matplotlib.figure

    c = _Calls(monkeypatch, "set_xticklabels", "set_title")
    sup: list[str] = []
    orig = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", lambda f, t, **k: sup.append(t) or orig(f, t, **k))
    figures.metric_bars(_agg(rows), "d", tmp_path)
    ticks = [list(a[0][0]) for a in c.calls["set_xticklabels"]]
    assert ["a", "b –"] in ticks                                         # recovery_psnr: b has no value, kept
    assert ["a (n=4)", "b"] in ticks                                     # ssim over 4 images: said
    titles = [a[0][0] for a in c.calls["set_title"]]
    assert "recovery_psnr (dB, capped at 100)" in titles
    assert len(sup) == 1 and "Wilson score for rates" in sup[0] and "bootstrap for means" in sup[0]


def test_demographics_draw_no_interval_where_there_is_none(tmp_path, monkeypatch):
    """A group mean over one value has no CI: no (zero-length) error bar is drawn for it."""
    demo = pd.DataFrame([dict(method="m", dataset="u", attribute="gender", group=g, metric="ssim", value=v,
                              ci_lo=lo, ci_hi=hi, n=n) for g, v, lo, hi, n in
                         (("female", 0.5, 0.4, 0.6, 30), ("male", 0.7, np.nan, np.nan, 1))])
    c = _Calls(monkeypatch, "errorbar", "bar")
    assert figures.demographics(demo, tmp_path)
    assert not any("yerr" in k for _, k in c.calls["bar"])
    drawn = [np.asarray(a[1]).tolist() for a, _ in c.calls["errorbar"]]
    assert drawn == [[0.5]]


def test_latency_note_names_device_batch_and_runs_and_never_merges_devices(tmp_path, monkeypatch):
    same = {"a": {"device": "cpu", "device_name": "AMD EPYC, 1 thread", "batch_size": 8, "runs": 3},
            "b": {"device": "cpu", "device_name": "AMD EPYC, 1 thread", "batch_size": 8, "runs": 3}}
    assert figures.latency_note(same) == ("median anonymize time per image: 3 timed calls of a batch of 8, on cpu "
                                          "(AMD EPYC, 1 thread)")
    mixed = {**same, "g": {"device": "cuda:0", "device_name": "NVIDIA H200", "batch_size": 8, "runs": 3},
             "x": {"error": "RuntimeError: boom"}}
    note = figures.latency_note(mixed)
    assert "a, b: 3 timed calls of a batch of 8, on cpu" in note and "g: 3 timed calls of a batch of 8, on cuda:0 " \
        "(NVIDIA H200)" in note
    agg = pd.DataFrame([dict(method=m, dataset="all", metric="latency_ms_per_image", value=v) for m, v in
                        (("a", 1.0), ("b", 2.0), ("g", 0.5))])
    c = _Calls(monkeypatch, "set_yticklabels", "set_xlabel")
    assert figures.latency(agg, tmp_path, mixed) is not None
    assert list(c.calls["set_yticklabels"][0][0][0]) == ["g [cuda:0]", "a [cpu]", "b [cpu]"]
    assert "timing failed, not shown: x" in c.calls["set_xlabel"][0][0][0]


def test_primary_privacy_metric_prefers_a_success_rate():
    agg = pd.DataFrame({"metric": ["deid_mean_similarity_arcface_r50", "deid_success_rate_arcface_r50"]})
    assert figures.primary_deid_metric(agg) == "deid_success_rate_arcface_r50"


def test_report_says_what_computed_the_run_and_goes_where_the_run_put_its_report(tmp_path, monkeypatch):
    """The report names the commit (and uncommitted changes), the software and every invocation's commit and
    device; `g2face-eval report` without --out writes to the reports folder the run's config.json records."""
    run = synthetic_run(tmp_path / "results" / "run1")
    (run / "environment.json").write_text(json.dumps({"git_hash": "f" * 40, "git_dirty": True, "python": "3.11.7 x",
                                                      "torch": "2.14.1", "platform": "Linux-x86_64"}))
    sw = {"python": "3.11.7", "torch": "2.14.1"}
    (run / "invocations.json").write_text(json.dumps([
        {"git_hash": "e" * 40, "git_dirty": False, "device": "cpu", "status": "interrupted", "software": sw},
        {"git_hash": "f" * 40, "git_dirty": True, "device": "cuda", "status": "finished",
         "software": {**sw, "torch": "2.15.0"}}]))
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "reports_dir": str(tmp_path / "where_the_run_said")}))
    monkeypatch.setenv("G2FACE_REPORTS_DIR", str(tmp_path / "env_reports"))
    assert build.default_out(run) == tmp_path / "where_the_run_said" / "run1"
    assert build.cli(["--results", str(run)]) == 0
    out = tmp_path / "where_the_run_said" / "run1"
    md = (out / "report.md").read_text()
    assert f"code: {'f' * 40} (uncommitted changes)" in md and "torch 2.14.1" in md
    assert f"commits: {'e' * 40}, {'f' * 40} (dirty); devices: cpu, cuda; package versions differ" in md
    assert (out / "tables.tex").read_text().startswith("% g2face-eval run run1\n% code: " + "f" * 40)
    assert f"code: {'f' * 40}" in (out / "report.html").read_text()


def test_report_demographic_table_writes_rates_as_the_tables_do(tmp_path):
    """The report's demographic table (4 decimals) used to round a group's rate of 0.99996 to 1.0; rates follow the
    tables' rule (never 0 or 1 unless exact), means keep 4 decimals."""
    run = synthetic_run(tmp_path / "run")
    demo = pd.DataFrame([dict(method="blur_s4", dataset="utkface", attribute="gender", group="male",
                              metric="deid_success_rate_sface", value=0.99996, ci_lo=0.9996, ci_hi=1.0, n=25000,
                              aggregation="rate"),
                         dict(method="blur_s4", dataset="utkface", attribute="gender", group="male", metric="ssim",
                              value=0.123456, ci_lo=0.12, ci_hi=0.13, n=25000, aggregation="mean")])
    demo.to_csv(run / "demographics.csv", index=False)
    out = build.build_report(run, tmp_path / "out", quiet=True)
    page = (out / "report.html").read_text()
    assert "0.99996" in page and "0.9996" in page and "0.1235" in page


def test_a_rebuild_removes_only_its_own_earlier_files(tmp_path):
    """A rebuild of a run removes what its previous build wrote and this one did not (a dropped dataset's table,
    a dropped method's grid); a user's files and another run's report in the same folder stay (found by a
    review: the first version removed every file of the report's names)."""
    from g2face_eval.reports import build as B

    (tmp_path / "figures").mkdir()
    for rel in ("table_a.md", "table_b.md", "notes.md", "figures/samples_x__a.png", "figures/samples_y__a.png",
                "figures/mine.png", "table_other.md", "figures/latency.png"):
        (tmp_path / rel).write_text("x")
    B._remove_stale(tmp_path, "other", {"table_other.md", "figures/latency.png"})
    B._remove_stale(tmp_path, "run", {"table_a.md", "table_b.md", "figures/samples_x__a.png",
                                      "figures/samples_y__a.png", "figures/latency.png"})
    B._remove_stale(tmp_path, "run", {"table_a.md", "figures/samples_x__a.png"})   # b and y dropped
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == [".report_files.json", "figures/latency.png", "figures/mine.png", "figures/samples_x__a.png",
                    "notes.md", "table_a.md", "table_other.md"]
