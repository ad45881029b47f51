import importlib.util
import os
import pathlib
import sys

import pytest

# One torch thread: torch's OpenMP workers spin-wait, and beside onnxruntime's own pool (or any
# other busy process on a 2-core machine) a reference backward pass stalled for minutes.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Make the repo-root `models` package importable without installing it.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# The contributors' subset, `pytest -m quick` (README, Development): every test that is not a slow
# sweep, less the ones below, which repeat a check the subset already makes once on a smaller case
# (a CAM anchor per further architecture, a second signal, the Ray copies of the local audit
# tests). Each rule family (test_rules_fd, test_pad_modes, the LRP and DeepLIFT rule tests), each
# method (test_attribution's per-method graph checks, test_explainer) and each command (test_cli,
# test_check, test_audit's local engine, evaluate through test_metrics and test_road) stays in.
NOT_QUICK = (
    "tests/test_cam.py::test_cams_match_anchor[",  # resnet18-legacy kept, below
    "tests/test_cam.py::test_vgg16_default_layer_is_features_output",
    "tests/test_hostile.py::test_killed_run_keeps_earlier_results_and_leaves_no_partial_file[sigint]",
    "tests/test_audit.py::test_ray_",
    "tests/test_relevance.py::test_lrp_matches_zennit[densenet121-",
    "tests/test_relevance.py::test_lrp_explainer_equals_vjp[lrp_epsilon_gamma_box]",
    # robustness and data rather than a rule, method or command (36, 23, 13 and 22 s), and the one
    # Keras test (it imports TensorFlow); the dynamo copies of the intake and pad tests
    "tests/test_datasets.py::test_fashion_cnn_trains_exports_and_learns",
    "tests/test_hostile.py::test_killed_run_keeps_earlier_results_and_leaves_no_partial_file[sigterm]",
    "tests/test_audit.py::test_killed_run_resumes_where_it_stopped",
    "tests/test_fuzz.py::",
    "tests/test_segmentation.py::test_segment_region_gradient_matches_torch[dynamo]",  # torch.export: 30-80 s
    "tests/test_torchvision_detectors.py::test_box_score_gradient_matches_torch[fcos_resnet50_fpn]",
    "tests/test_torchvision_detectors.py::test_box_score_gradient_matches_torch[retinanet_resnet50_fpn]",
    "tests/test_ultralytics_yolo.py::test_box_score_gradient_matches_torch",  # a child process with torch
    "tests/test_keras_exports.py::",
    "tests/test_intake.py::test_torch_exports_without_dynamic_axes_match_autograd[False-dynamo]",
    "tests/test_intake.py::test_torch_exports_without_dynamic_axes_match_autograd[True-dynamo]",
    "tests/test_pad_modes.py::test_pad_gradient_matches_torch_autograd[dynamo-",
)
QUICK_ANYWAY = ("tests/test_cam.py::test_cams_match_anchor[resnet18-legacy]",)


# Under pytest-xdist (the README's `-n 2`, with pyproject's `--dist loadfile --no-loadscope-reorder`)
# each file runs whole on one worker, and the files are handed out longest first, so that the two
# workers finish together instead of one waiting on a long sweep dealt last (longest processing
# time first). Seconds per file on 2 cores, from the whole suite's --durations (2026-12-04); a
# file not listed counts as 0 s and keeps its collection order. Only the order depends on these
# numbers, never a result.
FILE_SECONDS: dict[str, float] = {
    "tests/test_keras_exports.py": 480, "tests/test_architectures.py": 420, "tests/test_relevance.py": 320,
    "tests/test_cam.py": 300, "tests/test_transformers.py": 140, "tests/test_audit.py": 90,
    "tests/test_real_models.py": 90, "tests/test_explainer.py": 80, "tests/test_hostile.py": 60,
}


def _xdist_worker() -> str | None:
    return os.environ.get("PYTEST_XDIST_WORKER")


def _sessions_that_do_not_spin():
    """Two workers on 2 cores each run onnxruntime with its default 2 intra-op threads, which
    spin-wait between parallel sections by default: 4 threads on 2 cores then burn each other's
    time. Without spinning an idle thread sleeps, and a session still takes both cores when the
    other worker is not using them. Tests only; the package's sessions are the user's to tune."""
    import onnxruntime as ort

    original = ort.InferenceSession.__init__

    def init(self, path_or_bytes, sess_options=None, *args, **kwargs):
        options = sess_options if sess_options is not None else ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        original(self, path_or_bytes, options, *args, **kwargs)

    ort.InferenceSession.__init__ = init


if _xdist_worker() and importlib.util.find_spec("onnxruntime"):
    _sessions_that_do_not_spin()


def pytest_collection_modifyitems(config, items):
    # The slow sweeps last (a stable sort: the order stays otherwise): contributors see the fast
    # tests' failures first, and the exports the sweeps need are written in the background meanwhile
    # (pytest_collection_finish). Under xdist the files go longest first (FILE_SECONDS), each file's
    # slow sweeps still last within it.
    if _xdist_worker():
        items.sort(key=lambda item: (-FILE_SECONDS.get(item.nodeid.split("::")[0], 0.0),
                                     item.get_closest_marker("slow") is not None))
    else:
        items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
    for item in items:
        if item.get_closest_marker("slow"):
            continue
        if item.nodeid in QUICK_ANYWAY or not item.nodeid.startswith(NOT_QUICK):
            item.add_marker(pytest.mark.quick)


# The tests whose `arch` (and `exporter`, `opset`) parameters name a torchvision export they load.
_TORCHVISION_EXPORTS = {"test_vjp_matches_torch", "test_transformer_vjp_matches_torch", "test_cams_match_anchor",
                        "test_lrp_matches_zennit", "test_deeplift_sums_to_the_gap"}


def pytest_collection_finish(session):
    """Start the exports the selected tests will load, in background children, as soon as the
    tests are known, so that exporting (mostly one core of Python) overlaps the tests on a 2-core
    machine: the torchvision exports in the order the tests need them (models.torchvision_zoo.
    start_exports; a test that gets there first exports its model itself), and the Keras exports
    (one child for all models, about six minutes of tf2onnx), which tests/test_keras_exports.py's
    `exports` fixture joins (keras_zoo.export_all). A test (or an xdist worker) that wants an
    export the child is writing waits for it on the export's lock (models/cache.exclusive)."""
    if _xdist_worker() not in (None, "gw0"):  # every worker collects every test: one starts the exporters
        return
    if importlib.util.find_spec("torchvision"):
        from models import torchvision_zoo

        cases = []
        for item in session.items:
            params = getattr(item, "callspec", None) and item.callspec.params
            if getattr(item, "originalname", "") in _TORCHVISION_EXPORTS and params.get("arch") in torchvision_zoo.SIZES:
                case = (params["arch"], params.get("exporter", "legacy"), params.get("opset"))
                if case not in cases:
                    cases.append(case)
        torchvision_zoo.start_exports(cases)
        from models import torchvision_detectors

        detectors = []
        for item in session.items:  # the detectors' tests name theirs by `detector`
            params = getattr(item, "callspec", None) and item.callspec.params
            if params and params.get("detector") in torchvision_detectors.DETECTORS and \
                    params["detector"] not in detectors:
                detectors.append(params["detector"])
        torchvision_detectors.start_exports(detectors)
    archs = [item.callspec.params["arch"] for item in session.items
             if getattr(item, "originalname", "") == "test_vjp_matches_tensorflow"]
    if archs and all(importlib.util.find_spec(m) for m in ("tensorflow", "tf2onnx")):
        from models import keras_zoo

        keras_zoo.start_export_all([a for a in archs if a in keras_zoo.ARCHS])
