"""Report pictures and page: decodable files, colour semantics, atomic writes."""

import base64
import os
import re

import numpy as np
import pytest

pytest.importorskip("PIL")
matplotlib = pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from gnl_onnx import report  # noqa: E402
from gnl_onnx.errors import UsageError  # noqa: E402


def ramp(h=16, w=24):
    """Signed attribution: negative on the left, positive on the right."""
    return np.tile(np.linspace(-1.0, 1.0, w), (h, 1))


def png(path):
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def no_temp_files(folder):
    return [p.name for p in folder.iterdir() if ".tmp" in p.name] == []


def test_heatmap_signed_colours(tmp_path):
    a = ramp()
    a[0, 0] = 0.0
    out = report.heatmap_png(a, tmp_path / "h.png")
    rgb = png(out)
    assert rgb.shape == (16, 24, 3)
    cmap = matplotlib.colormaps[report.SIGNED_CMAP]
    # Zero sits at the diverging map's centre; +-max at its ends (red positive, blue negative).
    np.testing.assert_allclose(rgb[0, 0], np.array(cmap(0.5)[:3]) * 255, atol=1)
    np.testing.assert_allclose(rgb[5, -1], np.array(cmap(1.0)[:3]) * 255, atol=1)
    np.testing.assert_allclose(rgb[5, 0], np.array(cmap(0.0)[:3]) * 255, atol=1)
    assert rgb[5, -1, 0] > rgb[5, -1, 2] and rgb[5, 0, 2] > rgb[5, 0, 0]
    assert no_temp_files(tmp_path)


def test_percentile_clipping_keeps_contrast():
    # One huge outlier: without clipping every other pixel would map near the centre colour.
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 1.0, (50, 50))
    a[0, 0] = 1e6
    rgb, strength = report.colorize(a, "signed")
    v = np.percentile(np.abs(a), 99.5)
    assert strength[0, 0] == 1.0
    assert np.mean(strength >= 0.5 / v) > 0.99
    assert np.mean(strength == 1.0) == pytest.approx(0.005, abs=0.002)  # only the top 0.5 %


def test_abs_mode_ignores_sign(tmp_path):
    a = np.array([[-2.0, 2.0, 0.0, 1.0]])
    rgb = png(report.heatmap_png(a, tmp_path / "abs.png", mode="abs"))
    np.testing.assert_array_equal(rgb[0, 0], rgb[0, 1])
    assert not np.array_equal(rgb[0, 2], rgb[0, 3])
    signed = png(report.heatmap_png(a, tmp_path / "signed.png"))
    assert not np.array_equal(signed[0, 0], signed[0, 1])


def test_all_zero_attribution_is_fine(tmp_path):
    rgb = png(report.heatmap_png(np.zeros((4, 4)), tmp_path / "z.png"))
    assert (rgb == rgb[0, 0]).all()


def test_overlay(tmp_path):
    pixels = np.full((16, 24, 3), 90, np.uint8)  # flat grey photo
    a = ramp()
    out = png(report.overlay_png(pixels, a, tmp_path / "o.png"))
    assert out.shape == (16, 24, 3)
    assert len(np.unique(out.reshape(-1, 3), axis=0)) > 5  # the map shows through
    # Where the attribution is ~0, the photo shows, as a dimmed grey copy.
    z = png(report.overlay_png(pixels, np.zeros((16, 24)), tmp_path / "z.png"))
    dimmed = 90 * report.pictures.DIM + (1 - report.pictures.DIM) * 64
    assert (np.abs(z.astype(int) - dimmed) <= 1).all()
    signed = png(report.overlay_png(pixels, a, tmp_path / "s.png", mode="signed"))
    assert signed[8, -1, 0] > signed[8, -1, 2] and signed[8, 0, 2] > signed[8, 0, 0]  # red for, blue against
    absolute = png(report.overlay_png(pixels, a, tmp_path / "a.png"))
    np.testing.assert_array_equal(absolute[:, 0], absolute[:, -1])  # the default view: magnitude only
    with pytest.raises(UsageError, match="sizes differ"):
        report.overlay_png(pixels, np.zeros((8, 8)), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_reduce_channels(layout):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(1, 3, 5, 6))
    if layout == "NHWC":
        a_in = a.transpose(0, 2, 3, 1)
    else:
        a_in = a
    c0, c1, c2 = a[0]
    np.testing.assert_allclose(report.reduce_channels(a_in, layout), c0 + c1 + c2)
    np.testing.assert_allclose(report.reduce_channels(a_in, layout, "abs_sum"),
                               abs(c0) + abs(c1) + abs(c2))
    np.testing.assert_allclose(report.reduce_channels(a_in, layout, "max_abs"),
                               np.maximum(np.maximum(abs(c0), abs(c1)), abs(c2)))
    np.testing.assert_allclose(report.reduce_channels(a_in[0], layout), c0 + c1 + c2)
    with pytest.raises(UsageError):
        report.reduce_channels(a_in, layout, "mean")


def test_atomic_write_bytes_text_callback(tmp_path):
    p = tmp_path / "sub" / "f.bin"
    report.atomic_write(p, b"abc")
    assert p.read_bytes() == b"abc"
    report.atomic_write(p, "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    seen = []
    report.atomic_write(p, lambda tmp: (seen.append(tmp), tmp.write_bytes(b"xyz")))
    assert p.read_bytes() == b"xyz"
    assert seen[0] != p and seen[0].parent == p.parent and seen[0].suffix == ".bin"
    assert os.stat(p).st_mode & 0o777 == 0o644 or os.name != "posix"
    assert no_temp_files(p.parent)


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    p = tmp_path / "keep.txt"
    p.write_text("original")

    def half_then_fail(tmp):
        tmp.write_text("half-writ")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        report.atomic_write(p, half_then_fail)
    assert p.read_text() == "original"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keep.txt"]


def _rows(tmp_path):
    img = report.image_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "img.png")
    h1 = report.heatmap_png(ramp(8, 8), tmp_path / "png" / "gnl.png")
    h2 = report.heatmap_png(-ramp(8, 8), tmp_path / "png" / "ig.png")
    return [
        report.Row(image=img, label="Egyptian Mau (285)", score=7.25, title="chelsea <1>.png",
                   panels=[report.Panel(h1, "GNL-IG", "black"),
                           report.Panel(h2, "IG", "zeros", note="delta 1e-3")]),
        {"image": img, "label": "espresso (967)", "panels": [{"png": h1, "method": "IG"}]},
    ]


def test_html_page_links(tmp_path):
    rows = _rows(tmp_path)
    page = report.html_page(rows, tmp_path / "index.html", title="t & u")
    text = page.read_text(encoding="utf-8")
    for s in ["Egyptian Mau (285)", "score 7.25", "GNL-IG", "baseline: black", "baseline: zeros",
              "delta 1e-3", "espresso (967)", "t &amp; u", "chelsea &lt;1&gt;.png"]:
        assert s in text, s
    assert 'alt="GNL-IG: Egyptian Mau (285)"' in text  # plain text, no markup in alt
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) == 5
    for s in srcs:  # relative links that resolve next to the page
        assert not os.path.isabs(s)
        assert (tmp_path / s).is_file(), s
    assert no_temp_files(tmp_path)


def test_html_page_embedded(tmp_path):
    page = report.html_page(_rows(tmp_path), tmp_path / "out" / "embedded.html", embed=True)
    text = page.read_text(encoding="utf-8")
    srcs = re.findall(r'<img src="data:image/png;base64,([^"]+)"', text)
    assert len(srcs) == 5
    assert base64.b64decode(srcs[1]).startswith(b"\x89PNG")


def test_mass_clip_is_captums_cumulative_threshold():
    a = np.r_[np.ones(98), 1000.0, 1000.0]  # two outliers hold ~95% of the mass
    assert report.mass_clip(a, 2.0) == 1000.0
    assert report.mass_clip(np.ones(100), 2.0) == 1.0
    assert report.mass_clip(np.zeros((3, 3))) == 1.0
    spread = np.arange(1.0, 101.0)
    end = report.mass_clip(spread, 2.0)  # the smallest value whose cumulative |a| reaches 98%
    assert np.cumsum(spread)[int(end) - 1] >= 0.98 * spread.sum() > np.cumsum(spread)[int(end) - 2]


def test_smoothing_only_for_pixel_level_maps():
    rng = np.random.default_rng(0)
    noisy = rng.normal(size=(224, 224))  # a pixel-level map
    yy, xx = np.mgrid[0:224, 0:224]
    smooth = np.exp(-((yy - 100) ** 2 + (xx - 60) ** 2) / 2000.0)  # a CAM-like map
    assert report.roughness(noisy) > 0.9 and report.roughness(smooth) < 0.01
    assert report.smoothing_sigma(noisy) == pytest.approx(0.015 * 224)
    assert report.smoothing_sigma(smooth) == 0.0 and report.smoothing_sigma(noisy, None) == 0.0
    assert report.smoothing_sigma(ramp()) == 0.0  # small test maps are never smoothed
    blurred = report.gaussian_smooth(noisy, 3.0)
    assert blurred.shape == noisy.shape and blurred.std() < 0.2 * noisy.std()
    assert report.gaussian_smooth(np.full((5, 7), 2.0), 4.0) == pytest.approx(np.full((5, 7), 2.0))
    with pytest.raises(UsageError):
        report.smoothing_sigma(noisy, "yes")


def test_overlay_shows_a_blob_of_single_pixel_speckle():
    """A pixel-level map whose mass sits in one region: the overlay colours that region, not
    scattered specks (the old 99.5th-percentile clip of the raw map left a grey photo)."""
    rng = np.random.default_rng(1)
    pixels = np.full((224, 224, 3), 128, np.uint8)
    a = rng.normal(size=(224, 224)) * 0.2
    a[60:120, 100:160] += rng.normal(size=(60, 60)) * 3.0  # mixed signs, strong in one block
    out = report.overlay(pixels, a).astype(float)
    change = np.abs(out - report.overlay(pixels, np.zeros_like(a))).sum(axis=2)
    inside, outside = change[70:110, 110:150], np.r_[change[:40].ravel(), change[180:].ravel()]
    assert inside.mean() > 4 * outside.mean()
    assert (inside > 60).mean() > 0.9  # the whole block is visibly coloured


def test_agreement_is_mean_pairwise_spearman():
    from gnl_onnx.metrics import spearman

    rng = np.random.default_rng(2)
    maps = {m: rng.normal(size=(6, 7)) for m in ("a", "b", "c")}
    maps["b"] = maps["a"] + 0.3 * maps["b"]
    want = np.mean([spearman(maps["a"], maps["b"]), spearman(maps["a"], maps["c"]), spearman(maps["b"], maps["c"])])
    got = report.agreement({**maps, "random": rng.normal(size=(6, 7))})  # the floor left out
    assert got == pytest.approx(want)
    assert report.agreement({"a": maps["a"]}) is None
    assert report.agreement({"a": maps["a"], "b": np.zeros((6, 7))}) is None  # undefined for a constant map


def test_report_columns_come_from_the_data():
    records = [{"image": "x", "method": "ig", "target": 3, "probability": 0.5, "deletion_auc": 0.2,
                "insertion_auc": 0.7, "road_difference": 0.1, "steps": 8, "attribution_seconds": 0.1,
                "deletion_curve": [1.0, 0.0]}]
    assert report.metric_names(records) == ["deletion_auc", "insertion_auc", "road_difference"]
