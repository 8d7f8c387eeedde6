"""CIFAR-10's python batches (repro.cifar.data): read from files written here with pickle
alone, refused with an error naming the file when missing or damaged, generated in the
same format and marked as generated, and fed as cuda-convnet's cropped provider fed them:
its training order, crops, mirrors and multiview tests."""
import hashlib
import pickle

import numpy as np
import pytest
import torch

from repro.cifar import data as cifar_data, experiments as cifar
from repro.cifar.data import CifarDataError, DeviceImages, read_batch


def official_batch(path, images, labels, numpy1=False):
    """A batch as the official files hold it, written here with pickle alone. numpy1: the
    array's class path as numpy 1 (and so the Python 2 originals) wrote it."""
    doc = {"batch_label": "training batch 1 of 5", "labels": list(map(int, labels)),
           "data": images.reshape(len(images), -1), "filenames": [f"{i}.png" for i in labels]}
    raw = pickle.dumps(doc, protocol=2)
    if numpy1:
        assert b"numpy._core.multiarray" in raw
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(raw)


@pytest.mark.parametrize("numpy1", [False, True])
def test_reader_reads_batches_written_in_the_test(tmp_path, numpy1):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    official_batch(tmp_path / "b", images, [3, 1, 4, 1, 5, 9, 2], numpy1)
    x, y = read_batch(tmp_path / "b")
    assert x.shape == (7, 3, 32, 32) and x.dtype == np.uint8
    assert y.tolist() == [3, 1, 4, 1, 5, 9, 2] and y.dtype == np.int64
    row = images.reshape(7, 3072)[5]           # R 1024, G 1024, B 1024, rows of 32
    assert x[5, 1, 2, 7] == row[1024 + 2 * 32 + 7] and x[5, 2, 31, 0] == row[2048 + 31 * 32]
    assert np.array_equal(x, images)


def test_load_concatenates_the_five_batches_in_order(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate([*cifar_data.TRAIN_FILES, "test_batch"]):
        official_batch(folder / name, np.full((2, 3, 32, 32), i, np.uint8), [i, i])
    data = cifar_data.load(tmp_path)
    assert data.train_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert data.train_images[:, 0, 0, 0].tolist() == data.train_labels.tolist()
    assert data.test_labels.tolist() == [5, 5] and data.folder == folder
    assert data.train_file_counts == (2, 2, 2, 2, 2)
    assert cifar_data.load(folder).train_images.shape == (10, 3, 32, 32)   # ROOT may be the folder


def test_missing_files_name_the_root_and_what_is_expected(tmp_path, capsys):
    with pytest.raises(CifarDataError) as e:
        cifar_data.load(tmp_path)
    message = str(e.value)
    for part in (str(tmp_path), "data_batch_1", "data_batch_5", "test_batch", "--download"):
        assert part in message
    assert cifar.main(["lrn", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: no CIFAR-10 python batches under")


class Foreign:
    pass


def damage(kind, path):
    images, labels = np.zeros((4, 3, 32, 32), np.uint8), [0, 1, 2, 3]
    official_batch(path, images, labels)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "not a dict":
        path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    elif kind == "foreign class":
        path.write_bytes(pickle.dumps({"data": Foreign()}, protocol=2))
    elif kind == "wrong shape":
        path.write_bytes(pickle.dumps({"data": np.zeros((4, 1000), np.uint8), "labels": labels}))
    elif kind == "labels out of range":
        path.write_bytes(pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 10]}))
    elif kind == "labels missing":
        path.write_bytes(pickle.dumps({"data": np.zeros((4, 3072), np.uint8)}))


@pytest.mark.parametrize("kind, says", [
    ("truncated", "not a readable CIFAR-10 python batch"),
    ("not a dict", "it holds a list"),
    ("foreign class", "test_cifar_data.Foreign, which a CIFAR-10 batch does not"),
    ("wrong shape", r"'data' is \(4, 1000\) uint8, expected \(N, 3072\) uint8"),
    ("labels out of range", r"labels outside 0..9 \(min 0, max 10\)"),
    ("labels missing", "no 'labels' entry"),
])
def test_a_damaged_batch_gets_a_clear_error(tmp_path, kind, says):
    cifar_data.generate(tmp_path, 10, 5)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    damage(kind, path)
    with pytest.raises(CifarDataError, match=says) as e:
        cifar_data.load(tmp_path)
    assert str(e.value).startswith(f"{path}:")


def test_generated_set_is_the_python_batches_format(tmp_path):
    folder = cifar_data.generate(tmp_path, 23, 6, seed=1)
    sizes = [len(read_batch(folder / n)[1]) for n in cifar_data.TRAIN_FILES]
    assert sizes == [5, 5, 5, 4, 4] and len(read_batch(folder / "test_batch")[1]) == 6
    doc = pickle.loads((folder / "data_batch_2").read_bytes(), encoding="latin1")
    assert set(doc) == {"batch_label", "labels", "data", "filenames"}
    assert doc["data"].dtype == np.uint8 and doc["data"].shape == (5, 3072)
    meta = pickle.loads((folder / "batches.meta").read_bytes(), encoding="latin1")
    assert meta["label_names"][3] == "cat"
    with pytest.raises(CifarDataError, match="is not empty"):
        cifar_data.generate(tmp_path, 10, 5)
    cifar_data.generate(tmp_path / "few", 3, 2)             # batches 4 and 5 hold no image
    assert cifar_data.load(tmp_path / "few").train_labels.tolist() == \
        [y for n in cifar_data.TRAIN_FILES[:3] for y in read_batch(tmp_path / "few" / "cifar-10-batches-py" / n)[1]]


def test_a_failed_download_says_so(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(CifarDataError, match=r"could not download CIFAR-10 from https://.*Network is unreachable"):
        cifar_data.download(tmp_path)
    cifar_data.generate(tmp_path, 10, 5)
    cifar_data.download(tmp_path)         # the batches are there: nothing fetched (nor overwritten)


def test_training_crops_and_mirrors_like_the_cropped_provider():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)
    mean = torch.rand(3, 32, 32) * 255
    feed = DeviceImages(images, np.arange(40) % 10, mean, 4, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    seen, flips = set(), 0
    for _ in range(10):
        x, y = feed.train_batch(torch.arange(40), g)
        assert x.shape == (40, 3, 24, 24) and y.tolist() == (np.arange(40) % 10).tolist()
        for i in range(40):
            patch = (x[i] + mean[:, 4:28, 4:28]).round().numpy()     # the mean's centre crop
            found = [(oy, ox, fl) for oy in range(9) for ox in range(9) for fl in (0, 1)
                     if np.array_equal(patch, (images[i, :, oy:oy + 24, ox:ox + 24][..., ::-1] if fl
                                               else images[i, :, oy:oy + 24, ox:ox + 24]))]
            assert found
            seen.add(found[0][:2])
            flips += found[0][2]
    assert len(seen) > 60 and 120 < flips < 280


def test_multiview_tests_are_cuda_convnets():
    """The 11% result's 10 views (corners and centre, then the same mirrored) and the 13%
    result's 9 (a 3x3 grid, no mirrors), each a crop minus the mean image's centre crop."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    mean = torch.rand(3, 32, 32) * 255
    centre_mean = mean[:, 4:28, 4:28].numpy()
    corners = DeviceImages(images, np.arange(3), mean, 4, torch.device("cpu"))
    views = corners.views(torch.arange(3), multiview=True)
    assert len(views) == 10
    for i, (y, x) in enumerate([(0, 0), (0, 8), (4, 4), (8, 0), (8, 8)]):
        crop = images[:, :, y:y + 24, x:x + 24].astype(np.float32)
        np.testing.assert_allclose(views[i].numpy(), crop - centre_mean, rtol=0, atol=1e-4)
        np.testing.assert_allclose(views[5 + i].numpy(), crop[..., ::-1] - centre_mean, rtol=0, atol=1e-4)
    torch.testing.assert_close(views[2], corners.views(torch.arange(3), multiview=False)[0])
    grid = DeviceImages(images, np.arange(3), mean, 4, torch.device("cpu"), test_views="grid")
    views = grid.views(torch.arange(2), multiview=True)
    assert len(views) == 9
    torch.testing.assert_close(views[4], grid.views(torch.arange(2), multiview=False)[0])
    torch.testing.assert_close(views[2] + mean[:, 4:28, 4:28],
                               torch.from_numpy(images[:2, :, 0:24, 8:32]).float())
    whole = DeviceImages(images, np.arange(3), mean, 0, torch.device("cpu"))
    assert len(whole.views(torch.arange(3), multiview=True)) == 1          # no crops, one view
    with pytest.raises(ValueError, match="test_views must be one of"):
        DeviceImages(images, np.arange(3), mean, 4, torch.device("cpu"), test_views="ten")


def test_training_order_is_the_batch_files_in_turn():
    """convnet.py trains on data_batch_1, then 2, ..., each file cut into minibatches in
    file order; a minibatch never spans two files (10,000 = 78 x 128 + 16)."""
    ranges = cifar_data.file_minibatches((10000,) * 5, 128)
    assert len(ranges) == 5 * 79
    assert ranges[:2] == [(0, 128), (128, 256)] and ranges[77:80] == [(9856, 9984), (9984, 10000), (10000, 10128)]
    assert ranges[-1] == (49984, 50000)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))          # in order, no gaps
    assert cifar_data.file_minibatches((5, 0, 3), 2) == [(0, 2), (2, 4), (4, 5), (5, 7), (7, 8)]


def test_provenance_says_generated_or_real_with_checksums(tmp_path):
    folder = cifar_data.generate(tmp_path / "gen", 10, 5, seed=4)
    record = cifar_data.provenance(tmp_path / "gen")
    assert record["data"] == "generated" and "seed=4" in record["generated_by"]
    assert sorted(record["files"]) == sorted([*cifar_data.TRAIN_FILES, "test_batch"])
    assert record["files"]["data_batch_2"] == hashlib.sha256((folder / "data_batch_2").read_bytes()).hexdigest()
    official = tmp_path / "official"
    official.mkdir()
    for i, name in enumerate([*cifar_data.TRAIN_FILES, "test_batch"]):
        official_batch(official / name, np.full((2, 3, 32, 32), i, np.uint8), [i, i])
    record = cifar_data.provenance(official)
    assert record["data"] == "real" and "generated_by" not in record
    assert record["files"]["test_batch"] == hashlib.sha256((official / "test_batch").read_bytes()).hexdigest()
    (official / "data_batch_4").unlink()
    with pytest.raises(CifarDataError, match="lacks data_batch_4"):
        cifar_data.provenance(official)
