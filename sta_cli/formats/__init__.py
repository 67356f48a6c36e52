"""The format writers behind `sta export` (its coordinator is `sta_cli.tasks.export`).

graph.py        the graph's contract: input, outputs (logits, kept positions), example inputs
onnx.py         torch.onnx.export (dynamo), graph report, ONNX Runtime runs
torchscript.py  torch.jit.trace (.pt) and torch.export (.pt2)
validate.py     an export against the PyTorch model: cases, checks, near ties, the printed block
quantize.py     int8 dynamic quantisation of the linear layers, validated
"""
