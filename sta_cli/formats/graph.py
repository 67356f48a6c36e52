"""The module every format exports, and the names and shapes of its inputs and outputs.

Graph contract (the same for ONNX, TorchScript and torch.export):
  input   pixel_values      (batch, C, T, H, W)  float32 (float16 with --fp16), normalised as
                                                 config.json "preprocessing" says
  output  logits            (batch, classes)     same float type as the input
  output  kept_positions_s  (batch, tokens_s)    int64, one output per STA stage s = 1, 2, 3: the
                                                 original token index (t * h * w + y * w + x on the
                                                 n_t x h x w token grid) of every token kept after
                                                 stage s, in the order the network holds them.
One output per stage rather than one concatenated tensor: the stages keep different numbers of
tokens, and separate outputs need no split table downstream. An unpruned model (r1 = 0) has
only `logits`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

INPUT_NAME = "pixel_values"
BATCH_DIM = "batch"
# A dynamic-batch graph is traced at TRACE_BATCH and validated at VALIDATION_BATCHES, which do not
# include it: a batch size baked into the graph fails validation. Validation's largest batch sets
# the peak memory of exporting a big model (ONNX Runtime's run), hence 2 rather than 3.
TRACE_BATCH = 3
VALIDATION_BATCHES = (1, 2)


class ExportModule(nn.Module):
    """pixel_values -> (logits, kept_positions_1, ..., kept_positions_S) for a pruned model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        logits, kept = self.model.forward_with_positions(pixel_values)
        return (logits, *kept)


def output_names(model: nn.Module) -> list[str]:
    return ["logits"] + [f"kept_positions_{s + 1}" for s in range(len(model.stages))]


def input_shape(model: nn.Module, batch: int | str) -> list:
    cfg = model.cfg
    return [batch, cfg.in_chans, cfg.num_frames, cfg.image_size, cfg.image_size]


def io_spec(model: nn.Module, batch: int | None, dtype: torch.dtype) -> dict:
    """Names, shapes and dtypes of the graph's inputs and outputs (batch = None: dynamic, named "batch")."""
    b = batch if batch is not None else BATCH_DIM
    float_type = str(dtype).removeprefix("torch.")
    outputs = [{"name": "logits", "shape": [b, model.cfg.num_classes], "dtype": float_type}]
    for name, tokens in zip(output_names(model)[1:], model.tokens_per_stage[1:]):
        outputs.append({"name": name, "shape": [b, tokens], "dtype": "int64"})
    return {"inputs": [{"name": INPUT_NAME, "shape": input_shape(model, b), "dtype": float_type}], "outputs": outputs}


def example_input(model: nn.Module, batch: int, dtype: torch.dtype, device="cpu", seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(input_shape(model, batch), generator=gen).to(device=device, dtype=dtype)


@torch.no_grad()
def warm_up(model: nn.Module, x: torch.Tensor) -> None:
    """One eager forward before tracing: fills cached constants (STA's fixed random draws for
    --first-group random | grid and the random score) so every tracer records them as constants."""
    model(x)


def root_cause(e: BaseException) -> str:
    """First line of the innermost exception (the exporter wraps the real error in several layers)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
