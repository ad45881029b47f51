"""Model builders and ONNX export helpers used by the tests and tools."""
