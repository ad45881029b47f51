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
    plan = plan_cost(str(model_path), ["gnl_ig", "gradient", "smoothgrad"], steps=16, threads=1)
    assert plan.forward_seconds > 0 and plan.floor_seconds == pytest.approx(2 * 16 * plan.forward_seconds)
    by_method = {m.method: m for m in plan.methods}
    assert by_method["gnl_ig"].steps == 16 and by_method["smoothgrad"].steps == 16
    assert by_method["gradient"].steps == 1 and by_method["gradient"].times_floor is None
    path = by_method["gnl_ig"]
    assert path.seconds_per_image > 0
    assert path.times_floor == pytest.approx(path.seconds_per_image / plan.floor_seconds)
    assert path.bytes_per_step == Explainer(str(model_path), method="gnl_ig").row_bytes
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
