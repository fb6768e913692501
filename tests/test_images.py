"""make_grid's layout and save_png's round trip through Pillow."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastscore.ncsn.images import make_grid, save_png, to_uint8


def test_grid_layout():
    images = torch.rand(5, 3, 4, 6) * 0.8 + 0.1
    grid = make_grid(images, nrow=3, padding=2, pad_value=0.0)
    assert grid.shape == (3, 2 + 2 * (4 + 2), 2 + 3 * (6 + 2))
    for i in range(5):
        top, left = 2 + (i // 3) * 6, 2 + (i % 3) * 8
        torch.testing.assert_close(grid[:, top : top + 4, left : left + 6], images[i])
    # The padding and the empty sixth cell hold pad_value.
    assert grid[:, :2].eq(0).all() and grid[:, :, :2].eq(0).all()
    assert grid[:, 8:12, 18:24].eq(0).all()


def test_grid_defaults_square_and_clamps():
    images = torch.linspace(-1, 2, 9 * 4).reshape(9, 1, 2, 2)
    grid = make_grid(images, padding=0)
    assert grid.shape == (1, 6, 6)  # ceil(sqrt(9)) = 3 per row
    assert grid.min() == 0 and grid.max() == 1
    assert make_grid(torch.full((1, 1, 2, 2), float("nan")), padding=0).eq(0).all()


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_save_png_round_trip(tmp_path, channels, mode):
    images = torch.rand(4, channels, 5, 7)
    path = save_png(images, tmp_path / "sub" / "grid.png", nrow=2, padding=1)
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.mode == mode
        pixels = np.asarray(picture)
    expected = to_uint8(make_grid(images, nrow=2, padding=1)).numpy()
    np.testing.assert_array_equal(pixels.reshape(expected.shape), expected)
    assert pixels.reshape(expected.shape)[1, 1, 0] == round(images[0, 0, 0, 0].item() * 255)


def test_save_single_image(tmp_path):
    image = torch.zeros(3, 2, 3)
    image[0] = 1.0  # pure red
    path = save_png(image, tmp_path / "red.png")
    with Image.open(path) as picture:
        assert picture.size == (3, 2) and picture.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("bad, error", [
    (torch.rand(2, 2, 4, 4), ValueError),   # two channels
    (torch.rand(4, 4), ValueError),         # no channel axis
    (torch.rand(0, 1, 4, 4), ValueError),   # empty batch
    ([[0.0]], TypeError),
])
def test_bad_images(bad, error):
    with pytest.raises(error):
        make_grid(bad)
