import numpy as np
import pytest
import torch

from repro.augment import Crops, Normalizer, step_generator
from repro.config import AugmentConfig
from repro.data.batch import Batch


@pytest.fixture
def stats(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    cov = a @ a.T * 100
    eigval, eigvec = np.linalg.eigh(cov)
    path = tmp_path / "stats.npz"
    np.savez(path, mean_image=rng.uniform(0, 255, (256, 256, 3)).astype(np.float32),
             rgb_mean=np.zeros(3), rgb_cov=cov, eigval=eigval[::-1], eigvec=eigvec[:, ::-1],
             count=1)
    return path, cov, eigval[::-1], eigvec[:, ::-1]


def mean_crops(path, ys, xs, flips, size: int) -> torch.Tensor:
    """The stats file's mean image cut at each window, mirrored where flipped, by slicing."""
    full = torch.from_numpy(np.load(path)["mean_image"]).permute(2, 0, 1)
    windows = [full[:, y:y + size, x:x + size] for y, x in zip(ys.tolist(), xs.tolist())]
    return torch.stack([w.flip(-1) if f else w for w, f in zip(windows, flips.tolist())])


@pytest.mark.parametrize("scale", ["sqrt_eigval", "eigval"])
def test_pca_noise_covariance_matches_its_definition(stats, scale):
    path, cov, eigval, eigvec = stats
    norm = Normalizer(path, AugmentConfig(pca_scale=scale, pca_std=0.1), torch.device("cpu"))
    noise = norm.pca_noise(200_000, step_generator(torch.device("cpu"), 1, 2)).double().numpy()
    lam = eigval if scale == "sqrt_eigval" else eigval ** 2   # variance along p_i / std^2
    expected = eigvec @ np.diag(0.1 ** 2 * lam) @ eigvec.T
    if scale == "sqrt_eigval":                                 # = 0.01 * the pixel covariance
        np.testing.assert_allclose(expected, 0.01 * cov, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.cov(noise, rowvar=False), expected, rtol=0.03,
                               atol=0.03 * np.abs(expected).max())
    np.testing.assert_allclose(noise.mean(0), 0, atol=0.02 * np.sqrt(expected.diagonal().max()))


def test_mean_is_cut_at_the_crop_window_and_mirrored(stats):
    path = stats[0]
    norm = Normalizer(path, AugmentConfig(pca_std=0.0), torch.device("cpu"))
    ys, xs, flips = torch.tensor([0, 29, 7]), torch.tensor([29, 0, 11]), torch.tensor([0, 1, 1])
    crops = mean_crops(path, ys, xs, flips, 227)
    images = torch.randint(0, 256, (3, 3, 227, 227), dtype=torch.uint8)
    out = norm(images, Crops(ys, xs, flips, 227), generator=None)
    torch.testing.assert_close(out, images.float() - crops)


def test_train_input_mirrors_host_crops_then_subtracts_the_mean_and_adds_noise(stats):
    """The training pipeline on a batch of crops cut by the loader workers (unmirrored):
    each mirrored where flipped, minus the mean image at its window, plus its image's PCA
    shift; the labels come along."""
    path = stats[0]
    norm = Normalizer(path, AugmentConfig(pca_std=0.1), torch.device("cpu"))
    ys, xs, flips = torch.tensor([0, 29, 7]), torch.tensor([29, 0, 11]), torch.tensor([0, 1, 1])
    images = torch.randint(0, 256, (3, 3, 227, 227), dtype=torch.uint8)
    labels = torch.tensor([4, 0, 2])
    x, got = norm.train_input(Batch(images, labels, Crops(ys, xs, flips, 227)),
                              step_generator(torch.device("cpu"), 0, 1, 2))
    mirrored = torch.stack([i.flip(-1) if f else i for i, f in zip(images, flips.tolist())])
    noise = norm.pca_noise(3, step_generator(torch.device("cpu"), 0, 1, 2))
    expect = mirrored.float() - mean_crops(path, ys, xs, flips, 227) + noise[:, :, None, None]
    torch.testing.assert_close(x, expect)
    assert torch.equal(got, labels)


@pytest.mark.parametrize("channels_last", [False, True])
def test_test_views_are_the_windows_minus_the_mean(stats, channels_last):
    path = stats[0]
    mean = np.load(path)["mean_image"]                                  # (256, 256, 3)
    norm = Normalizer(path, AugmentConfig(pca_std=0.1), torch.device("cpu"), channels_last)
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    windows = [(0, 0, False), (29, 0, True), (14, 14, True)]
    out = norm.views(images, windows, 227)
    assert out.shape == (6, 3, 227, 227)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last
                             else torch.contiguous_format)
    for v, (y, x, mirrored) in enumerate(windows):
        for b in range(2):
            expect = images[b].numpy()[:, y:y + 227, x:x + 227] - mean[y:y + 227, x:x + 227].transpose(2, 0, 1)
            if mirrored:
                expect = expect[:, :, ::-1]
            np.testing.assert_allclose(out[v * 2 + b].numpy(), expect, rtol=0, atol=1e-4)


def test_mean_modes(stats):
    path = stats[0]
    crops = Crops(torch.tensor([3]), torch.tensor([3]), torch.tensor([0]), 227)
    images = torch.full((1, 3, 227, 227), 100, dtype=torch.uint8)
    rgb = Normalizer(path, AugmentConfig(mean="rgb", pca_std=0), torch.device("cpu"))
    per_channel = torch.from_numpy(np.load(path)["mean_image"]).mean(dim=(0, 1))
    torch.testing.assert_close(rgb(images, crops, None)[0, :, 5, 5], 100 - per_channel)
    none = Normalizer(path, AugmentConfig(mean="none", pca_std=0), torch.device("cpu"))
    assert torch.equal(none(images, crops, None), images.float())


def test_noise_is_the_same_rgb_shift_for_every_pixel_and_reproducible(stats):
    norm = Normalizer(stats[0], AugmentConfig(), torch.device("cpu"))
    images = torch.randint(0, 256, (4, 3, 227, 227), dtype=torch.uint8)
    zeros = torch.zeros(4, dtype=torch.long)
    args = (images, Crops(zeros, zeros, zeros, 227))
    plain = norm(*args, generator=None)
    a = norm(*args, generator=step_generator(torch.device("cpu"), 0, 1, 2)) - plain
    b = norm(*args, generator=step_generator(torch.device("cpu"), 0, 1, 2)) - plain
    c = norm(*args, generator=step_generator(torch.device("cpu"), 0, 1, 3)) - plain
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a, a[:, :, :1, :1].expand_as(a), atol=1e-3, rtol=0)
    assert not torch.allclose(a[0, :, 0, 0], a[1, :, 0, 0])   # one draw per image


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])])
def test_compiled_normalizer_equals_eager(stats, device):
    """train.compile also compiles the normalizer into one kernel: the same numbers,
    in the dtype and memory format the model runs in, through a change of batch size."""
    path = stats[0]
    cfg = AugmentConfig(pca_std=0.1)
    dev = torch.device(device)
    eager = Normalizer(path, cfg, dev, channels_last=True, dtype=torch.bfloat16)
    compiled = Normalizer(path, cfg, dev, channels_last=True, dtype=torch.bfloat16, compile=True)
    g = torch.Generator().manual_seed(0)
    for b in (4, 3):
        images = torch.randint(0, 256, (b, 3, 67, 67), dtype=torch.uint8, generator=g)
        ys, xs = torch.randint(0, 190, (b,), generator=g), torch.randint(0, 190, (b,), generator=g)
        flips = torch.randint(0, 2, (b,), generator=g)
        a = eager(images, Crops(ys, xs, flips, 67), step_generator(dev, 0, 1, b))
        c = compiled(images, Crops(ys, xs, flips, 67), step_generator(dev, 0, 1, b))
        assert c.dtype == torch.bfloat16 and c.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, c)
        expect = (images.to(dev).float() - mean_crops(path, ys, xs, flips, 67).to(dev)
                  + eager.pca_noise(b, step_generator(dev, 0, 1, b))[:, :, None, None])
        assert torch.equal(c, expect.to(torch.bfloat16))
