"""Face oracles on real faces (LFW, CelebA) and on bad inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from g2face_eval import zoo
from g2face_eval.oracles import alignment, detectors, recognizers

DETECTORS = ["yunet", "mtcnn", "dlib_hog"]
SAME = [("Abel_Pacheco", 1, "Abel_Pacheco", 4), ("Akhmed_Zakayev", 1, "Akhmed_Zakayev", 3)]
DIFF = [("Abdel_Madi_Shabneh", 1, "Dean_Barker", 1), ("Abdel_Madi_Shabneh", 1, "Mikhail_Gorbachev", 1)]


def _read(path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return np.ascontiguousarray(bgr[:, :, ::-1])


def lfw(root, name, i):
    return _read(root / "lfw" / "lfw-deepfunneled" / name / f"{name}_{i:04d}.jpg")


def celeba(root):
    d = sorted((root / "celeba_id" / "images").iterdir())[0]
    return _read(sorted(d.iterdir())[0])


@pytest.fixture(scope="module")
def faces(datasets_root):
    return {"lfw": lfw(datasets_root, "Abel_Pacheco", 1), "celeba": celeba(datasets_root)}


def _check_face_geometry(f, shape):
    h, w = shape[:2]
    lm = f.landmarks5
    assert lm.shape == (5, 2) and f.box.shape == (4,)
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # image-left before image-right
    assert lm[:2, 1].max() < lm[2, 1] < lm[3:, 1].min()  # eyes above nose above mouth
    x, y, bw, bh = f.box
    assert x < w / 2 < x + bw and y < h / 2 < y + bh  # the centred face


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("which", ["lfw", "celeba"])
def test_detector_finds_face(faces, name, which):
    img = faces[which]
    found = detectors.get_detector(name).detect(img)
    assert found, f"{name} found no face in the {which} image"
    assert all(a.score >= b.score for a, b in zip(found, found[1:], strict=False))
    _check_face_geometry(found[0], img.shape)


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_bad_inputs(name):
    det = detectors.get_detector(name)
    assert det.detect(np.full((240, 320, 3), 128, np.uint8)) == []
    assert det.detect(np.zeros((8, 8, 3), np.uint8)) == []
    assert det.detect(np.zeros((1, 1, 3), np.uint8)) == []
    with pytest.raises(ValueError):
        det.detect(np.zeros((64, 64), np.uint8))


def _degraded(img: np.ndarray) -> list[np.ndarray]:
    """The kinds of output the harness asks "is there still a face?" of: kept, blurred, pixelated, noised,
    masked, flipped."""
    h, w = img.shape[:2]
    out = [img, cv2.GaussianBlur(img, (0, 0), 4), cv2.GaussianBlur(img, (0, 0), 12), img[:, ::-1]]
    for cells in (8, 16):
        small = cv2.resize(img, (cells, cells), interpolation=cv2.INTER_AREA)
        out.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST))
    noisy = img.astype(np.float32) + np.random.default_rng(0).normal(0, 60, img.shape)
    out.append(np.clip(noisy, 0, 255).astype(np.uint8))
    masked = img.copy()
    masked[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 128
    out.append(masked)
    return [np.ascontiguousarray(x) for x in out]


def test_box_iou():
    assert detectors.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert detectors.box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert detectors.box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert detectors.box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


@pytest.mark.parametrize("name", DETECTORS)
def test_finds_only_the_subjects_face(datasets_root, faces, name):
    """``finds`` is detect() restricted to the subject's place: a bystander's face elsewhere does not count;
    the subject's own face does, on real faces and degraded copies, whatever box convention the detector has."""
    files = sorted((datasets_root / "celebahq256" / "images").glob("*.jpg"))[:4]
    det = detectors.get_detector(name)
    yunet = detectors.get_detector("yunet")
    scene = np.full((300, 560, 3), 100, np.uint8)
    scene[22:278, 8:264] = _read(files[0])
    scene[60:260, 330:530] = cv2.resize(_read(files[1]), (200, 200), interpolation=cv2.INTER_AREA)
    subj, other = sorted(yunet.detect(scene)[:2], key=lambda f: f.box[0])
    assert det.finds(scene, subj.box) and det.finds(scene, other.box)
    x, y, w, h = (int(v) for v in subj.box)
    masked = scene.copy()
    masked[max(0, y - 20):y + h + 20, max(0, x - 20):x + w + 20] = 0
    assert det.detect(masked) and not det.finds(masked, subj.box) and det.finds(masked, other.box)
    for f in files[2:]:
        img = _read(f)
        box = yunet.detect(img)[0].box
        for x in _degraded(img):
            want = any(detectors.box_iou(d.box, box) >= detectors.SUBJECT_MIN_IOU for d in det.detect(x))
            assert det.finds(x, box) == want


def _scaled_faces(datasets_root, n: int = 3) -> list[np.ndarray]:
    """Faces from 40 to 250 px wide on a 256 px canvas (dlib finds them on many pyramid levels)."""
    files = sorted((datasets_root / "celebahq256" / "images").glob("*.jpg"))[:n]
    out = []
    for f in files:
        img = _read(f)
        for side in (64, 80, 96, 112, 136, 160, 192, 224, 256):
            canvas = np.full((256, 256, 3), 110, np.uint8)
            canvas[: side, 256 - side :] = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
            out.append(canvas)
    return out


def _edge_faces(datasets_root) -> list[np.ndarray]:
    """Faces whose dlib box crosses the image's top-left corner, top edge or left edge (the image cropped a few
    pixels inside the box, edge-padded back to 256 px): a box corner outside the image makes the box one HOG cell
    larger on that side."""
    det = detectors.DlibHOGDetector()
    out = []
    for f in sorted((datasets_root / "celebahq256" / "images").glob("*.jpg"))[:6]:
        img = _read(f)
        found = det.boxes(img)
        if not found:
            continue
        left, top = int(found[0][0]), int(found[0][1])
        for cut in (4, 8, 14):
            for dy, dx in ((top + cut, left + cut), (top + cut, 0), (0, left + cut)):
                dy, dx = max(dy, 0), max(dx, 0)
                out.append(np.ascontiguousarray(np.pad(img[dy:, dx:], ((0, dy), (0, dx), (0, 0)), mode="edge")))
    return out


def test_dlib_exact_negative_holds_for_the_largest_subject_a_box_matches(datasets_root):
    """The adversarial case of the per-level box bound: for every box dlib finds (faces at many scales, and across
    the image's edges and corner, where boxes are one HOG cell larger), a subject box as large as still matches it
    (IoU 0.305, anchored at the same corner) -- the subject that pushes the first scanned level highest -- is found
    by ``finds(likely=False)`` too. A bound below any box's size fails this."""
    det = detectors.DlibHOGDetector()
    imgs = _scaled_faces(datasets_root) + _edge_faces(datasets_root)
    checked = edge = 0
    for img in imgs:
        for b in det.boxes(img):
            x, y, w, h = (float(v) for v in b)
            side = np.sqrt(w * h / 0.305)  # a square subject containing the box, IoU 0.305
            for subj in ([x, y, w / np.sqrt(0.305), h / np.sqrt(0.305)], [x, y, side, side],
                         [x, y, w * np.sqrt(0.305), h * np.sqrt(0.305)]):  # larger than the box, and smaller
                subj = np.array(subj, np.float32)
                assert detectors.box_iou(b, subj) >= detectors.SUBJECT_MIN_IOU
                assert det.finds(img, subj, likely=False), (b, subj)
            checked += 1
            edge += x < 0 and y < 0
    assert checked >= 30 and edge >= 5, (checked, edge)  # boxes out at the corner: larger on both sides


class _RunSpy:
    """Records the image shapes dlib's detector is run on."""

    def __init__(self, det):
        self.det, self.shapes = det, []

    def run(self, img, upsample, adjust):
        self.shapes.append((img.shape[:2], upsample))
        return self.det.run(img, upsample, adjust)


def test_dlib_exact_negative_is_the_full_scans_decision(datasets_root, faces):
    """``finds(likely=False)`` (dlib run on a coarse level of its own pyramid first) gives exactly the full scan's
    decision, on real faces, degraded copies, faces at many scales, other image sizes and small and large subject
    boxes; the shortcut decides most negatives alone; and the rebuilt level is dlib's own (its detections carry
    the float64 scores the full scan reports)."""
    import dlib

    files = sorted((datasets_root / "celebahq256" / "images").glob("*.jpg"))[:6]
    yunet = detectors.get_detector("yunet")
    cases = []
    for f in files:
        img = _read(f)
        box = yunet.detect(img)[0].box
        cases += [(x, box) for x in _degraded(img)]
        cases.append((img, np.array([box[0] + 40, box[1] + 50, 60, 70], np.float32)))  # a small subject box
    big = np.full((480, 640, 3), 90, np.uint8)
    big[100:356, 200:456] = _read(files[0])
    cases += [(big, yunet.detect(big)[0].box), (faces["lfw"], yunet.detect(faces["lfw"])[0].box)]
    cases += [(x, np.array([60, 40, 150, 190], np.float32)) for x in _scaled_faces(datasets_root, 2)]
    det = detectors.DlibHOGDetector()
    want = [any(detectors.box_iou(b, box) >= detectors.SUBJECT_MIN_IOU for b in det.boxes(x)) for x, box in cases]
    assert 0.2 < np.mean(want) < 0.8, want  # both decisions are exercised
    raw = det._det
    spy = det._det = _RunSpy(raw)
    got = []
    for x, box in cases:
        spy.shapes.clear()
        got.append(det.finds(x, box, likely=False))
        if spy.shapes and spy.shapes[0][1] == 0:  # the shortcut ran: on a coarser level than the full scan's first
            assert spy.shapes[0][0][0] < det._pyramid(*x.shape[:2])[1][0][0]
            if len(spy.shapes) == 1:
                assert not got[-1]  # decided by the shortcut alone: only ever a negative
    assert got == want
    assert [det.finds(x, box) for x, box in cases] == want  # likely=True: the full scan
    det._det = raw
    shortcut = same = 0
    for (x, box), w in zip(cases, want, strict=True):
        k = det._first_reachable_level(*x.shape[:2], box, detectors.SUBJECT_MIN_IOU)
        if not k:
            continue
        ups, levels = det._pyramid(*x.shape[:2])
        level = x
        for h, wd in ups + levels[1 : k + 1]:
            level = dlib.resize_image(level, h, wd)
        scores = raw.run(level, 0, 0.0)[1]
        shortcut += not w and not len(scores)
        if len(scores):  # the tail's raw detections are among the full scan's: the best survives its suppression
            full = raw.run(x, 1, 0.0)[1]
            assert len(full) and max(scores) <= max(full)
            same += max(scores) == max(full)  # the same float64 score: the same level image and features
    assert same >= 5, same
    assert shortcut >= 0.5 * (len(want) - sum(want)), (shortcut, len(want) - sum(want))
    assert det._pyramid(256, 256)[0] == [(513, 514)] and det._first_reachable_level(256, 256, box, 0.3) >= 4


def test_detectors_agree_on_landmarks(faces):
    img = faces["lfw"]
    ref = detectors.get_detector("yunet").detect(img)[0].landmarks5
    eye = np.linalg.norm(ref[1] - ref[0])
    for name in ("mtcnn", "dlib_hog"):
        lm = detectors.get_detector(name).detect(img)[0].landmarks5
        assert np.abs(lm[:2] - ref[:2]).max() < 0.25 * eye, name  # eye centres agree


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    a, s = np.deg2rad(17), 1.7
    m = np.array([[s * np.cos(a), -s * np.sin(a), 5.0], [s * np.sin(a), s * np.cos(a), -3.0]])
    dst = alignment.apply_transform(m, src)
    assert np.allclose(alignment.similarity_transform(src, dst), m, atol=1e-9)
    with pytest.raises(ValueError):
        alignment.similarity_transform(np.zeros((5, 2)), dst)


def test_align_arcface_puts_landmarks_on_template(faces):
    # exact case: template moved by a similarity plus 0.5 px noise comes back within 2 px
    rng = np.random.default_rng(1)
    a, s = np.deg2rad(-23), 2.3
    m0 = np.array([[s * np.cos(a), -s * np.sin(a), 40.0], [s * np.sin(a), s * np.cos(a), 70.0]])
    pts = alignment.apply_transform(m0, alignment.ARCFACE_TEMPLATE_112) + rng.uniform(-0.5, 0.5, (5, 2))
    back = alignment.apply_transform(alignment.arcface_matrix(pts), pts)
    assert np.linalg.norm(back - alignment.ARCFACE_TEMPLATE_112, axis=1).max() < 2.0
    # real frontal face: detected landmarks land on the template (faces differ from it by a few px)
    img = faces["celeba"]
    f = detectors.get_detector("yunet").detect(img)[0]
    m = alignment.arcface_matrix(f.landmarks5)
    mapped = alignment.apply_transform(m, f.landmarks5)
    err = np.linalg.norm(mapped - alignment.ARCFACE_TEMPLATE_112, axis=1)
    assert err.mean() < 3.0 and err[:2].max() < 3.0
    # re-detecting on the aligned crop (upscaled x2, padded) finds the eyes on the template
    crop = alignment.align_arcface(img, f.landmarks5)
    pad = cv2.copyMakeBorder(cv2.resize(crop, (224, 224)), 60, 60, 60, 60, cv2.BORDER_CONSTANT, value=0)
    g = detectors.get_detector("yunet").detect(pad)
    assert g and np.abs((g[0].landmarks5[:2] - 60) / 2 - alignment.ARCFACE_TEMPLATE_112[:2]).max() < 3.0
    crop = alignment.align_arcface(img, f.landmarks5)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    # same warp as OpenCV SFace's alignCrop (BGR in, BGR out)
    sf = cv2.FaceRecognizerSF.create(str(zoo.path("sface")), "")
    row = np.concatenate([f.box, f.landmarks5.ravel(), [f.score]]).astype(np.float32)[None]
    ref = sf.alignCrop(np.ascontiguousarray(img[:, :, ::-1]), row)[:, :, ::-1]
    assert np.abs(ref.astype(int) - crop).mean() < 0.5


def test_ffhq_crop(faces):
    img = faces["lfw"]
    f = detectors.get_detector("yunet").detect(img)[0]
    for size in (64, 256):
        crop = alignment.ffhq_crop(img, f.landmarks5, size)
        assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    big = alignment.ffhq_crop(img, f.landmarks5, 256)
    g = detectors.get_detector("yunet").detect(big)
    assert g, "no face in the FFHQ crop"
    eyes = g[0].landmarks5[:2].mean(0) / 256
    assert abs(eyes[0] - 0.5) < 0.05 and 0.35 < eyes[1] < 0.55  # FFHQ: eyes centred, just above the middle
    quad = alignment.ffhq_quad(f.landmarks5)
    side = np.linalg.norm(quad[3] - quad[0])
    eye_dist = np.linalg.norm(f.landmarks5[1] - f.landmarks5[0])
    assert 0.2 < eye_dist / side < 0.3


def test_sface_recognizer_equals_opencv(datasets_root):
    """The 'sface' recognizer runs SFace's ONNX graph batched in torch (batch norms folded): the same features
    as OpenCV's FaceRecognizerSF.feature on real aligned faces."""
    rec, det = recognizers.get_recognizer("sface"), detectors.get_detector("yunet")
    ref = cv2.FaceRecognizerSF.create(str(zoo.path("sface")), "")
    people = sorted(p for p in (datasets_root / "lfw" / "lfw-deepfunneled").iterdir() if p.is_dir())[:10]
    crops = []
    for person in people:
        img = _read(sorted(person.iterdir())[0])
        crops.append(rec.align(img, det.detect(img)[0]))
    want = np.stack([ref.feature(np.ascontiguousarray(c[:, :, ::-1])).reshape(-1) for c in crops])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = rec.embed_aligned(crops)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert (got @ got.T)[np.triu_indices(10, 1)].max() < 0.9  # ten different people


def test_sface_frozen_cpu_graph_equals_eager(datasets_root):
    """On CPU the SFace recognizer runs a frozen, oneDNN-optimised TorchScript copy of its graph (traced once, on
    whatever batch comes first): the same embeddings as the eager network at other batch sizes too."""
    import torch

    rec, det = recognizers.get_recognizer("sface"), detectors.get_detector("yunet")
    people = sorted(p for p in (datasets_root / "lfw" / "lfw-deepfunneled").iterdir() if p.is_dir())[10:22]
    crops = []
    for person in people:
        img = _read(sorted(person.iterdir())[0])
        crops.append(rec.align(img, det.detect(img)[0]))
    got = np.concatenate([rec.embed_aligned(crops[:5]), rec.embed_aligned(crops[5:6]), rec.embed_aligned(crops[6:])])
    assert isinstance(rec._run.frozen, torch.jit.ScriptModule)  # the frozen graph did the work
    with torch.inference_mode():
        x = rec._prepare(torch.from_numpy(np.stack(crops)))
        want = recognizers._l2(rec._net(x).numpy())
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", recognizers.DEFAULT_RECOGNIZERS)
def test_recognizer_separates_same_and_different(datasets_root, name):
    rec = recognizers.get_recognizer(name)
    thr = rec.threshold
    assert thr is not None and -1 < thr < 1, "oracles/thresholds.json has no threshold"
    det = detectors.get_detector("yunet")

    def emb(n, i):
        img = lfw(datasets_root, n, i)
        return rec.embed([img], [det.detect(img)[0]])[0]

    for n1, i1, n2, i2 in SAME:
        a, b = emb(n1, i1), emb(n2, i2)
        assert rec.similarity(a, b)[0] > thr, (n1, i1, n2, i2)
    for n1, i1, n2, i2 in DIFF:
        assert rec.similarity(emb(n1, i1), emb(n2, i2))[0] <= thr, (n1, i1, n2, i2)
    e = emb(*SAME[0][:2])
    assert e.shape == (rec.dim,) and e.dtype == np.float32 and abs(np.linalg.norm(e) - 1) < 1e-4
    assert rec.embed([], []).shape == (0, rec.dim)


def test_available_recognizers():
    avail = recognizers.available_recognizers()
    assert set(recognizers.DEFAULT_RECOGNIZERS) <= set(avail)


def test_dlib_landmark_mapping():
    # eye corners (image-right eye: 0,1; image-left eye: 2,3) and subnasale
    pts = np.array([[153, 114], [137, 113], [98, 113], [112, 113], [119, 157]], float)
    lm = detectors.dlib_shape_to_arcface5(pts)
    assert np.allclose(lm[0], [105, 113]) and np.allclose(lm[1], [145, 113.5])
    assert lm[2, 1] < 157 < lm[3, 1] and lm[3, 0] < lm[4, 0]


# ---------------------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mesh():
    from g2face_eval.oracles import geometry

    return geometry.get_face_mesh()


def test_mesh_landmarks_and_flip(faces, mesh):
    img = faces["lfw"]  # Abel Pacheco 0001 looks clearly to one side (|yaw| ~ 20 deg)
    r = mesh.analyze(img)
    assert r is not None and r.landmarks.shape == (468, 3)
    h, w = img.shape[:2]
    assert (r.landmarks[:, 0] > 0).all() and (r.landmarks[:, 0] < w).all()
    nose = detectors.get_detector("yunet").detect(img)[0].landmarks5[2]
    assert np.linalg.norm(r.landmarks[1, :2] - nose) < 12  # MediaPipe 1 = nose tip
    assert abs(r.yaw) > 8 and abs(r.pitch) < 30 and abs(r.roll) < 20
    assert r.shape_offsets.shape == (468 * 3,) and np.isfinite(r.shape_offsets).all()
    f = mesh.analyze(np.ascontiguousarray(img[:, ::-1]))
    assert f is not None
    assert np.sign(f.yaw) == -np.sign(r.yaw) and abs(f.yaw + r.yaw) < 6
    assert abs(f.roll + r.roll) < 4 and abs(f.pitch - r.pitch) < 5


def test_mesh_reuses_given_detections(faces, mesh):
    """Given the detections of its own detector the mesh is the one it finds by itself; an empty list means its
    detector found nothing (whole-image fallback)."""
    assert mesh.detector_name == "yunet"
    img = faces["lfw"]
    found = detectors.get_detector("yunet").detect(img)
    own, given = mesh.analyze(img), mesh.analyze(img, found)
    assert own is not None and given is not None
    np.testing.assert_array_equal(given.landmarks, own.landmarks)
    assert (given.yaw, given.pitch, given.roll) == (own.yaw, own.pitch, own.roll)
    whole = mesh.analyze(img, [])  # no detection: the mesh runs on the whole image
    assert whole is not None and not np.array_equal(whole.landmarks, own.landmarks)


def test_mesh_of_the_subject_only(datasets_root, mesh):
    """Told whose face to take, the mesh takes that face or none: no whole-image fallback onto another face."""
    files = sorted((datasets_root / "celebahq256" / "images").glob("*.jpg"))[:2]
    scene = np.full((300, 560, 3), 100, np.uint8)
    scene[22:278, 8:264] = _read(files[0])
    scene[60:260, 330:530] = cv2.resize(_read(files[1]), (200, 200), interpolation=cv2.INTER_AREA)
    subj, other = sorted(detectors.get_detector("yunet").detect(scene)[:2], key=lambda f: f.box[0])
    for face in (subj, other):
        r = mesh.analyze(scene, subject=face)
        x, y, w, h = face.box
        assert r is not None and x < r.landmarks[1, 0] < x + w and y < r.landmarks[1, 1] < y + h  # nose inside
    x, y, w, h = (int(v) for v in subj.box)
    masked = scene.copy()
    masked[max(0, y - 20):y + h + 20, max(0, x - 20):x + w + 20] = 0
    assert mesh.analyze(masked) is not None  # on its own, the mesh finds the other face
    assert mesh.analyze(masked, subject=subj) is None


def test_mesh_on_small_face_in_large_image(faces, mesh):
    img = cv2.resize(faces["celeba"], (60, 73))
    canvas = np.full((480, 640, 3), 90, np.uint8)
    canvas[200:273, 300:360] = img
    r = mesh.analyze(canvas)
    assert r is not None
    assert 300 <= r.landmarks[1, 0] <= 360 and 200 <= r.landmarks[1, 1] <= 273


def test_mesh_bad_inputs(mesh):
    assert mesh.analyze(np.full((200, 200, 3), 128, np.uint8)) is None
    assert mesh.analyze(np.zeros((10, 10, 3), np.uint8)) is None


def test_mesh_shape_offsets_follow_the_open_mouth_of_real_faces(datasets_root, mesh):
    """``mesh_shape_distance`` against an independent reference: the human face-parsing masks of held-out CelebA-HQ
    faces (class 10, the inner mouth; its area says how far the mouth is open). Faces whose pose-normalised mesh
    offsets are far apart differ in mouth opening, and the nearest face by those offsets agrees on "mouth open" far
    above chance; the head pose of the same meshes carries none of it (the control). Measured on these 125 faces:
    Spearman 0.48 and nearest-neighbour agreement 0.80 for the offsets, 0.04 and 0.54 for the pose."""
    from scipy.stats import spearmanr

    from g2face_eval.data.io import load_image, load_mask

    root = datasets_root / "celebahq256"
    ids = sorted(p.stem for p in (root / "images").glob("*.jpg"))[-500:][::4]  # the held-out split, spread
    yunet = detectors.get_detector("yunet")
    offsets, poses, mouth = [], [], []
    for i in ids:
        img = load_image(root / "images" / f"{i}.jpg")
        found = yunet.detect(img)
        r = mesh.analyze(img, subject=found[0]) if found else None
        if r is not None:
            offsets.append(r.shape_offsets)
            poses.append((r.yaw, r.pitch, r.roll))
            mouth.append(float((load_mask(root / "masks" / f"{i}.png") == 10).mean()))
    assert len(offsets) >= 110
    mouth = np.array(mouth)
    iu = np.triu_indices(len(mouth), 1)
    mouth_gap = np.abs(mouth[:, None] - mouth[None])[iu]
    is_open = mouth > 0.002
    assert 0.25 < is_open.mean() < 0.75

    def scores(v):
        v = np.asarray(v, np.float64)
        d = np.linalg.norm(v[:, None] - v[None], axis=-1)
        rho = spearmanr(d[iu], mouth_gap)[0]
        np.fill_diagonal(d, np.inf)
        return rho, (is_open[d.argmin(1)] == is_open).mean()

    (rho_s, nn_s), (rho_p, nn_p) = scores(offsets), scores(poses)
    assert rho_s > 0.3 and nn_s > 0.72, (rho_s, nn_s)
    assert abs(rho_p) < 0.15 and nn_p < 0.65, (rho_p, nn_p)
