"""Export (ONNX, TorchScript, manifest) and the controller-side runtime. Lands with the export issue."""
