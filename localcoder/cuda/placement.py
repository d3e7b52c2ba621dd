"""Which GPU holds which layers: a model too large for one GPU is split into contiguous runs of layers (llama.cpp's
layer split), each device's share of the bytes proportional to the memory it has free. Only the hidden state
(one row per token) crosses between devices."""

from __future__ import annotations

from localcoder.errors import UserError

GIB = 1 << 30
RESERVE = 2 * GIB  # per device, beyond the weights: KV cache, DeltaNet state, activations, CUDA graphs


def split_layers(layer_bytes: list[int], capacities: list[int], first_bytes: int = 0, last_bytes: int = 0) -> list[int]:
    """Device index of each layer (non-decreasing). first_bytes (the embedding) sits on device 0 and last_bytes
    (output norm and projection) on the last device. Each layer goes to the device whose proportional share of
    the total holds the layer's middle byte. Raises UserError when a device would get more than its capacity."""
    total = sum(layer_bytes) + first_bytes + last_bytes
    if total > sum(capacities):
        raise UserError(f"the model needs {total / GIB:.1f} GiB but the GPUs have {sum(capacities) / GIB:.1f} GiB "
                        "free: use a smaller quant or the hybrid profile")
    bounds, running = [], 0
    for c in capacities:
        running += c
        bounds.append(running * total / sum(capacities))
    plan, used, device = [], first_bytes, 0
    for size in layer_bytes:
        while device < len(capacities) - 1 and used + size / 2 >= bounds[device]:
            device += 1
        plan.append(device)
        used += size
    loads = [first_bytes if d == 0 else 0 for d in range(len(capacities))]
    loads[-1] += last_bytes
    for d, size in zip(plan, layer_bytes):
        loads[d] += size
    for d, (load, cap) in enumerate(zip(loads, capacities)):
        if load > cap:
            raise UserError(f"GPU {d} would hold {load / GIB:.1f} GiB of layers but has {cap / GIB:.1f} GiB free: "
                            "free memory on it or use a smaller quant")
    return plan


def default_devices(model_bytes: int) -> list[str]:
    """The first GPU when the model fits it with RESERVE to spare, else every visible GPU."""
    import torch

    count = torch.cuda.device_count()
    if count <= 1 or model_bytes + RESERVE <= torch.cuda.mem_get_info(0)[0]:
        return ["cuda:0"]
    return [f"cuda:{i}" for i in range(count)]


def free_bytes(device: str) -> int:
    """What a device can take for weights: free memory less RESERVE (unbounded for the CPU, used by tests)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return 1 << 62
    return max(0, torch.cuda.mem_get_info(dev)[0] - RESERVE)
