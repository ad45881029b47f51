"""Run settings as one value (gnl_onnx/settings.py): validated once where they enter, handed down
as they are; the keyword APIs make the same value; the memory budget has one auto rule."""
from __future__ import annotations

import numpy as np
import pytest

import gnl_onnx
from gnl_onnx import Settings, UsageError
from gnl_onnx.budget import AUTO_RUN_BYTES, Budget, planned_run_bytes
from gnl_onnx.cli import build_parser
from gnl_onnx.cli_commands import run_settings
from onnx_builders import relu_cnn


@pytest.mark.parametrize("change, message", [
    ({"method": "nope"}, "unknown method"), ({"steps": 0}, "steps must be"), ({"steps": 2.5}, "steps must be"),
    ({"integration": "simpson"}, "unknown integration"), ({"gate": "some"}, "unknown gate"),
    ({"output": "softmax"}, "unknown output"), ({"seed": -1}, "seed must be"),
    ({"memory_budget": "lots"}, "cannot read memory budget"), ({"layout": "CHW"}, "layout must be")])
def test_bad_settings_are_refused_where_they_enter(change, message):
    with pytest.raises(UsageError, match=message):
        Settings(**change)
    with pytest.raises(UsageError, match=message):
        Settings().replace(**change)


def test_settings_are_frozen_and_replace_makes_a_checked_copy():
    s = Settings(method="gradcam", layer="layer4")
    assert s.layer == ("layer4",)
    with pytest.raises(AttributeError):
        s.steps = 3
    assert s.for_method("ig").layer is None and s.for_method("scorecam").layer == ("layer4",)
    assert s.replace(steps=8).steps == 8 and s.steps == 32
    with pytest.raises(UsageError, match="unknown setting"):
        Settings.from_options(step=3)


def test_the_explainer_runs_the_same_from_keywords_and_from_settings():
    model = relu_cnn(seed=1, hw=12, classes=4)
    images = np.random.default_rng(2).uniform(0, 1, (2, 3, 12, 12)).astype(np.float32)
    a = gnl_onnx.Explainer(model, method="ig", steps=6, baseline="black", black=0.25).explain(images)
    b = gnl_onnx.Explainer(model, settings=Settings(method="ig", steps=6, baseline="black", black=0.25)).explain(images)
    np.testing.assert_array_equal(a.attributions, b.attributions)
    np.testing.assert_array_equal(a.delta, b.delta)


def test_one_auto_rule_for_the_budget():
    auto = Budget.resolve("auto")
    assert auto.auto and auto.bytes <= AUTO_RUN_BYTES and auto.note.startswith("auto")
    given = Budget.resolve("2GB")
    assert not given.auto and given.bytes == 2 << 30 and given.note == "2.0GB (given)"
    assert auto.fit(auto.bytes * 2, "auto").bytes == auto.bytes * 2  # auto grows to the least that works
    with pytest.raises(UsageError, match="too small"):
        Budget.resolve("1KB").fit(4096, "1KB")
    assert planned_run_bytes("auto") == AUTO_RUN_BYTES and planned_run_bytes("512MB") == 512 << 20


def test_the_cli_turns_flags_into_settings():
    args = build_parser().parse_args(["explain", "m.onnx", "a.png", "--method", "smoothgrad:ig", "--steps", "8",
                                      "--memory-budget", "1GB", "--out", "o"])
    s = run_settings(args)
    assert (s.method, s.steps, s.memory_budget, s.baseline) == ("smoothgrad:ig", 8, "1GB", "zeros")
