"""tools/reproduce_measures.py: which methods and measures each network gets from --exclude and
--method-options (the per-network reductions the results doc states), and one tiny end-to-end run
whose tables rank by Evaluation.agreement."""
import argparse
import importlib.util
import pathlib

import pytest

TOOL = pathlib.Path(__file__).resolve().parents[1] / "tools" / "reproduce_measures.py"


def tool():
    spec = importlib.util.spec_from_file_location("reproduce_measures", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_applies_exclusions_and_options_per_network():
    r = tool()
    args = argparse.Namespace(
        methods="gradient,rise,random", measures="deletion,irof,max_sensitivity,sparseness",
        method_options="efficientnet-lite*:rise:masks=1000",
        exclude="*:rise:max_sensitivity,efficientnet-lite*|orientation:irof,mnist:random")
    lite = r.plan("efficientnet-lite1", args)
    assert lite == {"gradient": ("gradient", ["deletion", "max_sensitivity", "sparseness"]),
                    "rise": ("rise:masks=1000", ["deletion", "sparseness"]),
                    "random": ("random", ["deletion", "max_sensitivity", "sparseness"])}
    mnist = r.plan("mnist", args)
    assert list(mnist) == ["gradient", "rise"]  # random dropped on MNIST only
    assert mnist["rise"] == ("rise", ["deletion", "irof", "sparseness"])  # no options, irof kept


@pytest.mark.slow
def test_quick_run_writes_ranked_tables(tmp_path):
    r = tool()
    assert r.main(["--quick", "--measures", "deletion,insertion,sparseness", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "tables.md").read_text()
    assert "### mnist" in text and "| random |" in text and "Spearman correlation" in text
    assert (tmp_path / "mnist" / "occlusion.pkl").is_file()
