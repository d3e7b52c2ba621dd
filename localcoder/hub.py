"""The Hugging Face Hub: `localcoder pull REPO[:QUANT]`, and Hub ids wherever a command takes a model path.

    pull("Qwen/Qwen3-Coder-Next")                       # the safetensors checkpoint folder (weights, config, tokenizer)
    pull("unsloth/Qwen3-Coder-Next-GGUF:Q4_K_M")        # the GGUF of that quant (its first shard when split)

Everything goes through huggingface_hub's cache (HF_HOME / HF_HUB_CACHE), so downloads resume where they stopped,
HF_TOKEN opens private and gated repositories, and HF_HUB_OFFLINE=1 resolves from the cache alone.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from localcoder.errors import UserError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?::(?P<quant>[\w.-]+))?$")
CHECKPOINT_FILES = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
                    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                    "added_tokens.json", "chat_template.jinja", "chat_template.json",
                    "README.md"]  # the model card: the converter copies its license and tags into the GGUF


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """(repo id, quant or None) when `text` reads as owner/name[:QUANT] and is not an existing path."""
    m = HUB_ID.match(text)
    if not m or Path(text).exists() or text.endswith(".gguf"):
        return None
    return m["repo"], m["quant"]


def resolve_model(text: str | Path, need_gguf: bool = False, show_progress: bool = True) -> Path:
    """A local path as is; a Hub id pulled (or found in the cache). need_gguf: the command runs a GGUF, so a
    checkpoint repository without :QUANT is an error."""
    path = Path(text)
    if path.exists():
        return path
    hub = parse_hub_id(str(text))
    if hub is None:
        raise UserError(f"{text} does not exist (give a file, a folder, or a Hub id like owner/name:Q4_K_M)")
    repo, quant = hub
    if need_gguf and quant is None:
        raise UserError(f"{text} names a repository; this command runs a GGUF: add the quant, e.g. {repo}:Q4_K_M")
    return pull(str(text), show_progress=show_progress)


def pull(ref: str, revision: str | None = None, show_progress: bool = True) -> Path:
    """Download (or find in the cache) a checkpoint or a GGUF quant; returns the folder or the GGUF's path."""
    hub = parse_hub_id(ref)
    if hub is None:
        raise UserError(f"{ref!r} is not a Hub id like owner/name or owner/name-GGUF:Q4_K_M")
    repo, quant = hub
    patterns = [f"*{quant}*.gguf", f"*{quant.lower()}*.gguf", f"*{quant.upper()}*.gguf"] if quant else CHECKPOINT_FILES
    folder = _snapshot(repo, sorted(set(patterns)), revision, show_progress)
    return _gguf_in(folder, repo, quant) if quant else named_view(_checkpoint_in(folder, repo), repo)


def named_view(snapshot: Path, repo: str) -> Path:
    """A folder named after the repository (localcoder's cache/hub/OWNER--NAME/NAME) whose files link to the
    cached snapshot. Converters name a model after its folder, and a snapshot's folder is a commit hash: through
    this view a Hub id converts exactly like `huggingface-cli download REPO --local-dir NAME`."""
    from localcoder.demo import cache_root

    view = cache_root() / "hub" / repo.replace("/", "--") / repo.split("/")[1]
    if view.exists():
        shutil.rmtree(view)
    for src in snapshot.rglob("*"):
        if src.is_file():
            link = view / src.relative_to(snapshot)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src.resolve())
    return view


def _snapshot(repo: str, patterns: list[str], revision: str | None, show_progress: bool) -> Path:
    """huggingface_hub's snapshot_download with its errors turned into one-line UserErrors."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as E
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    offline = " (HF_HUB_OFFLINE is set: only the cache is used)" if constants.HF_HUB_OFFLINE else ""
    (enable_progress_bars if show_progress else disable_progress_bars)()
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except E.GatedRepoError:
        raise UserError(f"{repo} is gated: accept its terms on huggingface.co, then set HF_TOKEN") from None
    except E.RepositoryNotFoundError:
        raise UserError(f"no repository {repo} on the Hub (a private one needs HF_TOKEN)") from None
    except E.RevisionNotFoundError:
        raise UserError(f"{repo} has no revision {revision!r}") from None
    except E.IncompleteSnapshotError as e:
        raise UserError(f"the cached copy of {repo} is incomplete{offline}: {_missing(str(e))}; run "
                        f"`localcoder pull {repo}` with network to finish it (downloads resume)") from None
    except E.LocalEntryNotFoundError:
        raise UserError(f"{repo} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}){offline}; "
                        "pull it with network first") from None
    except E.HfHubHTTPError as e:
        raise UserError(f"the Hub refused {repo}: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise UserError(f"cannot write the Hugging Face cache {constants.HF_HUB_CACHE}: {e.strerror or e}") from None


def _missing(message: str) -> str:
    m = re.search(r"(\d+ file\(s\) are missing \([^)]*\))", message)
    return m[1] if m else message.splitlines()[0]


def _checkpoint_in(folder: Path, repo: str) -> Path:
    """The snapshot folder, once it holds a config and every safetensors file its index names."""
    if not (folder / "config.json").is_file():
        ggufs = sorted({_quant_of(p.name) for p in folder.rglob("*.gguf")} - {None})
        hint = f" It holds GGUFs: add the quant, e.g. {repo}:{ggufs[0]}" if ggufs else ""
        raise UserError(f"{repo} has no config.json: it is not a Hugging Face checkpoint.{hint}")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        import json

        needed = set(json.loads(index.read_text())["weight_map"].values())
        missing = sorted(n for n in needed if not (folder / n).is_file())
        if missing:
            raise UserError(f"the cached copy of {repo} lacks {', '.join(missing)}; run `localcoder pull {repo}` "
                            "with network to finish it")
    elif not list(folder.glob("*.safetensors")):
        raise UserError(f"{repo} has no .safetensors weights")
    return folder


QUANT_IN_NAME = re.compile(r"((?:UD-)?(?:IQ|Q)\d(?:_[A-Z0-9]+)*|BF16|F16|F32)", re.IGNORECASE)


def _quant_of(name: str) -> str | None:
    m = QUANT_IN_NAME.findall(Path(name).stem)
    return m[-1].upper() if m else None


def _gguf_in(folder: Path, repo: str, quant: str) -> Path:
    """The GGUF of `quant` in a snapshot: one file, or the first shard of one split set."""
    from localcoder.gguf_model import SHARD_NAME, shard_paths

    def first_shard(p: Path) -> Path:
        m = SHARD_NAME.match(p.name)
        return p.with_name(f"{m['stem']}-00001-of-{m['count']}.gguf") if m else p

    found = [p for p in sorted(folder.rglob("*.gguf")) if _quant_of(p.name) == quant.upper()
             and "mmproj" not in p.name.lower()]
    models = sorted({first_shard(p) for p in found})
    if not models:
        quants = sorted({_quant_of(p.name) for p in folder.rglob("*.gguf")} - {None})
        listed = f"; it has {', '.join(quants)}" if quants else ""
        raise UserError(f"{repo} has no {quant} GGUF in the cache or on the Hub{listed}")
    if len(models) > 1:
        raise UserError(f"{repo} has several {quant} GGUFs ({', '.join(p.name for p in models)}); download one "
                        "with huggingface-cli and give its path")
    shard_paths(models[0])  # every shard present, or a clear error
    return models[0]
