"""Markdown and LaTeX tables from an evaluation's aggregate table (value with 95% bootstrap CI)."""

from __future__ import annotations

import math

import pandas as pd

HEADLINE = (
    "n_images",
    "n_failed",
    "deid_success_rate_sface",
    "deid_success_rate_dlib",
    "deid_mean_similarity_sface",
    "id_rank1_sface",
    "id_rank5_sface",
    "ssim",
    "psnr",
    "lpips_alex",
    "fd_effnet_lite0",
    "kid_effnet_lite0",
    "fid",
    "kid",
    "mesh_detected_rate",
    "pose_error_deg",
    "mesh_shape_distance",
    "landmark_nme",
    "detection_rate_yunet",
    "recovery_ok_rate",
    "recovery_psnr",
    "recovery_ssim",
    "recovered_id_success_sface",
    "wrongkey_rejected_rate",
    "wrongkey_similarity_sface",
    "payload_ber",
)

LABELS = {
    "n_images": "n ok",
    "n_failed": "n failed",
    "deid_success_rate_sface": "De-ID (SFace)",
    "deid_success_rate_dlib": "De-ID (dlib)",
    "deid_mean_similarity_sface": "Sim. (SFace)",
    "id_rank1_sface": "Rank-1 (SFace)",
    "id_rank5_sface": "Rank-5 (SFace)",
    "ssim": "SSIM",
    "psnr": "PSNR",
    "lpips_alex": "LPIPS",
    "fd_effnet_lite0": "FD-EffNet",
    "kid_effnet_lite0": "KID-EffNet",
    "mesh_detected_rate": "Mesh found",
    "fid": "FID",
    "kid": "KID",
    "pose_error_deg": "Pose err.",
    "mesh_shape_distance": "Shape dist.",
    "landmark_nme": "NME vs orig. mesh",
    "detection_rate_yunet": "Det. (YuNet)",
    "recovery_ok_rate": "Rec. auth.",
    "recovery_psnr": "Rec. PSNR",
    "recovery_ssim": "Rec. SSIM",
    "recovered_id_success_sface": "Rec. ID (SFace)",
    "wrongkey_rejected_rate": "Wrong key rej.",
    "wrongkey_similarity_sface": "Wrong-key sim. (SFace)",
    "payload_ber": "BER",
    "latency_ms_per_image": "ms/img",
}


NOTE = (
    "Cells: value [95% CI: Wilson score interval for rates, percentile bootstrap for means]; set metrics (FD, KID) "
    "and counts have no CI (a set metric below 1 keeps 3 significant figures; a rate that is not exactly 0 or 1 "
    "gets the decimals that show it, up to 6); '(n=k)': a mean, rate, FD or KID "
    "over fewer than 10 images. KID: unbiased polynomial-kernel MMD^2, mean over 100 subsets of min(n real, "
    "n output, 1000) images, each face's own original left out of the cross term (torch-fidelity's KID keeps "
    "it). FD-EffNet / KID-EffNet are on EfficientNet-lite0 "
    "features, not FID / KID. Rates and means are over the "
    "images a method processed (n ok; failures in n failed). Pose error, mesh shape distance and NME average "
    "only the faces meshed on both the original and the output (Mesh found); detection counts a face only at "
    "the subject's place (IoU >= 0.3 with the original face's box); recovery PSNR/SSIM only the recoveries "
    "that authenticated (Rec. auth.; a failed-closed recovery returns its input and counts as identity not "
    "recovered in Rec. ID). '–': no value (no face for the mesh, no authenticated recovery, or not applicable)."
)


SMALL_N = 10  # a per-image mean or rate (or an FD / KID) over fewer values is shown with its n
REALISM_SET_METRICS = ("fd_effnet_lite0", "kid_effnet_lite0", "fid", "kid")


def counts_images(metric: str, aggregation: str | None) -> bool:
    """Whether a value's ``n`` counts the images it was computed from, so that a small one is shown (tables and
    figures alike): per-image means, rates and medians, and the set-based FD / KID; not counts or peak memory."""
    return aggregation in ("mean", "rate", "median") or metric in REALISM_SET_METRICS


def _num(x: float, digits: int, rate: bool = False) -> str:
    """``x`` to ``digits`` decimals; a value that rounds to zero has no minus sign. ``rate``: a rate that is not
    exactly 0 or 1 gets more decimals (up to 6) rather than read as none or all (1,999 of 2,000 is 0.9995, not
    1.000)."""
    s = f"{x:.{digits}f}"
    while rate and float(s) in (0.0, 1.0) and x not in (0.0, 1.0) and digits < 6:
        digits += 1
        s = f"{x:.{digits}f}"
    return s.lstrip("-") if float(s) == 0 else s


def rate_text(x: float, digits: int = 3) -> str:
    """A rate as the tables write it (``_num(..., rate=True)``; the console summary uses it too)."""
    return _num(x, digits, rate=True)


def _set_digits(x: float, digits: int = 3, sig: int = 3) -> int:
    """Decimals for a set metric (FD, KID): at least ``digits``, more for a small value so that it keeps ``sig``
    significant figures (a KID of 0.00321 would read 0.003 to 3 decimals), at most 8."""
    if not math.isfinite(x) or x == 0:
        return digits
    return min(8, max(digits, sig - 1 - math.floor(math.log10(abs(x)))))


def _fmt(v: float, lo: float, hi: float, digits: int = 3, n: int | None = None, rate: bool = False) -> str:
    """'value [lo, hi]', '–' for no value; `` (n=k)`` appended when ``n`` (values averaged) is below SMALL_N."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    s = _num(v, digits, rate)
    if lo is not None and not (isinstance(lo, float) and math.isnan(lo)):
        s += f" [{_num(lo, digits, rate)}, {_num(hi, digits, rate)}]"
    if n is not None and n < SMALL_N:
        s += f" (n={n})"
    return s


def wide(agg: pd.DataFrame, dataset: str, metrics: tuple[str, ...] = HEADLINE) -> pd.DataFrame:
    """Rows: methods; columns: metrics present for ``dataset`` (+ latency); cells: 'value [lo, hi]'."""
    a = agg[agg["dataset"] == dataset]
    present = [m for m in metrics if m in set(a["metric"])]
    methods = sorted(a["method"].unique())
    lat = agg[(agg["metric"] == "latency_ms_per_image")].set_index("method")["value"].to_dict()
    rows = []
    for m in methods:
        r = {"method": m}
        for k in present:
            x = a[(a["method"] == m) & (a["metric"] == k)]
            if not len(x):
                r[LABELS.get(k, k)] = "–"
                continue
            row = x.iloc[0]
            n = row.get("n")  # images the value comes from: shown when small
            per_image = counts_images(k, row.get("aggregation"))
            digits = 0 if k in ("n_images", "n_failed") else 3
            if row.get("aggregation") == "set" and pd.notna(row["value"]):
                digits = _set_digits(float(row["value"]), digits)
            r[LABELS.get(k, k)] = _fmt(row["value"], row["ci_lo"], row["ci_hi"], digits,
                                       int(n) if per_image and pd.notna(n) else None,
                                       rate=row.get("aggregation") == "rate")
        if lat:
            r[LABELS["latency_ms_per_image"]] = f"{lat[m]:.1f}" if m in lat else "–"
        rows.append(r)
    return pd.DataFrame(rows)


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(no rows)_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(_md_escape(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_md_escape(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    rep = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "–": "--",
    }
    return "".join(rep.get(c, c) for c in str(s))


def latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    if df.empty:
        return "% (no rows)\n"
    cols = list(df.columns)
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\scriptsize",
        r"\begin{tabular}{l" + "c" * (len(cols) - 1) + "}",
        r"\toprule",
        " & ".join(_tex_escape(c) for c in cols) + r" \\",
        r"\midrule",
    ]
    for _, r in df.iterrows():
        out.append(" & ".join(_tex_escape(r[c]) for c in cols) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        out.append(r"\caption{" + _tex_escape(caption) + "}")
    if label:
        out.append(r"\label{" + label + "}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"
