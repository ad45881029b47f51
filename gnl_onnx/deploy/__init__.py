"""Converted models where they are deployed: several methods in one model with the weights stored
once (combine), a static web page running it in onnxruntime-web (web), and a model repository for
NVIDIA Triton's ONNX Runtime backend (triton). `gnl-onnx convert --methods/--web/--triton`."""
from .combine import combined_info, combined_model, combined_name, parse_method_list
from .triton import triton_config, write_triton
from .web import runtime_folder, write_web

__all__ = ["combined_info", "combined_model", "combined_name", "parse_method_list", "runtime_folder",
           "triton_config", "write_triton", "write_web"]
