"""Fashion-MNIST's IDX files (repro.fashion_mnist): the real set where Debian's
dataset-fashion-mnist installed it (tools/setup_datasets.sh) against its published
numbers; the reader on files written here, gzipped or not, in DIR or DIR/FashionMNIST/raw,
and each kind of damage refused with the file named; the generated stand-in marked as
such; d2l's input against torchvision's transforms."""
import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from repro import fashion_mnist as fm
from repro.exits import Refused

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
real = pytest.mark.skipif(not (fm.SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
                          reason=f"no real Fashion-MNIST in {fm.SYSTEM_DIR} "
                                 f"(tools/setup_datasets.sh installs dataset-fashion-mnist)")


@real
def test_the_real_set_is_fashion_mnist():
    data = fm.load(fm.SYSTEM_DIR)
    assert data.train_images.shape == (60000, 28, 28) and data.test_images.shape == (10000, 28, 28)
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int64
    assert np.bincount(data.train_labels).tolist() == [6000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    pixels = data.train_images.astype(np.float64) / 255
    assert round(pixels.mean(), 4) == 0.2860 and round(pixels.std(), 4) == 0.3530
    record = fm.provenance(fm.SYSTEM_DIR)
    assert record["data"] == "real" and sorted(record["files"]) == sorted(f"{n}.gz" for n in NAMES)
    assert record["files"]["t10k-labels-idx1-ubyte.gz"] == hashlib.sha256(
        (fm.SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX written out here: magic 0, 0, 0x08 (unsigned byte), ndim; the dims; the bytes."""
    return bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) \
        + array.astype(np.uint8).tobytes()


def write_set(folder, gz: bool, n_train=12, n_test=5, seed=0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    for name, array in arrays.items():
        raw = idx_bytes(array)
        (folder / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["DIR", "DIR/FashionMNIST/raw"])
def test_reader_reads_both_layouts_gzipped_or_not(tmp_path, gz, layout):
    folder = tmp_path / "FashionMNIST" / "raw" if "raw" in layout else tmp_path
    arrays = write_set(folder, gz)
    data = fm.load(tmp_path)
    assert data.folder == folder
    assert np.array_equal(data.train_images, arrays["train-images-idx3-ubyte"])
    assert data.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert data.train_images.dtype == np.uint8 and data.test_labels.dtype == np.int64
    record = fm.provenance(tmp_path)
    assert record["data"] == "real" and len(record["files"]) == 4
    name = "t10k-images-idx3-ubyte" + ".gz" * gz
    assert record["files"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()


def test_a_folder_with_both_forms_reads_the_uncompressed_files(tmp_path):
    """torchvision's raw folder keeps each .gz beside the file it unpacked."""
    arrays = write_set(tmp_path, gz=False)
    write_set(tmp_path, gz=True, seed=1)
    assert np.array_equal(fm.load(tmp_path).train_images, arrays["train-images-idx3-ubyte"])


def damage(folder, kind):
    """Damage one file of a set written uncompressed in folder; the file damaged."""
    images, labels = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    if kind == "missing":
        labels.unlink()
        return labels
    if kind == "header cut":
        images.write_bytes(images.read_bytes()[:10])
    elif kind == "values cut":
        images.write_bytes(images.read_bytes()[:-1])
    elif kind == "too long":
        images.write_bytes(images.read_bytes() + b"\0")
    elif kind == "labels for images":
        images.write_bytes(labels.read_bytes())
    elif kind == "27 rows":
        images.write_bytes(idx_bytes(np.zeros((12, 27, 28), np.uint8)))
    elif kind == "counts differ":
        labels.write_bytes(idx_bytes(np.zeros(11, np.uint8)))
        return labels
    elif kind == "label 10":
        labels.write_bytes(idx_bytes(np.array([10] + [0] * 11)))
        return labels
    elif kind == "gzip cut":
        images.with_suffix(".gz").write_bytes(gzip.compress(images.read_bytes())[:5000])
        images.unlink()
        return images.with_suffix(".gz")
    elif kind == "not gzip":
        images.rename(images.with_suffix(".gz"))
        return images.with_suffix(".gz")
    return images


@pytest.mark.parametrize("kind, says", [
    ("missing", r"missing \(neither it nor train-labels-idx1-ubyte.gz is there"),
    ("header cut", "truncated: 10 bytes, shorter than an IDX header of 3 dimensions"),
    ("values cut", r"truncated: 9407 bytes of values, expected 9408 \(12 x 28 x 28\)"),
    ("too long", "too long: 9409 bytes of values, expected 9408"),
    ("labels for images", "magic number 0x00000801, expected 0x00000803"),
    ("27 rows", r"dimensions \(12, 27, 28\), expected \('N', 28, 28\)"),
    ("counts differ", "11 labels for the 12 images of"),
    ("label 10", r"labels outside 0..9 \(max 10\)"),
    ("gzip cut", "not a readable gzip file"),
    ("not gzip", "not a readable gzip file"),
])
def test_a_damaged_file_is_refused_naming_it(tmp_path, kind, says):
    write_set(tmp_path, gz=False)
    path = damage(tmp_path, kind)
    with pytest.raises(fm.FashionMnistError, match=says) as e:
        fm.load(tmp_path)
    assert isinstance(e.value, Refused) and str(e.value).startswith(f"{path}: ")


def test_no_set_names_the_places_looked_in(tmp_path):
    with pytest.raises(fm.FashionMnistError) as e:
        fm.load(tmp_path)
    for part in (str(tmp_path), str(tmp_path / "FashionMNIST" / "raw"), "t10k-labels-idx1-ubyte",
                 str(fm.SYSTEM_DIR)):
        assert part in str(e.value)


def test_the_generated_set_is_marked_and_readable_by_torchvision(tmp_path):
    raw = fm.generate(tmp_path, 24, 12, seed=3)
    assert raw == tmp_path / "FashionMNIST" / "raw"
    data = fm.load(tmp_path)
    assert (len(data.train_labels), len(data.test_labels)) == (24, 12)
    for i in (0, 7, 13):                                     # the band's rows give the class
        bright = (data.train_images[i].mean(1) > 128).nonzero()[0].tolist()
        assert bright == list(range(2 * data.train_labels[i], 2 * data.train_labels[i] + 5))
    theirs = read_sn3_pascalvincent_tensor(str(raw / "train-images-idx3-ubyte"))
    assert np.array_equal(theirs.numpy(), data.train_images)
    record = fm.provenance(tmp_path)
    assert record["data"] == "generated" and "seed=3" in record["generated_by"]
    assert sorted(record["files"]) == sorted(NAMES)
    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    with pytest.raises(fm.FashionMnistError, match="is not empty"):
        fm.generate(tmp_path, 30, 10, seed=1)
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == before


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
@pytest.mark.parametrize("size", [224, 67, 20])
def test_d2l_input_is_torchvisions_resize_then_to_tensor(size, device):
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8))
    ours = fm.d2l_input(images.to(device), size).cpu()
    assert ours.shape == (6, 1, size, size) and ours.dtype == torch.float32
    pipeline = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
    # Resize on the uint8 tensor (bilinear, antialias), ToTensor on its HxWx1 pixels
    on_tensors = torch.stack([transforms.ToTensor()(transforms.Resize(size)(x[None]).permute(1, 2, 0).numpy())
                              for x in images])
    assert torch.equal(ours, on_tensors)
    # d2l's own path resizes PIL images, which round after each axis: a pixel value apart
    # at most, on a minority of the pixels
    on_pil = torch.stack([pipeline(Image.fromarray(x.numpy(), mode="L")) for x in images])
    apart = (ours - on_pil).abs()
    assert apart.max() <= 1 / 255 + 1e-6 and (apart > 0).float().mean() < 0.25
