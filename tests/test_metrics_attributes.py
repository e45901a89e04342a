import numpy as np
import pytest

from g2face_eval.metrics import attributes as A


def test_pose_error_hand_values_and_wrap():
    a = np.array([[10.0, 0.0, 0.0], [179.0, -20.0, 5.0]])
    b = np.array([[13.0, -3.0, 3.0], [-179.0, -20.0, -1.0]])
    np.testing.assert_allclose(A.pose_error(a, b), [3.0, (2.0 + 0.0 + 6.0) / 3])


def test_geodesic():
    def rz(t):
        c, s = np.cos(np.radians(t)), np.sin(np.radians(t))
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])

    np.testing.assert_allclose(
        A.geodesic_error(np.stack([rz(10), rz(0)]), np.stack([rz(40), rz(0)])), [30, 0], atol=1e-6
    )


def test_mesh_shape_distance():
    np.testing.assert_allclose(A.mesh_shape_distance([[0, 0], [1, 1]], [[3, 4], [1, 1]]), [5.0, 0.0])


def test_landmark_nme_hand_value():
    gt = np.zeros((1, 468, 3))
    gt[0, 33, :2] = (100, 120)
    gt[0, 263, :2] = (180, 120)  # inter-ocular 80 px
    pred = gt.copy()
    pred[0, :, 0] += 4.0  # every point off by 4 px in x; z differences are ignored
    pred[0, :, 2] += 50.0
    assert A.landmark_nme(pred, gt)[0] == pytest.approx(4.0 / 80.0)
    assert A.MESH_OUTER_EYE_CORNERS == (33, 263)


def test_detection_rate():
    np.testing.assert_array_equal(A.detection_rate([[], ["f"], 0, 2, True]), [False, True, False, True, True])
