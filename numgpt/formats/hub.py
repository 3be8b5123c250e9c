"""Model names -> folders: a local folder, a `numgpt train` run folder, a model built into the package
('builtin'), or a hub name in the Hugging Face cache.

Hub names resolve through the local hub cache (models--{org}--{name}/snapshots/{commit}) without network,
and are downloaded with huggingface_hub only when it is installed and the caller allows it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import NumgptError
from .hf import CONFIG_FILE

RUN_LATEST, RUN_BEST = "latest", "best"     # the checkpoints of a `numgpt train` run folder (training/loop.py)
DOWNLOAD_PATTERNS = ["config.json", "*.safetensors", "*.json", "merges.txt", "vocab.json"]
GPT2_HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")  # hub names without an org
# Models shipped inside the package, by name (README, "The built-in model" and "The built-in chat model"; made by
# dev/ship_builtin_model.py and dev/make_chat_model.sh). A local folder of the same name wins, as it does over hub names.
BUILTIN_MODELS = {"builtin": Path(__file__).resolve().parent.parent / "assets" / "model",
                  "chat": Path(__file__).resolve().parent.parent / "assets" / "chat"}
DEFAULT_MODEL = "builtin"   # what numgpt.load() and a command without --model use

def hf_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, $HF_HOME/hub, or ~/.cache/huggingface/hub.
    The caller passes the environment in (the CLI passes os.environ)."""
    if environ.get("HF_HUB_CACHE"):
        return Path(environ["HF_HUB_CACHE"]).expanduser()
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def builtin_model_folder(name: str = DEFAULT_MODEL) -> Path:
    """The folder of a model built into the package; a one-line error if the installation lacks it."""
    folder = BUILTIN_MODELS[name]
    if not (folder / CONFIG_FILE).is_file():
        raise NumgptError(f"the built-in model is missing from this installation ({name!r}: {folder}); "
                          "reinstall numgpt, or pass a model folder or a hub name")
    return folder


def resolve_model(name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike,
                  download: bool = True) -> Path:
    """The folder of a model: an existing folder as is; else a built-in name ('builtin'); else a hub name
    ('gpt2', 'openai-community/gpt2') looked up in the hub cache `cache_dir` without network; else
    downloaded with huggingface_hub when `download` is true and it is installed. A run folder of
    `numgpt train` (no config.json of its own) means its best checkpoint, else its latest; the folder of
    `numgpt recipe chat` means its model."""
    if str(name_or_path).strip() == "":           # (Path('') is '.', whose config.json was then "missing")
        raise NumgptError("the model name is empty; pass a model folder, a run folder or a name such as builtin")
    path = Path(name_or_path).expanduser()
    if not path.is_dir() and str(name_or_path) in BUILTIN_MODELS:
        return builtin_model_folder(str(name_or_path))
    if path.is_dir():
        if not (path / CONFIG_FILE).exists():
            for sub in (RUN_BEST, RUN_LATEST, "model"):      # (model: a recipe's result)
                if (path / sub / CONFIG_FILE).is_file():
                    return path / sub
        return path
    name = str(name_or_path)
    if path.exists():
        raise NumgptError(f"{name}: is a file, not a model folder; pass the folder that holds config.json "
                          "and model.safetensors")
    if _looks_local(name):
        raise NumgptError(f"{name}: no such folder{_near_misses(path)}; pass a model folder (config.json + "
                          "model.safetensors), a `numgpt train` run folder, or a hub name such as gpt2")
    repo_ids = [name] if "/" in name else [f"openai-community/{name}", name]
    for repo_id in repo_ids:
        found = _cached_snapshot(Path(cache_dir), repo_id)
        if found is not None:
            return found
    if "/" not in name and name not in GPT2_HUB_NAMES:
        raise NumgptError(f"{name}: no such folder{_near_misses(path)}, and no model of that name in the "
                          f"Hugging Face cache; pass a model folder, a built-in name ({', '.join(BUILTIN_MODELS)}), "
                          f"or a hub name ({', '.join(GPT2_HUB_NAMES)} or ORG/NAME)")
    how = (f"download it elsewhere with `hf download {repo_ids[0]}` (huggingface_hub's command) and copy the "
           "folder (or its hub cache), or pass a local folder")
    if not download:
        raise NumgptError(f"model {name!r} is not in the Hugging Face cache {cache_dir}; {how}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise NumgptError(f"model {name!r} is not in the Hugging Face cache {cache_dir} and huggingface_hub "
                          f"is not installed to fetch it; {how}") from None
    try:
        return Path(snapshot_download(repo_ids[0], cache_dir=cache_dir, allow_patterns=DOWNLOAD_PATTERNS))
    except Exception as e:  # noqa: BLE001 -- network, auth and missing-repo errors all mean "not available"
        raise NumgptError(f"model {name!r} is not cached and downloading it failed "
                          f"({type(e).__name__}); {how}") from None


def _looks_local(name: str) -> bool:
    """A name that can only be a path: starts like one, has two slashes, or its first part is a local
    folder (runs/mine when ./runs exists). 'gpt2' and 'org/name' may be hub names."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


def _near_misses(path: Path) -> str:
    """', did you mean X?' for folders beside `path` whose names are close to its name; else ''."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        names = [p.name for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(str(parent / c) for c in close)}?)" if close else ""


def _cached_snapshot(cache_dir: Path, repo_id: str) -> Path | None:
    """The snapshot folder of repo_id in a hub cache: the one refs/main names, else the newest one."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if (snapshot / CONFIG_FILE).is_file():
            return snapshot
    snapshots = [s for s in (repo / "snapshots").glob("*") if (s / CONFIG_FILE).is_file()]
    return max(snapshots, key=lambda s: s.stat().st_mtime) if snapshots else None
