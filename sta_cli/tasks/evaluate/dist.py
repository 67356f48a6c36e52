"""`sta eval` under torchrun: this process's rank, its device, and the collective steps.

Ranks advance in lockstep, one chunk per step; after each step rank 0 gathers the new predictions
and appends them to OUT. Only rank 0 touches OUT.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ...errors import StaError
from ...runtime.device import torch_device


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owned: bool = False  # we initialised the process group, so we tear it down

    @classmethod
    def from_env(cls, device: str | None = None) -> Dist:
        """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on GPU, gloo on CPU). The
        device follows the one rule of runtime.device (auto: cuda:LOCAL_RANK when a GPU is visible)."""
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch_device(device)
        cuda = dev.type == "cuda"
        if cuda:
            torch.cuda.set_device(dev)
        if world <= 1:
            return cls(device=dev)
        owned = not dist.is_initialized()
        if owned:
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, dev, owned)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owned = False

    def all_gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather(self, obj) -> list | None:
        """Rank 0 gets every rank's object (in rank order), the others None."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, fn):
        """Run fn on every rank; if it raises StaError anywhere, raise the lowest rank's error everywhere
        (so a bad input stops every rank with the same message instead of leaving some waiting)."""
        try:
            result, error = fn(), None
        except StaError as e:
            result, error = None, str(e)
        errors = [e for e in self.all_gather(error) if e is not None]
        if errors:
            raise StaError(errors[0])
        return result

    def rank0(self, fn):
        """fn runs on rank 0 only (it touches OUT); its StaError or result reaches every rank."""
        result, error = None, None
        if self.main:
            try:
                result = fn()
            except StaError as e:
                error = str(e)
        result, error = self.broadcast((result, error))
        if error is not None:
            raise StaError(error)
        return result
