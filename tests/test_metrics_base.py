import pytest

from g2face_eval.metrics import base
from g2face_eval.metrics.base import METRICS, MetricSpec, metric_name, per_recognizer, spec


def test_all_brief_names_registered_with_direction():
    names = [
        "deid_success_rate_sface",
        "deid_mean_similarity_dlib",
        "id_rank1",
        "id_rank5",
        "recovery_psnr",
        "recovery_ssim",
        "recovery_lpips_alex",
        "recovered_id_success_sface",
        "payload_ber",
        "wrongkey_similarity_sface",
        "diversity_similarity_sface",
        "fid",
        "kid",
        "fd_effnet_lite0",
        "kid_effnet_lite0",
        "pose_error_deg",
        "mesh_shape_distance",
        "landmark_nme",
        "detection_rate_yunet",
        "latency_ms_per_image",
        "images_per_second",
        "peak_memory_mb",
    ]
    for n in names:
        s = METRICS.get(n)
        assert s.name == n and s.aggregation in base.AGGREGATIONS
    assert METRICS.get("recovery_psnr").higher_is_better is True
    assert METRICS.get("fid").higher_is_better is False and METRICS.get("fid").aggregation == "set"
    assert METRICS.get("deid_success_rate_sface").higher_is_better is True
    assert METRICS.get("deid_success_rate_sface").aggregation == "rate"


def test_family_helper_registers_new_members():
    n = per_recognizer("deid_success_rate", "myrec")
    assert n == "deid_success_rate_myrec" and METRICS.get(n).aggregation == "rate"
    assert metric_name("deid_success_rate", "myrec") == n  # idempotent
    assert spec("detection_rate_newdet").higher_is_better is True  # resolved through the family
    # longest family prefix wins: id_rank1_original_<rec> is not an id_rank1 member
    assert spec("id_rank1_sface").higher_is_better is False
    assert spec("id_rank1_original_newrec").higher_is_better is None
    assert spec("id_rank5_original_sface").name == "id_rank5_original_sface"
    with pytest.raises(KeyError):
        spec("no_such_metric")
    with pytest.raises(ValueError):
        metric_name("deid_success_rate", "bad name")
    with pytest.raises(ValueError):
        MetricSpec("x", True, "sum")


def test_every_harness_column_is_a_registered_metric():
    """The harness aggregates only registered metrics (direction + aggregation declared once)."""
    from g2face_eval.harness.evaluate import _spec
    from g2face_eval.metrics.base import METRICS

    for name, hib, agg in [("ssim", True, "mean"), ("recovery_ok_rate", True, "rate"),
                           ("wrongkey_rejected_rate", True, "rate"), ("mesh_detected_rate", True, "rate"),
                           ("diversity_ssim", False, "mean"), ("id_rank1_original_sface", None, "rate"),
                           ("n_failed", None, "count")]:
        sp = _spec(name)
        assert (sp.higher_is_better, sp.aggregation) == (hib, agg), name
        assert name in METRICS.names()
    with pytest.raises(Exception, match="not_a_metric"):
        _spec("not_a_metric")
