"""The student beyond kdrun: ONNX export, INT8 quantization, accuracy and latency under ONNX Runtime.

Needs the optional extra `kdrun[deploy]` (onnx, onnxruntime, onnxscript); every module imports those
libraries lazily through `kdrun.deploy.extra.require`, so a missing extra is one line with the install
command, never an ImportError at startup.
"""
