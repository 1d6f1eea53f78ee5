"""Where a backbone's files come from: ``hf-hub:ORG/NAME`` (the Hub or its local cache) or ``local-dir:PATH``.

The schemes are timm's own; the transformers family accepts them too. What lives
here is what both families need: checking a name before anything is built, and
one message, when the files cannot be had, that says which files to put where.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Weights split over several files, with an index; transformers reads them, timm's local-dir: does not.
SHARDED_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def split_source(model: str) -> tuple[str | None, str]:
    """("hf-hub", "ORG/NAME"), ("local-dir", "PATH") or (None, model) for a plain name."""
    scheme, sep, ident = model.partition(":")
    scheme = scheme.lower().replace("_", "-")
    if sep and scheme in ("hf-hub", "local-dir"):
        return scheme, ident
    return None, model


def check_source(model: str, pretrained: bool | str, sharded: bool = False) -> str | None:
    """A problem with a prefixed model name, said before anything is built; None when it looks usable."""
    scheme, ident = split_source(model)
    if scheme == "hf-hub" and not _REPO_ID.match(ident):
        return f"'{model}' is not a Hugging Face Hub model id; write hf-hub:ORG/NAME, e.g. hf-hub:MahmoodLab/UNI2-h"
    if scheme == "local-dir":
        return check_model_folder(Path(ident).expanduser(), need_weights=pretrained is True, sharded=sharded)
    return None


def check_model_folder(folder: Path, need_weights: bool, sharded: bool = False) -> str | None:
    if not folder.is_dir():
        return f"model folder '{folder}' does not exist; it should hold config.json and {' or '.join(WEIGHT_FILES)}"
    if not (folder / "config.json").is_file():
        return f"model folder '{folder}' has no config.json (the Hub's layout: config.json beside {WEIGHT_FILES[0]})"
    if need_weights and not any((folder / name).is_file() for name in WEIGHT_FILES + (SHARDED_INDEXES if sharded else ())):
        return f"model folder '{folder}' has config.json but no weights: put {' or '.join(WEIGHT_FILES)} beside it"
    return None


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def unreachable(repo_id: str, exc: BaseException, card=None) -> str:
    """Why the Hub's files could not be had, and the two ways to put them on an offline machine."""
    repo_id = repo_id.split("@", 1)[0]
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    cache = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    why = "HF_HUB_OFFLINE is set and the local cache does not hold it" if offline else f"{type(exc).__name__}: {first}"
    terms = (
        f" The model is gated: accept its terms at https://huggingface.co/{repo_id} and log in (`hf auth login`) first."
        if (card is not None and card.gated) or type(exc).__name__ == "GatedRepoError" else ""
    )
    preset = f' with options.preset = "{card.key}"' if card is not None else ""
    return (
        f"could not get '{repo_id}' from the Hugging Face Hub ({why}).{terms} To use it on a machine without "
        f"internet, either (1) on a machine online run `hf download {repo_id}`, copy the folder it fills "
        f"(~/.cache/huggingface/hub/models--{repo_id.replace('/', '--')}) to {cache} here and set HF_HUB_OFFLINE=1; "
        f"or (2) put its config.json and {' or '.join(WEIGHT_FILES)} in one folder and set "
        f'model = "local-dir:/that/folder"{preset}.'
    )


def name_problems(recipe, source: str, check) -> list[str]:
    """``check(model, pretrained)`` on every backbone of the family ``source``, as recipe problems."""
    problems = []
    for i, backbone in enumerate(recipe.model.backbones):
        if backbone.source == source:
            problem = check(backbone.model, backbone.pretrained)
            if problem:
                problems.append(f"model.backbones[{i}].model: {problem}")
    return problems
