"""The legacy fused DeltaNet input projection: one `ssm_in.weight` per DeltaNet layer instead of `attn_qkv` +
`attn_gate` (older llama.cpp converters wrote it; Ollama's loader expects it; llama.cpp still runs it).

`ssm_in` keeps Hugging Face's in_proj_qkvz row order — per key head g: [q_g (dk), k_g (dk), v_g (r*dv), z_g (r*dv)]
— while attn_qkv holds [q_0..q_{nk-1}, k_0.., v_0..] and attn_gate [z_0..]. Both directions are a permutation of
whole rows, so quantized rows move as bytes, unchanged.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from localcoder.errors import UserError


def fused_order(nk: int, dk: int, nv: int, dv: int) -> np.ndarray:
    """For each row of ssm_in, its index in the stacked rows [attn_qkv; attn_gate]."""
    r_dv = nv // nk * dv
    z0 = 2 * nk * dk + nk * r_dv  # attn_gate's first row in the stack
    order = []
    for g in range(nk):
        order += [*range(g * dk, (g + 1) * dk), *range(nk * dk + g * dk, nk * dk + (g + 1) * dk),
                  *range(2 * nk * dk + g * r_dv, 2 * nk * dk + (g + 1) * r_dv), *range(z0 + g * r_dv, z0 + (g + 1) * r_dv)]
    return np.array(order)


def unfuse(tensors: dict, args, raw_of) -> dict:
    """Stand-ins for attn_qkv and attn_gate of every DeltaNet layer that has only ssm_in (tensors: name -> gguf-py
    tensor; raw_of(tensor) -> its stored rows). The rows are copied into their split order."""
    inverse = np.argsort(fused_order(args.nk, args.dk, args.nv, args.dv))
    qkv_rows = 2 * args.nk * args.dk + args.nv * args.dv
    out = {}
    for i, recurrent in enumerate(args.recurrent):
        fused = tensors.get(f"blk.{i}.ssm_in.weight")
        if not recurrent or fused is None or f"blk.{i}.attn_qkv.weight" in tensors:
            continue
        rows = raw_of(fused).reshape(int(fused.shape[1]), -1)
        if len(rows) != len(inverse):
            raise UserError(f"blk.{i}.ssm_in.weight has {len(rows)} rows, the geometry needs {len(inverse)}")
        stacked = rows[inverse]
        for name, part in (("attn_qkv", stacked[:qkv_rows]), ("attn_gate", stacked[qkv_rows:])):
            out[f"blk.{i}.{name}.weight"] = SimpleNamespace(tensor_type=fused.tensor_type, data=part,
                                                            shape=(int(fused.shape[0]), len(part)))
    return out


def write_legacy(src: Path, out: Path, show_progress: bool = True) -> Path:
    """Copy the GGUF `src` to `out` with each DeltaNet layer's attn_qkv and attn_gate fused into ssm_in."""
    from gguf import GGUFWriter

    from localcoder.gguf_model import copy_metadata, load_fields, model_args
    from quant.gguf_out import atomic_path, check_destination

    fields, files = load_fields(src)
    args = model_args(fields)
    tensors = {t.name: t for t in files.tensors}
    check_destination(out, sum(int(t.n_bytes) for t in files.tensors))
    order = fused_order(args.nk, args.dk, args.nv, args.dv)
    with atomic_path(out) as tmp:
        writer = GGUFWriter(tmp, fields["general.architecture"])
        copy_metadata(files, writer)
        for t in files.tensors:
            if t.name.endswith(".attn_gate.weight") and t.name.replace("attn_gate", "attn_qkv") in tensors:
                continue  # fused into ssm_in below
            if t.name.endswith(".attn_qkv.weight"):
                gate = tensors[t.name.replace("attn_qkv", "attn_gate")]
                if gate.tensor_type != t.tensor_type:
                    raise UserError(f"{t.name} is {t.tensor_type.name} but its attn_gate is {gate.tensor_type.name}: "
                                    "the fused ssm_in needs one type; write the legacy layout from an F32, F16, "
                                    "BF16 or Q8_0 file and quantize it after")
                stacked = np.concatenate([np.asarray(t.data), np.asarray(gate.data)])
                writer.add_tensor(t.name.replace("attn_qkv", "ssm_in"), np.ascontiguousarray(stacked[order]),
                                  raw_dtype=t.tensor_type)
            else:
                writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=show_progress)
        writer.close()
    return out
