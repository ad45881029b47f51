"""gnl-onnx inspect --cost: the planner measures on this machine and extrapolates per row. Its
numbers are timings, so the tests check what they are made of (memory per step is the Explainer's,
the floor is 2 x steps forward passes, single-point methods run one step), never how fast."""
from __future__ import annotations

import json

import onnx
import pytest
from onnx_builders import relu_cnn
from onnx_builders import run_cli as cli

from gnl_onnx import Explainer, UsageError
from gnl_onnx.planning import plan_cost


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "cnn.onnx"
    onnx.save(relu_cnn(0, 16, 5), path)
    return path


def test_plan_is_made_of_the_runtimes_own_numbers(model_path):
    methods = ["gnl_ig", "gradient", "smoothgrad", "deeplift", "lrp_epsilon_plus_flat", "gradcam"]
    plan = plan_cost(str(model_path), methods, steps=16, threads=1)
    assert plan.forward_seconds > 0
    by_method = {m.method: m for m in plan.methods}
    # path methods run their steps; the others a fixed set of points, whatever --steps says
    assert {m: by_method[m].steps for m in methods} == {"gnl_ig": 16, "smoothgrad": 16, "gradient": 1,
                                                         "deeplift": 1, "lrp_epsilon_plus_flat": 1, "gradcam": 1}
    assert all(by_method[m].times_floor is None for m in ("gradient", "deeplift", "gradcam"))
    assert all(m.seconds_per_image > 0 for m in plan.methods)
    for method in methods:  # the memory a run is planned with is the Explainer's own
        assert by_method[method].bytes_per_step == Explainer(str(model_path), method=method).row_bytes
    table = plan.table()
    assert all(m in table for m in ("gnl_ig", "gradient", "smoothgrad", "floor at 16 steps"))


def test_cli_cost_as_json_and_text(model_path, capfd):
    code, out, err = cli(capfd, "inspect", model_path, "--cost", "--methods", "ig,gradcam", "--steps", "8",
                         "--threads", "1", "--json")
    assert code == 0, err
    cost = json.loads(out)["cost"]
    assert [m["method"] for m in cost["methods"]] == ["ig", "gradcam"] and cost["steps"] == 8
    code, out, err = cli(capfd, "inspect", model_path, "--cost", "--methods", "gradient", "--threads", "1")
    assert code == 0 and "s/image" in out and "MB/step" in out


def test_a_model_of_free_image_size_cannot_be_planned(tmp_path):
    model = relu_cnn(0, 16, 5)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].Clear()
    dims[2].dim_param = "H"
    onnx.save(model, tmp_path / "free.onnx")
    with pytest.raises(UsageError, match="image size is not fixed"):
        plan_cost(str(tmp_path / "free.onnx"), ["ig"], steps=4)
    with pytest.raises(UsageError, match="steps"):
        plan_cost(str(tmp_path / "free.onnx"), ["ig"], steps=0)
