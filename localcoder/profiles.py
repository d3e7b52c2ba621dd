"""Hardware profiles: one TOML file per target machine (profiles/ in the repository, shipped in the package).

A profile says how to run Qwen3-Coder-Next on a class of machine: the quantization recipe to make, the engine,
context length, KV cache type, threads, batch sizes, the VRAM expert-cache budget, what the machine must have
(`[requires]`), and placement rules (`[[placement]]`, first match wins) that put each tensor on a device. Every
field is validated on load; a broken file is a one-line UserError naming the file and the field.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from localcoder.errors import UserError

PROFILES_DIR = Path(__file__).with_name("profile_data")  # an installed wheel (pyproject maps profiles/ there)
if not PROFILES_DIR.is_dir():  # a source checkout: profiles/ at the top of the repository
    PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
ENGINES = ("localcoder", "llamacpp")
KV_TYPES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}  # bytes per element
ACCELERATORS = ("none", "cuda", "metal")
DEVICE = re.compile(r"cpu|gpu|cuda:(\d)")


@dataclass(frozen=True)
class Rule:
    """Tensors whose GGUF name matches `tensors` (regex, searched) in `layers` (inclusive range) go to `device`
    ("cpu", "gpu" = the one accelerator, or "cuda:N"). A rule without conditions matches everything."""

    device: str
    tensors: re.Pattern | None = None
    layers: tuple[int, int] | None = None

    def matches(self, name: str, layer: int | None) -> bool:
        if self.tensors is not None and not self.tensors.search(name):
            return False
        if self.layers is not None and (layer is None or not self.layers[0] <= layer <= self.layers[1]):
            return False
        return True


@dataclass(frozen=True)
class Requirements:
    accelerator: str = "none"
    gpus: int = 0
    min_vram_gib: float = 0.0  # per GPU
    min_ram_gib: float = 0.0
    unified_memory: bool | None = None  # True: needs it; False: needs a discrete GPU; None: either


@dataclass(frozen=True)
class Profile:
    """One validated profile; see profiles/README.md for the fields."""

    name: str
    description: str
    recipe: str
    engine: str
    context: int
    kv_cache: str
    threads: int | None  # None: the machine's physical cores
    batch: int
    ubatch: int
    prefix_cache_gib: float
    expert_cache_gib: float
    requires: Requirements
    placement: tuple[Rule, ...]
    path: Path | None = field(default=None, compare=False)

    def device_of(self, name: str, layer: int | None) -> str:
        """The device a tensor goes to (the first rule that matches; the last rule matches everything)."""
        return next(rule.device for rule in self.placement if rule.matches(name, layer))

    @property
    def devices(self) -> list[str]:
        return sorted({rule.device for rule in self.placement})

    @property
    def uses_accelerator(self) -> bool:
        return self.requires.accelerator != "none"


FIELDS = {"name": str, "description": str, "recipe": str, "engine": str, "context": int, "kv_cache": str,
          "threads": (str, int), "batch": int, "ubatch": int, "prefix_cache_gib": (int, float),
          "expert_cache_gib": (int, float), "requires": dict, "placement": list}
REQUIRES = {"accelerator": str, "gpus": int, "min_vram_gib": (int, float), "min_ram_gib": (int, float),
            "unified_memory": bool}
RULE = {"tensors": str, "layers": str, "device": str}


def load_profile(path: Path | str) -> Profile:
    """Read and validate one profile file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no profile file {path}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"profile {path}: not valid TOML ({e})")
    try:
        return parse_profile(data, path)
    except ValueError as e:
        raise UserError(f"profile {path}: {e}")


def parse_profile(data: dict, path: Path | None = None) -> Profile:
    """A Profile from the TOML's table; ValueError names the first bad field."""
    _check_keys(data, FIELDS, "")
    missing = [k for k in FIELDS if k not in data]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if path is not None and data["name"] != path.stem:
        raise ValueError(f"name {data['name']!r} differs from the file name {path.stem!r}")
    _one_of("engine", data["engine"], ENGINES)
    _one_of("kv_cache", data["kv_cache"], tuple(KV_TYPES))
    for key in ("context", "batch", "ubatch"):
        if data[key] < 1:
            raise ValueError(f"{key} must be at least 1, not {data[key]}")
    for key in ("prefix_cache_gib", "expert_cache_gib"):
        if data[key] < 0:
            raise ValueError(f"{key} must be >= 0, not {data[key]}")
    threads = data["threads"]
    if isinstance(threads, str) and threads != "auto" or isinstance(threads, int) and threads < 1:
        raise ValueError(f"threads must be \"auto\" or a positive integer, not {threads!r}")
    _check_recipe(data["recipe"])
    requires = _requirements(data["requires"])
    rules = tuple(_rule(i, r) for i, r in enumerate(data["placement"]))
    _check_placement(rules, requires, data["engine"], data["expert_cache_gib"])
    return Profile(data["name"], data["description"], data["recipe"], data["engine"], data["context"],
                   data["kv_cache"], None if threads == "auto" else threads, data["batch"], data["ubatch"],
                   float(data["prefix_cache_gib"]), float(data["expert_cache_gib"]), requires, rules, path)


def _check_keys(table: dict, schema: dict, where: str) -> None:
    for key, value in table.items():
        if key not in schema:
            raise ValueError(f"unknown key {where}{key!r} (known: {', '.join(schema)})")
        wanted = schema[key]
        if isinstance(value, bool) and wanted is not bool or not isinstance(value, wanted):
            names = " or ".join(t.__name__ for t in (wanted if isinstance(wanted, tuple) else (wanted,)))
            raise ValueError(f"{where}{key} must be {names}, not {type(value).__name__} {value!r}")


def _one_of(key: str, value: str, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{key} {value!r} is not one of {', '.join(allowed)}")


def _check_recipe(recipe: str) -> None:
    from quant.recipes import resolve

    try:
        resolve(recipe)
    except UserError:
        from quant.mixes import FILE_TYPES
        from quant.recipes import load_recipes
        raise ValueError(f"recipe {recipe!r} is neither a file type ({', '.join(FILE_TYPES)}) nor a recipe "
                         f"({', '.join(load_recipes())})")


def _requirements(table: dict) -> Requirements:
    _check_keys(table, REQUIRES, "requires.")
    req = Requirements(**table)
    _one_of("requires.accelerator", req.accelerator, ACCELERATORS)
    if req.accelerator == "cuda" and req.gpus < 1:
        raise ValueError("requires.gpus must be at least 1 with accelerator \"cuda\"")
    if req.accelerator == "none" and (req.gpus or req.min_vram_gib or req.unified_memory):
        raise ValueError("requires.gpus, min_vram_gib and unified_memory need an accelerator")
    if req.gpus < 0 or req.min_vram_gib < 0 or req.min_ram_gib < 0:
        raise ValueError("requires.gpus, min_vram_gib and min_ram_gib must be >= 0")
    return req


def _rule(i: int, table) -> Rule:
    if not isinstance(table, dict):
        raise ValueError(f"placement[{i}] must be a table with device (and tensors / layers)")
    _check_keys(table, RULE, f"placement[{i}].")
    if "device" not in table:
        raise ValueError(f"placement[{i}] has no device")
    if not DEVICE.fullmatch(table["device"]):
        raise ValueError(f"placement[{i}].device {table['device']!r} is not cpu, gpu or cuda:N")
    pattern = None
    if "tensors" in table:
        try:
            pattern = re.compile(table["tensors"])
        except re.error as e:
            raise ValueError(f"placement[{i}].tensors {table['tensors']!r} is not a regular expression ({e})")
    layers = None
    if "layers" in table:
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", table["layers"])
        if not m or int(m[1]) > int(m[2]):
            raise ValueError(f"placement[{i}].layers {table['layers']!r} is not a range like \"0-23\"")
        layers = (int(m[1]), int(m[2]))
    return Rule(table["device"], pattern, layers)


def _check_placement(rules: tuple[Rule, ...], req: Requirements, engine: str, expert_cache: float) -> None:
    if not rules or rules[-1].tensors is not None or rules[-1].layers is not None:
        raise ValueError("the last placement rule must have only a device (it places every remaining tensor)")
    devices = {r.device for r in rules}
    if req.accelerator == "none" and devices != {"cpu"}:
        raise ValueError("a profile without an accelerator can place tensors only on cpu")
    cuda = sorted(int(d[5:]) for d in devices if d.startswith("cuda:"))
    if cuda and (req.accelerator != "cuda" or cuda[-1] >= req.gpus):
        raise ValueError(f"placement uses cuda:{cuda[-1]} but requires {req.gpus} CUDA GPU(s)")
    if "gpu" in devices and req.accelerator == "none":
        raise ValueError("placement uses gpu but the profile requires no accelerator")
    if expert_cache and "cpu" not in devices:
        raise ValueError("expert_cache_gib needs routed experts on cpu (they stream from RAM into the cache)")
    if engine == "llamacpp" and cuda and len(cuda) > 1:
        raise ValueError("the llamacpp engine places layers itself; use device \"gpu\"")


def profile_paths() -> dict[str, Path]:
    """name -> file of every shipped profile."""
    return {p.stem: p for p in sorted(PROFILES_DIR.glob("*.toml"))}


def shipped_profiles() -> dict[str, Profile]:
    """Every shipped profile, validated."""
    return {name: load_profile(path) for name, path in profile_paths().items()}


def get_profile(name_or_path: str) -> Profile:
    """A shipped profile by name, or a profile file by path."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        return load_profile(name_or_path)
    paths = profile_paths()
    if name_or_path not in paths:
        raise UserError(f"no profile {name_or_path!r}; shipped: {', '.join(paths)} (or give a .toml path)")
    return load_profile(paths[name_or_path])


def not_built(profile: Profile) -> str | None:
    """Why this build of localcoder cannot run the profile yet (whatever the machine), or None."""
    import importlib.util

    if profile.engine == "llamacpp":
        if importlib.util.find_spec("llama_cpp") is None:
            return "the llama.cpp engine needs llama-cpp-python (pip install 'localcoder[llamacpp]')"
        return None
    cuda = cuda_devices(profile)
    if cuda and "cpu" in profile.devices:
        if len(cuda) > 1 or not hybrid_placement(profile):
            return ("localcoder runs CPU placement only as the hybrid runtime: routed experts (and optionally the "
                    "embedding) in RAM, everything else on one GPU")
    if cuda and not all(importlib.util.find_spec(m) for m in ("torch", "triton")):
        return "localcoder's CUDA backend needs torch with CUDA (pip install 'localcoder[cuda]')"
    return None


def hybrid_placement(profile: Profile, n_layer: int = 48) -> bool:
    """Whether the profile puts exactly the routed experts (and perhaps the embedding) in RAM and every other
    tensor on the GPU: what the hybrid runtime runs."""
    kinds = ("attn_qkv", "attn_q", "ssm_out", "ffn_gate_inp", "ffn_up_shexp", "ffn_gate_exps", "ffn_up_exps",
             "ffn_down_exps")
    for i in range(n_layer):
        for kind in kinds:
            in_ram = profile.device_of(f"blk.{i}.{kind}.weight", i) == "cpu"
            if in_ram != kind.endswith("_exps"):
                return False
    return profile.device_of("output.weight", None) != "cpu"


def embedding_in_ram(profile: Profile) -> bool:
    return profile.device_of("token_embd.weight", None) == "cpu"


def backend_options(profile: Profile) -> dict:
    """How localcoder's own engine runs a profile, as Model.load's options: the CPU runtime; the CUDA backend on
    the profile's GPUs; or, with weights in RAM, the hybrid runtime with the profile's expert cache."""
    cuda = cuda_devices(profile)
    if not cuda:
        return {"backend": "cpu"}
    if "cpu" in profile.devices:
        return {"backend": "hybrid", "gpus": cuda, "expert_cache_gib": profile.expert_cache_gib,
                "embedding_in_ram": embedding_in_ram(profile), "kv_type": profile.kv_cache}
    return {"backend": "cuda", "gpus": cuda, "kv_type": profile.kv_cache}


def cuda_devices(profile: Profile) -> list[str]:
    """The CUDA devices a profile places weights on ("gpu" is the first)."""
    return sorted({"cuda:0" if d == "gpu" else d for d in profile.devices if d == "gpu" or d.startswith("cuda")})
