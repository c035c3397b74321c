"""Exporters and engine builders (``evospec.exporters``): ONNX, ONNX Runtime, TensorRT. Filled by the compile work."""
