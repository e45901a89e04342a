"""Metric declarations (lm-evaluation-harness style): every number the harness logs has a ``MetricSpec`` in
``METRICS`` saying which direction is better and how per-sample values are aggregated.

Aggregations
  * ``"mean"``   per-sample real values, reported as their mean (bootstrap CI over samples).
  * ``"rate"``   per-sample 0/1 outcomes, reported as the share of ones (Wilson score interval).
  * ``"median"`` per-sample (or per-run) values, reported as their median (bootstrap CI over samples).
  * ``"set"``    one number computed from a whole set (FID, KID, peak memory): there are no per-sample values,
                 so ``bootstrap.ci`` does not apply (extension of the three aggregations in ARCHITECTURE.md).

Per-recognizer / per-detector families (``deid_success_rate_<recognizer>``, ``detection_rate_<detector>``) are
declared once in ``FAMILIES``; ``metric_name(family, suffix)`` returns the concrete name and registers its
spec on first use, and ``spec(name)`` resolves any concrete or family name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from g2face_eval.registry import Registry

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; capped so means and CIs stay finite

AGGREGATIONS = ("mean", "rate", "median", "set", "count")

# The version of what the per-image metrics mean. Bump it whenever a metric's definition or name changes: it is
# part of every run's config hash, so a run computed under another version is never resumed into (its stored
# records would be mixed with records of the new definitions, or carry metrics that no longer exist).
# 1: until 2026-11-27. 2: detection and the face mesh at the subject's face, mesh_shape_distance (was
# expression_distance), mesh_detected_rate over both images.
DEFINITIONS_VERSION = 2


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (typically a user weight file is absent). The harness reports the
    metric as "unavailable" with ``reason``; it never substitutes a number."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool | None
    aggregation: str
    unit: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"metric {self.name!r}: aggregation must be one of {AGGREGATIONS}")


METRICS: Registry[MetricSpec] = Registry("metric")
FAMILIES: Registry[MetricSpec] = Registry("metric family")

# Names of the recognizers / detectors in ARCHITECTURE.md: their family members are registered up front so
# that METRICS.names() lists them; other names are registered on first use by metric_name().
KNOWN_RECOGNIZERS = ("sface", "dlib", "arcface_r50", "arcface_r100", "facenet_vggface2")
KNOWN_DETECTORS = ("yunet", "mtcnn", "dlib_hog")


def _add(name: str, hib: bool | None, agg: str, unit: str, desc: str) -> MetricSpec:
    return METRICS.add(name, MetricSpec(name, hib, agg, unit, desc))


def _family(prefix: str, hib: bool | None, agg: str, unit: str, desc: str, members: tuple[str, ...]) -> None:
    FAMILIES.add(prefix, MetricSpec(prefix, hib, agg, unit, desc))
    for m in members:
        metric_name(prefix, m)


def metric_name(family: str, suffix: str) -> str:
    """Concrete metric name for a family member, e.g. ``metric_name("deid_success_rate", "sface")`` ->
    ``"deid_success_rate_sface"``; registers its spec (copied from the family) on first use."""
    fam = FAMILIES.get(family)
    if not suffix or not suffix.replace("_", "").isalnum():
        raise ValueError(f"bad metric name suffix {suffix!r}")
    name = f"{family}_{suffix}"
    if name not in METRICS:
        METRICS.add(name, replace(fam, name=name, description=f"{fam.description} [{suffix}]"))
    return name


def per_recognizer(family: str, recognizer: str) -> str:
    """Alias of metric_name for recognizer families (deid_success_rate, deid_mean_similarity,
    recovered_id_success, wrongkey_similarity, diversity_similarity)."""
    return metric_name(family, recognizer)


def spec(name: str) -> MetricSpec:
    """The spec of a concrete metric name; family members not yet used are resolved (and registered)."""
    if name in METRICS:
        return METRICS.get(name)
    for fam in sorted(FAMILIES.names(), key=len, reverse=True):
        if name.startswith(fam + "_"):
            return METRICS.get(metric_name(fam, name[len(fam) + 1 :]))
    return METRICS.get(name)  # raises UnknownNameError listing known names


# ---- declarations ------------------------------------------------------------------------------------------
_family(
    "deid_success_rate",
    True,
    "rate",
    "fraction",
    "share of anonymized faces whose similarity to their original is below the recognizer's FAR-1e-3 "
    "threshold",
    KNOWN_RECOGNIZERS,
)
_family(
    "deid_mean_similarity",
    False,
    "mean",
    "cosine",
    "cosine similarity between anonymized face and its original",
    KNOWN_RECOGNIZERS,
)
_family(
    "recovered_id_success",
    True,
    "rate",
    "fraction",
    "share of right-key recoveries whose face matches the original at the FAR-1e-3 threshold (a recovery that "
    "failed authentication counts as not recovered)",
    KNOWN_RECOGNIZERS,
)
_family(
    "wrongkey_similarity",
    False,
    "mean",
    "cosine",
    "similarity to the original of a face 'recovered' with a wrong key (lower: the key protects)",
    KNOWN_RECOGNIZERS,
)
_family(
    "diversity_similarity",
    False,
    "mean",
    "cosine",
    "similarity between anonymizations of one face under different keys (lower: more diverse)",
    KNOWN_RECOGNIZERS,
)
_family(
    "id_rank1",
    False,
    "rate",
    "fraction",
    "rank-1 identification of anonymized probes against the original gallery (lower: better privacy)",
    KNOWN_RECOGNIZERS,
)
_family(
    "id_rank5",
    False,
    "rate",
    "fraction",
    "rank-5 identification of anonymized probes against the original gallery (lower: better privacy)",
    KNOWN_RECOGNIZERS,
)
_family(
    "id_rank1_original",
    None,
    "rate",
    "fraction",
    "rank-1 identification of the original (unprotected) probes: the recognizer's reference accuracy",
    KNOWN_RECOGNIZERS,
)
_family(
    "id_rank5_original",
    None,
    "rate",
    "fraction",
    "rank-5 identification of the original (unprotected) probes: the recognizer's reference accuracy",
    KNOWN_RECOGNIZERS,
)
_family(
    "detection_rate",
    True,
    "rate",
    "fraction",
    "share of (anonymized) images in which the detector finds a face at the subject's place (a box overlapping the "
    "original face's box by IoU >= 0.3; a face elsewhere does not count)",
    KNOWN_DETECTORS,
)

_add(
    "id_rank1",
    False,
    "rate",
    "fraction",
    "rank-1 identification of anonymized probes against the original gallery (lower: better privacy)",
)
_add(
    "id_rank5",
    False,
    "rate",
    "fraction",
    "rank-5 identification of anonymized probes against the original gallery (lower: better privacy)",
)
_add("recovery_psnr", True, "mean", "dB", "PSNR between recovered and original image, over the recoveries that "
     "authenticated (a failed-closed recovery returns its input: not counted; see recovery_ok_rate); an exact "
     "recovery counts as 100 dB (PSNR_CAP_DB), which the mean averages in")
_add("recovery_ssim", True, "mean", "", "SSIM (gaussian, sigma 1.5) between recovered and original image, over the "
     "recoveries that authenticated")
_add("recovery_lpips_alex", False, "mean", "", "LPIPS (AlexNet) between recovered and original image, over the "
     "recoveries that authenticated")
_add("recovery_lpips_vgg", False, "mean", "", "LPIPS (VGG16) between recovered and original image, over the "
     "recoveries that authenticated")
_add(
    "payload_ber",
    False,
    "mean",
    "fraction",
    "bit error rate of the payload decoded from the anonymized image",
)
_add("fid", False, "set", "", "Frechet Inception distance (torch-fidelity InceptionV3, pool3 2048-d)")
_add("kid", False, "set", "", "kernel Inception distance (unbiased poly-kernel MMD^2, mean over subsets; "
     "same-face pairs left out of the cross term)")
_add(
    "fd_effnet_lite0",
    False,
    "set",
    "",
    "Frechet distance on EfficientNet-lite0 ImageNet pooled 1280-d features (not FID)",
)
_add(
    "kid_effnet_lite0",
    False,
    "set",
    "",
    "KID on EfficientNet-lite0 pooled 1280-d features (not KID-Inception; same-face pairs left out of the "
    "cross term)",
)
_add(
    "pose_error_deg",
    False,
    "mean",
    "deg",
    "mean absolute yaw/pitch/roll difference between anonymized and original face",
)
_add(
    "mesh_shape_distance",
    False,
    "mean",
    "",
    "L2 distance between the pose-normalised non-rigid face-mesh shapes of anonymized and original face (face "
    "shape and expression together, in units of the canonical mesh, inter-ocular ~ 1)",
)
_add(
    "landmark_nme",
    False,
    "mean",
    "fraction",
    "mean 2-D distance between the anonymized face's and the original's predicted face-mesh landmarks (not "
    "annotated landmarks), normalised by the original's outer-eye-corner distance (mesh points 33, 263)",
)
_add("latency_ms_per_image", False, "median", "ms", "wall time per image (median over timed runs)")
_add("images_per_second", True, "median", "1/s", "throughput (batch size / median batch time)")
_add(
    "peak_memory_mb",
    False,
    "set",
    "MiB",
    "peak additional memory of the timed calls over the level just before them (weights and other memory "
    "already held excluded): torch.cuda max_memory_allocated - memory_allocated on GPU, Linux VmHWM (reset via "
    "/proc/self/clear_refs) - VmRSS on CPU; NaN where unavailable",
)

# ---- image similarity of the anonymized face to its original, and harness outcome rates ----------------------
# (PSNR/SSIM/LPIPS of the *anonymized* image against the original are utility metrics -- how much of the
# input survives, the x axis of the privacy-utility plots -- so "better" means closer to the input.)
_add("psnr", True, "mean", "dB", "utility: PSNR between anonymized and original image (identical images: 100 dB, "
     "PSNR_CAP_DB)")
_add("ssim", True, "mean", "", "utility: SSIM between anonymized and original image: mean over the R, G, B "
     "channels (not luminance) of gaussian-window SSIM (11x11, sigma 1.5, K1 0.01, K2 0.03, population covariance, "
     "5-px border cropped), i.e. skimage structural_similarity(gaussian_weights=True, sigma=1.5, "
     "use_sample_covariance=False, channel_axis=-1, data_range=1)")
_add("lpips_alex", False, "mean", "", "utility: LPIPS (AlexNet) between anonymized and original image")
_add("lpips_vgg", False, "mean", "", "utility: LPIPS (VGG16) between anonymized and original image")
_add(
    "mesh_detected_rate",
    True,
    "rate",
    "fraction",
    "share of faces with a face mesh of the subject on both the original and the anonymized image (pose, shape "
    "and landmark averages cover only those)",
)
_add(
    "recovery_ok_rate",
    True,
    "rate",
    "fraction",
    "share of right-key recoveries whose payload authenticated (keyed methods; fails closed otherwise)",
)
_add(
    "wrongkey_rejected_rate",
    True,
    "rate",
    "fraction",
    "share of wrong-key recoveries that were rejected (authentication failed: no original identity released)",
)
_add(
    "diversity_ssim",
    False,
    "mean",
    "",
    "SSIM between anonymizations of one face under two keys (lower: more diverse)",
)
_add(
    "diversity_lpips_alex",
    True,
    "mean",
    "",
    "LPIPS (AlexNet) between anonymizations of one face under two keys (higher: more diverse)",
)
_add("n_images", None, "count", "", "images evaluated successfully")
_add("n_failed", None, "count", "", "images recorded as failures (load, no face, method error)")
