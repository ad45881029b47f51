"""The gnl-onnx command line, run in-process through gnl_onnx.cli.main (and once as the installed
console script): exit codes (0 done, 1 a model or image failed, 2 bad usage or input), one-line
errors, files that exist, decode and carry a picture, and a converted model that runs in bare
onnxruntime exactly as the printed recipe says."""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from onnx_builders import make_model, relu_cnn
from onnx_builders import run_cli as cli
from PIL import Image

from gnl_onnx import Explainer

F32 = np.float32
HW, CLASSES = 16, 5
CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
node = helper.make_node


def small_cnn():
    return relu_cnn(0, HW, CLASSES)


def custom_op_model():
    return make_model([node("Relu", ["X"], ["a"], name="relu"),
                       node("Foo", ["a"], ["Y"], domain="com.example", name="custom_foo")],
                      [("X", F32, ["N", 6])], [("Y", F32, ["N", 6])], extra_opsets={"com.example": 1})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-inputs")
    onnx.save(small_cnn(), d / "small.onnx")
    onnx.save(custom_op_model(), d / "custom.onnx")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / "photo.png")
    Image.fromarray(rng.integers(0, 256, (30, 18, 3), dtype=np.uint8)).save(d / "other.png")
    (d / "notes.png").write_text("this is not an image\n")
    return d


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("gnl-onnx: ") and "Traceback" not in err
    return lines[0]


# same size as the model: 16 on the shorter side, centre crop 16x16
PREP = ["--size", str(HW), "--crop", str(HW), str(HW)]


# ------------------------------------------------------------------------ the console script
def console_script() -> str:
    exe = pathlib.Path(sys.executable).parent / "gnl-onnx"
    exe = str(exe) if exe.exists() else shutil.which("gnl-onnx")
    assert exe, "the gnl-onnx console script is not installed"
    return exe


def test_console_script_is_installed():
    proc = subprocess.run([console_script(), "--help"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    for command in ("inspect", "convert", "explain", "demo"):
        assert command in proc.stdout


def test_console_script_error_is_one_line(files, tmp_path):
    """In a real process, with onnxruntime's own logging on the same stderr: still one line."""
    proc = subprocess.run([console_script(), "explain", str(files / "small.onnx"), str(files / "notes.png"),
                           "--out", str(tmp_path / "out"), *PREP], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2
    assert "notes.png" in one_error_line(proc.stderr)


def test_no_command_prints_help(capfd):
    code, out, _ = cli(capfd)
    assert code == 2 and "explain" in out


# ------------------------------------------------------------------------ explain, real model
@pytest.mark.slow
def test_explain_efficientnet_lite0_on_chelsea(tmp_path, capfd):
    skdata = pytest.importorskip("skimage.data")
    from models.registry import get_model

    photo = tmp_path / "chelsea.png"
    Image.fromarray(skdata.chelsea()).save(photo)
    out = tmp_path / "out"
    code, stdout, err = cli(capfd, "explain", get_model("efficientnet-lite0"), photo, "--preset",
                            "efficientnet-lite0", "--out", out, "--steps", "8")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == [] and len(summary["explained"]) == 1
    record = summary["explained"][0]
    assert record["target"] in CATS, record
    assert record["method"] == "gnl_ig" and record["steps"] == 8 and record["baseline"] == "zeros"
    assert record["provider"] in ort.get_available_providers()
    assert str(record["target"]) in stdout

    for kind in ("heatmap", "overlay"):
        path = pathlib.Path(record["files"][kind])
        assert path.is_file() and path.parent == out
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (224, 224)
            pixels = np.asarray(im.convert("RGB"))
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 16, f"{kind} is (nearly) constant"
    raw = np.load(record["files"]["npy"])
    assert raw.shape == (1, 3, 224, 224) and raw.dtype == F32
    assert np.all(np.isfinite(raw)) and raw.std() > 0
    assert not list(out.glob("*.tmp*"))  # atomic writes leave nothing behind


# ------------------------------------------------------------------------ explain, small model
def test_explain_small_model(files, tmp_path, capfd):
    out = tmp_path / "out"
    code, stdout, err = cli(capfd, "explain", files / "small.onnx", files / "photo.png", "--out", out,
                            "--method", "ig", "--steps", "4", *PREP)
    assert code == 0, err
    record = json.loads((out / "summary.json").read_text())["explained"][0]
    assert record["files"]["overlay"] in stdout
    raw = np.load(record["files"]["npy"])
    assert raw.shape == (1, 3, HW, HW) and raw.std() > 0
    # the file holds what the API computes for the same preprocessed image
    from gnl_onnx.images import Preprocessing, load_image

    x = load_image(files / "photo.png", Preprocessing(size=HW, crop=(HW, HW)))
    want = Explainer(str(files / "small.onnx"), method="ig", steps=4).explain(x)
    np.testing.assert_allclose(raw, want.attributions, rtol=0, atol=1e-6 * np.abs(want.attributions).max())
    assert record["target"] == int(want.target[0])


def test_size_as_height_and_width(files, tmp_path, capfd):
    """--size H W (documented: 'shorter side (one number) or H W') resizes to exactly H x W."""
    code, _, err = cli(capfd, "explain", files / "small.onnx", files / "other.png", "--out", tmp_path / "o",
                       "--steps", "2", "--size", str(HW), str(HW))
    assert code == 0, err
    assert len(json.loads((tmp_path / "o" / "summary.json").read_text())["explained"]) == 1


def test_one_good_one_bad_image(files, tmp_path, capfd):
    out = tmp_path / "out"
    code, stdout, err = cli(capfd, "explain", files / "small.onnx", files / "photo.png", files / "notes.png",
                            "--out", out, "--steps", "2", *PREP)
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [pathlib.Path(r["image"]).name for r in summary["explained"]] == ["photo.png"]
    assert [pathlib.Path(r["image"]).name for r in summary["skipped"]] == ["notes.png"]
    assert "notes.png" in stdout + err
    for path in summary["explained"][0]["files"].values():
        assert pathlib.Path(path).is_file()
    assert not list(out.glob("notes.*"))


# ------------------------------------------------------------------------ bad input: one line, exit 2
BAD_EXPLAIN = {
    "missing model": (["explain", "{d}/nope.onnx", "{d}/photo.png", *PREP], "nope.onnx"),
    "model is not onnx": (["explain", "{d}/photo.png", "{d}/photo.png", *PREP], "photo.png"),
    "missing image": (["explain", "{d}/small.onnx", "{d}/missing.png", *PREP], "missing.png"),
    "not an image": (["explain", "{d}/small.onnx", "{d}/notes.png", *PREP], "notes.png"),
    "size mismatch": (["explain", "{d}/small.onnx", "{d}/photo.png", "--size", "20", "--crop", "20", "20"], "16"),
    # (no preprocessing flags, and --size alone, now take the model's fixed size: tests/test_intake.py)
    "preset of another size": (["explain", "{d}/small.onnx", "{d}/photo.png", "--preset", "imagenet"], "224"),
    "target out of range": (["explain", "{d}/small.onnx", "{d}/photo.png", *PREP, "--target", str(CLASSES)],
                            str(CLASSES)),
    "zero steps": (["explain", "{d}/small.onnx", "{d}/photo.png", *PREP, "--steps", "0"], "steps"),
    "too many steps": (["explain", "{d}/small.onnx", "{d}/photo.png", *PREP, "--steps", "100001"], "steps"),
    "bad memory budget": (["explain", "{d}/small.onnx", "{d}/photo.png", *PREP, "--memory-budget", "lots"], "lots"),
}


@pytest.mark.parametrize("case", sorted(BAD_EXPLAIN))
def test_bad_input_is_one_line_and_exit_2(files, tmp_path, capfd, case):
    argv, mention = BAD_EXPLAIN[case]
    code, _, err = cli(capfd, *[a.format(d=files) for a in argv], "--out", tmp_path / "out")
    line = one_error_line(err)
    assert code == 2, line
    assert mention in line


def test_unknown_method_is_an_argparse_error(files, tmp_path, capfd):
    code, _, err = cli(capfd, "explain", files / "small.onnx", files / "photo.png", "--out", tmp_path,
                       "--method", "saliency", *PREP)
    assert code == 2
    # argparse prints its usage block, then one error line naming the choice and the valid ones
    last = err.strip().splitlines()[-1]
    assert "saliency" in last and "gnl_ig" in last and "Traceback" not in err


def test_explain_keeps_existing_results(files, tmp_path, capfd):
    out = tmp_path / "out"
    assert cli(capfd, "explain", files / "small.onnx", files / "photo.png", "--out", out, "--steps", "2", *PREP)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "photo.gnl_ig.heatmap.png" in before
    code, _, err = cli(capfd, "explain", files / "small.onnx", files / "photo.png", "--out", out, "--steps", "3",
                       "--target", "1", *PREP)
    assert code == 2 and "overwrite" in one_error_line(err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    code, _, err = cli(capfd, "explain", files / "small.onnx", files / "photo.png", "--out", out, "--steps", "3",
                       "--target", "1", "--overwrite", *PREP)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["explained"][0]["target"] == 1


# ------------------------------------------------------------------------ convert
def recipe(stdout: str) -> str:
    """The Python lines of the feeding recipe that `convert` prints."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("feed it with"))
    body = [line for line in lines[start + 1:] if line.startswith("  ") and not line.strip().startswith("(")]
    return textwrap.dedent("\n".join(body))


@pytest.mark.parametrize("method", ["gnl_ig", "ig"])
def test_convert_runs_in_bare_onnxruntime_as_printed(files, tmp_path, capfd, method):
    out = tmp_path / "attribution.onnx"
    code, stdout, err = cli(capfd, "convert", files / "small.onnx", "-o", out, "--method", method)
    assert code == 0, err
    assert out.is_file()
    onnx.checker.check_model(str(out))
    images = np.random.default_rng(2).standard_normal((2, 3, HW, HW)).astype(F32)
    namespace = {"images": images}
    exec(compile(recipe(stdout), "recipe", "exec"), namespace)  # noqa: S102
    attribution, scores, target = namespace["attribution"], namespace["scores"], namespace["target"]
    # The recipe is 32 Gauss-Legendre steps from a zero baseline on the top-1 class.
    want = Explainer(str(files / "small.onnx"), method=method, steps=32).explain(images)
    np.testing.assert_array_equal(target, want.target)
    np.testing.assert_allclose(scores, want.scores, rtol=1e-6)
    np.testing.assert_allclose(attribution, want.attributions, rtol=0, atol=1e-5 * np.abs(want.attributions).max())


def test_convert_keeps_an_existing_file(files, tmp_path, capfd):
    out = tmp_path / "taken.onnx"
    out.write_bytes(b"precious")
    code, _, err = cli(capfd, "convert", files / "small.onnx", "-o", out)
    assert code == 2 and "overwrite" in one_error_line(err)
    assert out.read_bytes() == b"precious"
    code, _, err = cli(capfd, "convert", files / "small.onnx", "-o", out, "--overwrite")
    assert code == 0, err
    onnx.checker.check_model(str(out))


def test_convert_missing_model(tmp_path, capfd):
    code, _, err = cli(capfd, "convert", tmp_path / "nope.onnx", "-o", tmp_path / "x.onnx")
    assert code == 2 and "nope.onnx" in one_error_line(err)
    assert not (tmp_path / "x.onnx").exists()


# ------------------------------------------------------------------------ inspect
def test_inspect_supported_model(files, capfd):
    code, out, err = cli(capfd, "inspect", files / "small.onnx")
    assert code == 0, err
    assert "Relu 2" in out and "MaxPool 1" in out and "UNSUPPORTED" not in out
    code, out, _ = cli(capfd, "inspect", files / "small.onnx", "--json")
    report = json.loads(out)
    assert code == 0 and report["gated_paper"] == {"Relu": 2, "MaxPool": 1} and report["unsupported"] == {}
    assert report["input"] == "image" and report["output"] == "logits"


def test_inspect_unsupported_model(files, capfd):
    code, out, err = cli(capfd, "inspect", files / "custom.onnx")
    assert code == 1, err
    assert "UNSUPPORTED" in out and "Foo" in out and "custom_foo" in out
    code, out, _ = cli(capfd, "inspect", files / "custom.onnx", "--json")
    unsupported = json.loads(out)["unsupported"]
    assert code == 1 and len(unsupported) == 1
    ((op, nodes),) = unsupported.items()
    assert op.endswith("Foo") and nodes == ["custom_foo"]


def test_convert_unsupported_model_fails_with_one_line(files, tmp_path, capfd):
    code, _, err = cli(capfd, "convert", files / "custom.onnx", "-o", tmp_path / "x.onnx")
    assert code == 1 and "Foo" in one_error_line(err)
    assert not (tmp_path / "x.onnx").exists()


def test_zbox_bounds_come_from_the_preprocessing(files, tmp_path, capfd):
    """lrp_epsilon_gamma_box from the CLI takes ZBox's bounds from the preprocessing (pixels 0 and
    255 through the preset's mean/std), as the API given those bounds, not the default 0..1."""
    from gnl_onnx.images import load_image
    from gnl_onnx.presets import get_preset

    out = tmp_path / "out"
    code, _, err = cli(capfd, "explain", files / "small.onnx", files / "photo.png", "--out", out,
                       "--method", "lrp_epsilon_gamma_box", "--preset", "imagenet", *PREP)
    assert code == 0, err
    raw = np.load(json.loads((out / "summary.json").read_text())["explained"][0]["files"]["npy"])
    from dataclasses import replace

    prep = replace(get_preset("imagenet").preprocessing, size=HW, crop=(HW, HW))
    low, high = prep.bounds()
    np.testing.assert_allclose(low.ravel(), (0 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225], rtol=1e-6)
    np.testing.assert_allclose(high.ravel(), (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225], rtol=1e-6)
    x = load_image(files / "photo.png", prep)
    model = str(files / "small.onnx")
    want = Explainer(model, method="lrp_epsilon_gamma_box", bounds=(low, high)).explain(x).attributions
    np.testing.assert_allclose(raw, want, rtol=0, atol=1e-6 * np.abs(want).max())
    unit = Explainer(model, method="lrp_epsilon_gamma_box").explain(x).attributions  # bounds 0..1
    assert np.abs(raw - unit).max() > 0.01 * np.abs(want).max()
