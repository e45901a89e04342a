"""Figures of an evaluation (matplotlib, Agg backend): privacy-utility scatter with the Pareto front, metric
bars with CI error bars, latency, demographic breakdown. Each function saves a PNG and returns its path (or
None when the data it needs is absent)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from g2face_eval.metrics.base import PSNR_CAP_DB, spec  # noqa: E402
from g2face_eval.reports.tables import SMALL_N, counts_images  # noqa: E402

DPI = 110


def _get(agg: pd.DataFrame, dataset: str, metric: str) -> pd.DataFrame:
    """value, ci_lo, ci_hi and ``small`` (a per-image mean or rate over fewer than ``tables.SMALL_N`` values, the
    tables' "(n=k)" cells) of ``metric`` per method, with ``n`` (NaN where the table has no n)."""
    a = agg[(agg["dataset"] == dataset) & (agg["metric"] == metric)].set_index("method")
    d = a[["value", "ci_lo", "ci_hi"]].astype(float)
    n = a["n"].astype(float) if "n" in a else pd.Series(np.nan, index=a.index)
    if "aggregation" not in a:   # no declaration to go by: every n counts images
        per_image = pd.Series(True, index=a.index)
    else:
        per_image = a["aggregation"].map(lambda g: counts_images(metric, g)).astype(bool)
    d["n"] = n
    d["small"] = per_image & (n < SMALL_N)
    return d


def _methods(agg: pd.DataFrame, dataset: str) -> list[str]:
    """Every method with a row for ``dataset`` (also one whose every image failed: it has count rows only)."""
    return sorted(agg.loc[agg["dataset"] == dataset, "method"].unique())


def _unit(metric: str) -> str:
    """' (unit)' from the metric's declaration; PSNRs say where they are capped (identical images)."""
    try:
        u = spec(metric).unit
    except Exception:  # noqa: BLE001 - a metric without a declaration: no unit shown
        return ""
    if u == "dB" and "psnr" in metric:
        u = f"dB, capped at {PSNR_CAP_DB:g}"
    return f" ({u})" if u else ""


def _n_tag(row: pd.Series) -> str:
    return f" (n={int(row['n'])})" if bool(row["small"]) else ""


def primary_deid_metric(agg: pd.DataFrame) -> str | None:
    """The privacy axis: a de-identification success rate (higher: more private) or, when no recognizer
    threshold is validated, the mean similarity to the original (lower: more private)."""
    present = set(agg["metric"])
    for m in (
        "deid_success_rate_sface",
        "deid_success_rate_dlib",
        "deid_mean_similarity_sface",
        "deid_mean_similarity_dlib",
    ):
        if m in present:
            return m
    rates = sorted(m for m in present if m.startswith("deid_success_rate_"))     # another recognizer's rate,
    sims = sorted(m for m in present if m.startswith("deid_mean_similarity_"))   # before any similarity
    return (rates or sims or [None])[0]


def pareto_front(
    x: np.ndarray, y: np.ndarray, x_higher_better: bool, y_higher_better: bool = True
) -> np.ndarray:
    """Boolean mask of the non-dominated points (both objectives oriented by the flags)."""
    xs = x if x_higher_better else -x
    ys = y if y_higher_better else -y
    keep = np.ones(len(x), bool)
    for i in range(len(x)):
        dom = (xs >= xs[i]) & (ys >= ys[i]) & ((xs > xs[i]) | (ys > ys[i]))
        keep[i] = not dom.any()
    return keep


UTILITY_AXES = (
    ("ssim", "SSIM to original (higher: more utility)", True),
    ("fd_effnet_lite0", "Fréchet distance, EfficientNet-lite0 (lower: more realistic)", False),
    ("pose_error_deg", "pose error, degrees, over the faces meshed on both images (lower: pose kept)", False),
)


def privacy_utility(agg: pd.DataFrame, dataset: str, out: Path) -> Path | None:
    ym = primary_deid_metric(agg[agg["dataset"] == dataset])
    if ym is None:
        return None
    y = _get(agg, dataset, ym)
    axes_spec = [(m, lbl, hib) for m, lbl, hib in UTILITY_AXES if len(_get(agg, dataset, m))]
    if not axes_spec or y.empty:
        return None
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(5.2 * len(axes_spec), 4.4), squeeze=False)
    everyone = _methods(agg, dataset)
    for ax, (xm, xl, hib) in zip(axes[0], axes_spec, strict=False):
        x = _get(agg, dataset, xm)
        ok = x["value"].notna()
        methods = [m for m in y.index if m in x.index and ok[m] and pd.notna(y.loc[m, "value"])]
        if not methods:
            ax.set_visible(False)
            continue
        # no value on one axis (no face meshed, every image failed): said, not silently dropped
        notes = ["no value, not shown: " + ", ".join(m for m in everyone if m not in methods)]
        xv = x.loc[methods, "value"].to_numpy(float)
        yv = y.loc[methods, "value"].to_numpy(float)
        small = (x.loc[methods, "small"].to_numpy(bool) | y.loc[methods, "small"].to_numpy(bool))
        y_hib = ym.startswith("deid_success_rate")
        # a mean over a handful of faces (e.g. a pose error over the 6 faces a strong pixelation leaves meshable)
        # is drawn hollow with its n and takes no part in the front
        front = np.zeros(len(methods), bool)
        if (~small).any():
            front[~small] = pareto_front(xv[~small], yv[~small], hib, y_hib)
        for i, m in enumerate(methods):
            xe = x.loc[m]
            ye = y.loc[m]
            xerr = None if np.isnan(xe.ci_lo) else [[xe.value - xe.ci_lo], [xe.ci_hi - xe.value]]
            yerr = None if np.isnan(ye.ci_lo) else [[ye.value - ye.ci_lo], [ye.ci_hi - ye.value]]
            color = "C3" if front[i] else "C0"
            ax.errorbar(
                xv[i],
                yv[i],
                xerr=xerr,
                yerr=yerr,
                fmt="o",
                ms=6 if front[i] else 4,
                color=color,
                mfc="none" if small[i] else color,
                ecolor="0.7",
                elinewidth=0.8,
                capsize=2,
            )
            tag = f" (n={int(min(n for n in (xe.n, ye.n) if pd.notna(n)))})" if small[i] else ""
            ax.annotate(m + tag, (xv[i], yv[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if small.any():
            notes.append(f"hollow: fewer than {SMALL_N} faces, not in the front")
        notes = [t for t in notes if not t.endswith(": ")]
        if notes:
            ax.text(0.01, 0.01, "\n".join(notes), transform=ax.transAxes, fontsize=6, va="bottom", color="0.35",
                    wrap=True)
        order = np.argsort(xv[front])
        ax.plot(xv[front][order], yv[front][order], "-", color="C3", lw=1.2, alpha=0.7, label="Pareto front")
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel(f"{ym} ({'higher' if y_hib else 'lower'}: more private)", fontsize=8)
        ax.set_ylim(-0.05, 1.05) if y_hib else None
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Privacy-utility trade-off — {dataset}", fontsize=10)
    fig.tight_layout()
    path = out / f"privacy_utility_{dataset}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


BAR_METRICS = (
    "deid_success_rate_sface",
    "deid_success_rate_dlib",
    "deid_mean_similarity_sface",
    "deid_mean_similarity_dlib",
    "id_rank1_sface",
    "id_rank5_sface",
    "ssim",
    "fd_effnet_lite0",
    "pose_error_deg",
    "detection_rate_yunet",
    "detection_rate_dlib_hog",
    "recovery_ok_rate",
    "recovery_psnr",
    "recovered_id_success_sface",
    "payload_ber",
)


def metric_bars(agg: pd.DataFrame, dataset: str, out: Path, metrics=BAR_METRICS) -> Path | None:
    a = agg[agg["dataset"] == dataset]
    present = [m for m in metrics if m in set(a["metric"])]
    if not present:
        return None
    ncol = min(4, len(present))
    nrow = int(np.ceil(len(present) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    everyone = _methods(agg, dataset)
    for ax, m in zip(axes.flat, present, strict=False):
        d = _get(agg, dataset, m).reindex(everyone)    # a method with no value keeps its place, marked "–"
        v = d["value"].to_numpy(float)
        small = d["small"].fillna(False).to_numpy(bool)
        ax.bar(range(len(d)), np.nan_to_num(v), color=["none" if s else "C0" for s in small], edgecolor="C0")
        has_ci = np.isfinite(d["ci_lo"].to_numpy(float)) & np.isfinite(d["ci_hi"].to_numpy(float))
        if has_ci.any():  # error bars only where a CI exists (set metrics such as FD have none)
            i = np.flatnonzero(has_ci)
            ax.errorbar(i, v[i], yerr=[v[i] - d["ci_lo"].to_numpy(float)[i], d["ci_hi"].to_numpy(float)[i] - v[i]],
                        fmt="none", ecolor="0.3", capsize=2)
        ax.set_xticks(range(len(d)))
        ticks = [f"{k} –" if np.isnan(v[j]) else k + (_n_tag(d.iloc[j]) if small[j] else "")
                 for j, k in enumerate(d.index)]
        ax.set_xticklabels(ticks, rotation=60, ha="right", fontsize=7)
        title = m + _unit(m)
        ax.set_title(title if has_ci.any() else f"{title} (no CI)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(present) :]:
        ax.set_visible(False)
    fig.suptitle(f"{dataset}: 95% CIs (Wilson score for rates, percentile bootstrap for means; set metrics have "
                 f"none); '–': no value; hollow bar, (n=k): fewer than {SMALL_N} images", fontsize=9)
    fig.tight_layout()
    path = out / f"metrics_{dataset}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _timed(info: dict | None) -> dict:
    """The methods of ``latency.json`` that were timed: ``{method: entry}`` with a device and no error."""
    return {m: v for m, v in (info or {}).items() if isinstance(v, dict) and "error" not in v and "device" in v}


def latency_note(info: dict | None) -> str:
    """What the latency numbers are, from ``latency.json`` (``{method: {device, device_name, batch_size, runs}}``):
    'median anonymize time per image: 3 timed calls of a batch of 8, on cpu (AMD EPYC, 1 thread)'. Devices (or
    batch sizes / runs) that differ between methods are listed per method, never merged."""
    ok = _timed(info)
    if not ok:
        return "median anonymize time per image"

    def where(v: dict) -> str:
        name = v.get("device_name")
        return f"{v['device']} ({name})" if name else str(v["device"])

    def how(v: dict) -> str:
        return f"{v.get('runs', '?')} timed calls of a batch of {v.get('batch_size', '?')}, on {where(v)}"

    kinds: dict[str, list[str]] = {}
    for m, v in sorted(ok.items()):
        kinds.setdefault(how(v), []).append(m)
    if len(kinds) == 1:
        return f"median anonymize time per image: {next(iter(kinds))}"
    return "median anonymize time per image: " + "; ".join(f"{', '.join(ms)}: {k}" for k, ms in kinds.items())


def latency(agg: pd.DataFrame, out: Path, info: dict | None = None) -> Path | None:
    """ms per image per method; ``info`` (``latency.json``) gives the device, batch and runs for the label; a
    method whose timing failed is listed, not dropped; methods timed on different devices are marked per bar."""
    d = agg[agg["metric"] == "latency_ms_per_image"].set_index("method")["value"].sort_values()
    if d.empty:
        return None
    ok = _timed(info)
    devices = {ok[m]["device"] for m in d.index if m in ok}
    labels = [f"{m} [{ok[m]['device']}]" if len(devices) > 1 and m in ok else m for m in d.index]
    failed = sorted(m for m, v in (info or {}).items() if isinstance(v, dict) and "error" in v)
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(d) + 1.6))
    ax.barh(range(len(d)), d.to_numpy(float), color="C2")
    ax.set_yticks(range(len(d)))
    ax.set_yticklabels(labels, fontsize=8)
    note = latency_note(info)
    if failed:
        note += "\ntiming failed, not shown: " + ", ".join(failed)
    ax.set_xlabel("ms per image\n" + note, fontsize=7, wrap=True)
    ax.set_xscale("log" if d.max() / max(d[d > 0].min() if (d > 0).any() else 1, 1e-9) > 100 else "linear")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = out / "latency.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


DEMOGRAPHIC_FIGURE_METRICS = (
    ("deid_success_rate_sface", "deid_success_rate_dlib", "deid_mean_similarity_sface"),  # the first present
    ("ssim",),
    ("pose_error_deg",),
    ("detection_rate_yunet",),
)


def demographic_metrics(demo: pd.DataFrame) -> list[str]:
    """The metrics the demographic figures (and the report's demographic table) show, where present."""
    present = set(demo["metric"]) if demo is not None and not demo.empty else set()
    return [next(m for m in opts if m in present) for opts in DEMOGRAPHIC_FIGURE_METRICS
            if any(m in present for m in opts)]


def demographics(demo: pd.DataFrame, out: Path) -> list[Path]:
    """One figure per (dataset, attribute): a panel per metric of ``demographic_metrics``, bars per method
    and group with 95% CIs."""
    paths = []
    metrics = demographic_metrics(demo)
    if not metrics:
        return paths
    d0 = demo[demo["metric"].isin(metrics)]
    for (dataset, attr), d in d0.groupby(["dataset", "attribute"], sort=True):
        methods = sorted(d["method"].unique())
        groups = sorted(d["group"].unique())
        width = max(6, 0.5 * len(methods) * len(groups) / 2)
        fig, axes = plt.subplots(len(metrics), 1, figsize=(width, 3.2 * len(metrics)), squeeze=False)
        w = 0.8 / max(1, len(groups))
        for ax, metric in zip(axes[:, 0], metrics, strict=True):
            dm = d[d["metric"] == metric]
            for j, g in enumerate(groups):
                dd = dm[dm["group"] == g].set_index("method").reindex(methods)
                v = dd["value"].to_numpy(float)
                xs = np.arange(len(methods)) + j * w
                ax.bar(xs, v, w, label=f"{g}")
                lo, hi = dd["ci_lo"].to_numpy(float), dd["ci_hi"].to_numpy(float)
                has = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(v)   # a mean over 1 value has no CI: no bar
                if has.any():
                    ax.errorbar(xs[has], v[has], yerr=[v[has] - lo[has], hi[has] - v[has]], fmt="none",
                                ecolor="0.25", elinewidth=0.8, capsize=1.5)
            ax.set_xticks(np.arange(len(methods)) + 0.4 - w / 2)
            ax.set_xticklabels(methods, rotation=60, ha="right", fontsize=7)
            ax.set_ylabel(metric, fontsize=8)
            if metric.startswith(("deid_success", "detection_rate")):
                ax.set_ylim(0, 1.05)
            ax.legend(fontsize=7, title=attr, title_fontsize=7, ncol=min(5, len(groups)))
        axes[0, 0].set_title(f"By {attr} — {dataset}", fontsize=10)
        fig.tight_layout()
        path = out / f"demographics_{dataset}_{attr}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        paths.append(path)
    return paths
