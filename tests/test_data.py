"""The bundled MNIST subset, the fixed split, batch order as a function of (seed, step), preprocessing."""
import itertools
import sys

import pytest
import torch

from fastscore.ncsn import data


def test_bundled_subset_shapes_and_split():
    images, labels = data.load_mnist5k("all")
    assert images.shape == (5000, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [500] * 10
    assert 20 < images.float().mean() < 50  # real MNIST: mostly black, mean ~33
    train_x, train_y = data.load_mnist5k("train")
    test_x, test_y = data.load_mnist5k("test")
    assert len(train_x) == 4500 and len(test_x) == 500
    assert torch.bincount(test_y).tolist() == [data.HELD_OUT_PER_CLASS] * 10
    # Disjoint, and together the whole set: no held-out digit is in the training split.
    flat = lambda x: {bytes(row.numpy()) for row in x.reshape(len(x), -1)}  # noqa: E731
    assert not flat(train_x) & flat(test_x)
    assert len(flat(train_x) | flat(test_x)) == len(flat(images))
    # Fixed: the same split every call.
    assert torch.equal(data.load_mnist5k("test")[0], test_x)
    with pytest.raises(ValueError, match="split"):
        data.load_mnist5k("valid")


def test_dataset_resizes_to_unit_range():
    ds = data.get_dataset(data.DataSpec(image_size=16, split="test"))
    x, y = ds[3]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
    assert ds.images.max() > 0.9 and int(y) in range(10)


def _take(stream, start, count):
    return [idx.clone() for idx in itertools.islice(stream.indices(start), count)]


def test_batch_order_is_a_function_of_seed_and_step():
    ds = data.TensorImages(torch.rand(23, 1, 2, 2), torch.arange(23))
    stream = data.BatchStream(ds, batch_size=5, seed=7)
    assert stream.per_epoch == 4
    full = _take(stream, 0, 10)  # crosses two epoch boundaries
    for start in (0, 3, 4, 6):
        assert all(torch.equal(a, b) for a, b in zip(_take(stream, start, 10 - start), full[start:], strict=True))
    # Each epoch: distinct indices, a different order from the next epoch, another seed differs.
    epoch0 = torch.cat(full[:4])
    assert len(set(epoch0.tolist())) == 20
    assert not torch.equal(epoch0, torch.cat(full[4:8]))
    assert not torch.equal(torch.cat(_take(data.BatchStream(ds, 5, seed=8), 0, 4)), epoch0)
    x, y = next(stream.batches(5))
    assert torch.equal(y, full[5]) and torch.equal(x, ds.images[full[5]])


def test_batch_stream_generic_dataset_matches_in_memory():
    images = torch.rand(12, 1, 3, 3)

    class Plain(torch.utils.data.Dataset):  # not TensorImages: goes through a DataLoader
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return images[i], i

    a = data.BatchStream(Plain(), 4, seed=3).batches(2)
    b = data.BatchStream(data.TensorImages(images, torch.arange(12)), 4, seed=3).batches(2)
    for _ in range(4):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batch_stream_rejects_too_small_dataset():
    with pytest.raises(ValueError, match="fewer than one batch"):
        data.BatchStream(data.TensorImages(torch.rand(3, 1, 2, 2), torch.arange(3)), 4, seed=0)


def test_preprocess_dequantize_flip_logit():
    x = torch.rand(64, 1, 4, 5)
    g = torch.Generator().manual_seed(0)
    out = data.Preprocess(random_flip=False, dequantize=True)(x, g)
    # ncsn: x * 255/256 + U(0, 1/256): within [x*255/256, x*255/256 + 1/256), not constant offset.
    lo = x * 255 / 256
    assert bool(((out >= lo) & (out < lo + 1 / 256 + 1e-7)).all())
    assert float((out - lo).std()) > 1e-4
    flipped = data.Preprocess(random_flip=True, dequantize=False)(x, torch.Generator().manual_seed(1))
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54
    pre = data.Preprocess(dequantize=False, logit_transform=True)
    y = pre(x, g)
    assert torch.allclose(torch.sigmoid(y), 1e-6 + (1 - 2e-6) * x, atol=1e-6)
    assert torch.allclose(pre.invert(y), x, atol=1e-5)


def test_missing_local_dataset_says_what_to_do(tmp_path):
    pytest.importorskip("torchvision")
    with pytest.raises(data.DataUnavailable, match="never downloads"):
        data.get_dataset(data.DataSpec(name="cifar10", root=str(tmp_path), image_size=32))


def test_missing_torchvision_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now raises ImportError
    with pytest.raises(data.DataUnavailable, match="pip install torchvision.*bundled"):
        data.get_dataset(data.DataSpec(name="cifar10", root=str(tmp_path), image_size=32))


def test_bad_dataset_arguments_need_no_torchvision(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(data.DataUnavailable, match="--data-root"):
        data.get_dataset(data.DataSpec(name="mnist", root=None))
    with pytest.raises(data.DataUnavailable, match="existing directory"):
        data.get_dataset(data.DataSpec(name="celeba", root=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="unknown dataset"):
        data.get_dataset(data.DataSpec(name="imagenet", root=str(tmp_path)))


def test_image_folder_reads_local_pngs(tmp_path):
    pytest.importorskip("torchvision")
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (10, 12), (40 * i, 200, 30)).save(tmp_path / cls / f"{i}.png")
    ds = data.get_dataset(data.DataSpec(name="folder", root=str(tmp_path), image_size=8))
    x, y = ds[4]
    assert len(ds) == 6 and x.shape == (3, 8, 8) and y == 1
    assert abs(float(x[1].mean()) - 200 / 255) < 0.02
