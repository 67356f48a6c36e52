"""What running a model needs, whichever task runs it: ONNX Runtime sessions."""
