"""The transformer engine: checkpoints, pair encoding, batching, torch/ONNX backends, calibration."""
