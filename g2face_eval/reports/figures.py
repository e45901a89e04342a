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

DPI = 110


def _get(agg: pd.DataFrame, dataset: str, metric: str) -> pd.DataFrame:
    a = agg[(agg["dataset"] == dataset) & (agg["metric"] == metric)]
    return a.set_index("method")[["value", "ci_lo", "ci_hi"]]


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
    rates = sorted(m for m in present if m.startswith("deid_"))
    return rates[0] if rates else None


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
    ("pose_error_deg", "pose error, degrees (lower: pose kept)", False),
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
    for ax, (xm, xl, hib) in zip(axes[0], axes_spec, strict=False):
        x = _get(agg, dataset, xm)
        methods = [m for m in y.index if m in x.index]
        if not methods:
            ax.set_visible(False)
            continue
        absent = [m for m in y.index if m not in x.index]
        if absent:  # e.g. no face for the mesh in any output: said on the panel, not silently dropped
            ax.text(0.01, 0.01, "no value, not shown: " + ", ".join(absent), transform=ax.transAxes, fontsize=6,
                    va="bottom", color="0.35", wrap=True)
        xv = x.loc[methods, "value"].to_numpy(float)
        yv = y.loc[methods, "value"].to_numpy(float)
        y_hib = ym.startswith("deid_success_rate")
        front = pareto_front(xv, yv, hib, y_hib)
        for i, m in enumerate(methods):
            xe = x.loc[m]
            ye = y.loc[m]
            xerr = None if np.isnan(xe.ci_lo) else [[xe.value - xe.ci_lo], [xe.ci_hi - xe.value]]
            yerr = None if np.isnan(ye.ci_lo) else [[ye.value - ye.ci_lo], [ye.ci_hi - ye.value]]
            ax.errorbar(
                xv[i],
                yv[i],
                xerr=xerr,
                yerr=yerr,
                fmt="o",
                ms=6 if front[i] else 4,
                color="C3" if front[i] else "C0",
                ecolor="0.7",
                elinewidth=0.8,
                capsize=2,
            )
            ax.annotate(m, (xv[i], yv[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
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
    for ax, m in zip(axes.flat, present, strict=False):
        d = _get(agg, dataset, m).sort_index()
        v = d["value"].to_numpy(float)
        ax.bar(range(len(d)), v, color="C0")
        has_ci = np.isfinite(d["ci_lo"].to_numpy(float)) & np.isfinite(d["ci_hi"].to_numpy(float))
        if has_ci.any():  # error bars only where a CI exists (set metrics such as FD have none)
            i = np.flatnonzero(has_ci)
            ax.errorbar(i, v[i], yerr=[v[i] - d["ci_lo"].to_numpy(float)[i], d["ci_hi"].to_numpy(float)[i] - v[i]],
                        fmt="none", ecolor="0.3", capsize=2)
        ax.set_xticks(range(len(d)))
        ax.set_xticklabels(d.index, rotation=60, ha="right", fontsize=7)
        ax.set_title(m if has_ci.any() else f"{m} (no CI)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(present) :]:
        ax.set_visible(False)
    fig.suptitle(f"Metrics with 95% bootstrap CIs — {dataset}", fontsize=10)
    fig.tight_layout()
    path = out / f"metrics_{dataset}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def latency(agg: pd.DataFrame, out: Path) -> Path | None:
    d = agg[agg["metric"] == "latency_ms_per_image"].set_index("method")["value"].sort_values()
    if d.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(d) + 1.2))
    ax.barh(range(len(d)), d.to_numpy(float), color="C2")
    ax.set_yticks(range(len(d)))
    ax.set_yticklabels(d.index, fontsize=8)
    ax.set_xlabel("ms per image (median, anonymize only)")
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
                err = [
                    np.nan_to_num(v - dd["ci_lo"].to_numpy(float)),
                    np.nan_to_num(dd["ci_hi"].to_numpy(float) - v),
                ]
                ax.bar(np.arange(len(methods)) + j * w, v, w, yerr=err, label=f"{g}", capsize=1.5)
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
