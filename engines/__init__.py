"""Inference-engine tooling of l2s (export, build, run), installed as ``l2s.engines``.

The exporters need the optional ``engines`` extra (onnx, onnxruntime, onnxscript).
"""
