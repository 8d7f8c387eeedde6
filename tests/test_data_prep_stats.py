"""stats.npz against a direct numpy computation over the same 256x256 training images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_prep.image import UnreadableImage, decode_256
from data_prep.stats import STATS_KEYS, Sums, finalize, load_stats, pca
from data_prep_helpers import build, fixture, read_split


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    desc = fixture(root / "src", "folder")
    build(root / "src", root / "out", workers=2, shard_size=5)
    return root / "src", root / "out", desc


def _source_pixels(src: Path, desc: dict) -> np.ndarray:
    imgs = []
    for key, wnid in desc["labels"]["train"].items():
        try:
            imgs.append(decode_256((src / "train" / wnid / f"{key}.JPEG").read_bytes()).pixels)
        except UnreadableImage:
            assert key in desc["unreadable"]["train"]
    return np.stack(imgs)


def test_stats_match_numpy_on_the_decoded_images(case):
    src, out, desc = case
    px = _source_pixels(src, desc)
    s = load_stats(out / "stats.npz")
    assert set(STATS_KEYS) <= set(s)
    assert int(s["count"]) == len(px) == desc["expected_count"]["train"]
    assert s["mean_image"].shape == (256, 256, 3) and s["mean_image"].dtype == np.float32
    np.testing.assert_allclose(s["mean_image"], px.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-4)
    flat = px.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(s["rgb_mean"], flat.mean(axis=0), rtol=1e-12)
    cov = np.cov(flat.T, bias=True)
    np.testing.assert_allclose(s["rgb_cov"], cov, rtol=1e-9)
    val, vec = np.linalg.eigh(cov)
    np.testing.assert_allclose(s["eigval"], val[::-1], rtol=1e-9)
    assert np.all(np.diff(s["eigval"]) <= 0)
    for i in range(3):  # same eigenvectors up to sign; columns are unit and orthogonal
        assert abs(abs(float(s["eigvec"][:, i] @ vec[:, 2 - i])) - 1) < 1e-9
    np.testing.assert_allclose(s["eigvec"].T @ s["eigvec"], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(s["rgb_cov"] @ s["eigvec"], s["eigvec"] * s["eigval"], atol=1e-6)


def test_stats_are_of_the_pixels_before_jpeg_reencoding(case):
    """The shard JPEGs decode to nearly, not exactly, the pixels the stats were taken over."""
    _, out, _ = case
    s = load_stats(out / "stats.npz")
    decoded = np.stack([img for _, img, *_ in read_split(out, "train")]).astype(np.float64)
    diff = np.abs(decoded.mean(axis=0) - s["mean_image"])
    assert diff.mean() < 1.0 and diff.max() < 16


def test_sums_are_exact_and_order_free():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 256, 256, 3), dtype=np.uint8)
    imgs[0] = 255  # the worst case for the products
    a, b, whole = Sums.zeros(), Sums.zeros(), Sums.zeros()
    for i, im in enumerate(imgs):
        (a if i % 2 else b).add(im)
        whole.add(im)
    b += a
    assert b.count == whole.count == 7
    np.testing.assert_array_equal(b.pixel_sum, whole.pixel_sum)
    np.testing.assert_array_equal(b.outer_sum, whole.outer_sum)
    x = imgs.reshape(-1, 3).astype(object)  # Python integers: the exact reference
    exact = [[int(sum(x[:, i] * x[:, j])) for j in range(3)] for i in range(3)]
    assert whole.outer_sum.tolist() == exact
    f = finalize(whole)
    assert f["count"] == 7


def test_sums_survive_a_save_and_load(tmp_path):
    s = Sums.zeros()
    s.add(np.full((256, 256, 3), 200, np.uint8))
    s.save(tmp_path / "p.npz")
    t = Sums.load(tmp_path / "p.npz")
    assert t.count == 1 and (t.pixel_sum == 200).all() and t.outer_sum[0, 0] == 65536 * 200 * 200


def test_pca_order_and_signs_are_deterministic():
    cov = np.array([[3.0, 1.0, 0.5], [1.0, 2.0, 0.2], [0.5, 0.2, 1.0]])
    val, vec = pca(cov)
    assert np.all(np.diff(val) < 0)
    for i in range(3):
        assert vec[np.argmax(np.abs(vec[:, i])), i] > 0
    val2, vec2 = pca(cov.copy())
    np.testing.assert_array_equal(vec, vec2)
