"""Pathology foundation models: what each model card says to pass in code, found by the model's Hub name.

A Hub ``config.json`` holds plain JSON, so what a card passes as Python objects
(UNI2-h's SwiGLU MLP and SiLU, Virchow's too) or only in its example
(UNI's ``init_values``) is not in it. Each preset carries those arguments, with
layer classes as timm layer names, and the pooled embedding its authors use.
A recipe names the model (``hf-hub:MahmoodLab/UNI2-h``) and gets its preset; a
``local-dir:`` copy says ``options = { preset = "uni2-h" }``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import histofuse

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Bioptimus normalize with their own training set's statistics, not ImageNet's.
H_OPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


@dataclass(frozen=True)
class FoundationModel:
    key: str
    hub_id: str  # ORG/NAME on the Hugging Face Hub
    family: str  # the backbone source that builds it: "timm" or "transformers"
    pool: str  # the pooled embedding the authors use: "cls" or "cls+mean" (class token, mean of patch tokens)
    licence: str
    gated: bool  # the Hub asks the user to accept terms before download
    args: dict = field(default_factory=dict)  # creation arguments the card passes in code
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the card's input normalization, for inputs in [0, 1]
    std: tuple[float, float, float] = IMAGENET_STD


PRESETS = {
    preset.key: preset
    for preset in (
        FoundationModel("uni", "MahmoodLab/UNI", "timm", "cls", "CC-BY-NC-ND-4.0", True,
                        {"init_values": 1e-5, "dynamic_img_size": True}),
        FoundationModel("uni2-h", "MahmoodLab/UNI2-h", "timm", "cls", "CC-BY-NC-ND-4.0", True, {
            "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2, "init_values": 1e-5, "no_embed_class": True, "reg_tokens": 8,
            "mlp_layer": "swiglu_packed", "act_layer": "silu", "dynamic_img_size": True,
        }),
        FoundationModel("virchow", "paige-ai/Virchow", "timm", "cls+mean", "CC-BY-NC-ND-4.0", True,
                        {"mlp_layer": "swiglu_packed", "act_layer": "silu"}),
        FoundationModel("virchow2", "paige-ai/Virchow2", "timm", "cls+mean", "CC-BY-NC-ND-4.0", True,
                        {"mlp_layer": "swiglu_packed", "act_layer": "silu"}),
        FoundationModel("h-optimus-0", "bioptimus/H-optimus-0", "timm", "cls", "Apache-2.0", False,
                        {"init_values": 1e-5, "dynamic_img_size": False}, *H_OPTIMUS),
        FoundationModel("h-optimus-1", "bioptimus/H-optimus-1", "timm", "cls", "CC-BY-NC-ND-4.0", True,
                        {"init_values": 1e-5, "dynamic_img_size": False}, *H_OPTIMUS),
        FoundationModel("prov-gigapath", "prov-gigapath/prov-gigapath", "timm", "cls", "Apache-2.0", True),
        FoundationModel("phikon", "owkin/phikon", "transformers", "cls", "Owkin non-commercial", False),
        FoundationModel("phikon-v2", "owkin/phikon-v2", "transformers", "cls", "Owkin non-commercial", False),
    )
}

_BY_HUB_ID = {preset.hub_id.lower(): preset for preset in PRESETS.values()}


def find_preset(model: str, family: str, preset: str | None = None) -> FoundationModel | None:
    """The preset a backbone uses: the one named by ``preset``, else the one whose Hub id ``model`` names."""
    if preset is not None:
        found = PRESETS.get(preset.lower())
        if found is None or found.family != family:
            known = ", ".join(sorted(k for k, p in PRESETS.items() if p.family == family))
            raise histofuse.WeightsError(f"unknown {family} foundation-model preset '{preset}'; known: {known}")
        return found
    scheme, _, ident = model.partition(":")
    if scheme.lower() in ("hf-hub", "hf_hub"):
        return _BY_HUB_ID.get(ident.split("@", 1)[0].lower())
    return _BY_HUB_ID.get(model.lower())


def pool_tokens(tokens, prefix_tokens: int, pool: str):
    """A transformer's embedding from its [class, registers, patches] sequence: the class token, the mean of the
    patch tokens, or both side by side."""
    import torch

    patches = tokens[:, prefix_tokens:].mean(1)
    if pool == "mean":
        return patches
    if pool == "cls":
        return tokens[:, 0]
    return torch.cat([tokens[:, 0], patches], dim=1)


def without_registers(tokens, class_tokens: int, prefix_tokens: int):
    """The class token(s) and patch tokens; registers carry no position, so token fusions do not see them."""
    import torch

    if prefix_tokens > class_tokens:
        return torch.cat([tokens[:, :class_tokens], tokens[:, prefix_tokens:]], dim=1)
    return tokens


def finish(backbone, model: str, card, native, image_size: int, report, pretrained: bool | str = True):
    """Say how the model was pretrained against how it is fed, and mark what the core asks of a foundation model.
    A model built without weights was pretrained at no size."""
    if pretrained is not False and native != image_size:
        histofuse.log.info("%s: pretrained at %s px, fed %d px (data.image_size)", model, native, image_size)
    if card is not None:
        histofuse.log.info("%s: preset '%s', licence %s (the model card on the Hub is authoritative)", model, card.key, card.licence)
    backbone.foundation_model = card is not None
    backbone.weights_report = report
    return backbone
