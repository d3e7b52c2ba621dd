"""How much memory a model needs before it is loaded, and a clear refusal when the machine cannot hold it."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from localcoder.errors import UserError
from localcoder.gguf_model import ModelArgs

GIB = 1 << 30


@dataclass(frozen=True)
class MemoryPlan:
    weights: int  # memory-mapped tensor bytes (page cache: they must fit in RAM to run at speed)
    kv_cache: int  # attention keys and values for n_ctx tokens (float32)
    recurrent_state: int  # DeltaNet conv and delta-rule states
    scratch: int  # activations of one n_batch chunk

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.recurrent_state + self.scratch

    def describe(self) -> str:
        return (f"{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, KV cache {self.kv_cache / GIB:.2f}, "
                f"state {self.recurrent_state / GIB:.2f}, scratch {self.scratch / GIB:.2f})")


def predict_memory(args: ModelArgs, weights: dict, n_ctx: int, n_batch: int) -> MemoryPlan:
    """The memory one session of n_ctx tokens needs, from the geometry and the tensors' sizes."""
    from localcoder.layers import SCORES_BUDGET

    n_attn = sum(not r for r in args.recurrent)
    kv = 2 * n_attn * n_ctx * args.n_head_kv * args.head_dim * 4
    channels = 2 * args.nk * args.dk + args.nv * args.dv
    state = (args.n_layer - n_attn) * (args.nv * args.dk * args.dv + (args.conv_kernel - 1) * channels) * 4
    ff = weights["blk.0.ffn_gate_exps.weight"].shape[1]
    per_token = (8 * args.hidden + 4 * channels + 3 * args.n_expert_used * ff + args.n_expert + args.vocab) * 4
    scratch = n_batch * per_token + 3 * SCORES_BUDGET * 4 + (256 << 20)  # + BLAS slices, numba, Python
    return MemoryPlan(sum(w.nbytes for w in weights.values()), kv, state, scratch)


def check_fits(plan: MemoryPlan) -> None:
    """UserError when the plan exceeds the machine's RAM (weights included) or its free memory (the rest)."""
    vm = psutil.virtual_memory()
    if plan.total > vm.total * 0.95:
        raise UserError(f"this model needs {plan.describe()} but the machine has {vm.total / GIB:.1f} GiB of RAM; "
                        "use a smaller quantization or a smaller context (--ctx-size)")
    if plan.total - plan.weights > vm.available:
        raise UserError(f"the context needs {(plan.total - plan.weights) / GIB:.1f} GiB beyond the weights but only "
                        f"{vm.available / GIB:.1f} GiB is free; use a smaller context (--ctx-size) or free memory")
