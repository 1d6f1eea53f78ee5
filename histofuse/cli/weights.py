"""``histofuse weights check`` and ``histofuse weights export``."""

from __future__ import annotations

from pathlib import Path

import typer

from histofuse.cli.app import console, weights_app
from histofuse.errors import HistofuseError, WeightsError


def _split_backbone(text: str, families: list[str]) -> tuple[str, str]:
    # "hf-hub:ORG/NAME" and "local-dir:PATH" are model names of the timm family, not families.
    source, sep, model = text.partition(":")
    return (source, model) if sep and source in families else ("timm", text)


def _options(pairs: list[str]) -> dict:
    from histofuse.recipe import parse_value

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise WeightsError(f"--option: expected KEY=VALUE (e.g. preset=uni2-h), got '{pair}'")
        options[key.strip()] = parse_value(value.strip())
    return options


@weights_app.command("check")
def check(
    backbone: str = typer.Argument(..., help="[SOURCE:]MODEL, e.g. tf_efficientnetv2_s, timm:vit_base_patch16_224 or hf-hub:MahmoodLab/UNI2-h."),
    file: Path = typer.Argument(..., help="A .safetensors or PyTorch state-dict file."),
    image_size: int = typer.Option(224, "--image-size", min=16, help="Input size (ViT position embeddings depend on it)."),
    option: list[str] = typer.Option([], "--option", help="KEY=VALUE for the family's options, e.g. preset=uni2-h (repeatable)."),
) -> None:
    """Tell whether FILE fits BACKBONE before a long run: loaded, missing and unexpected tensors, shape errors."""
    from histofuse.recipe import validate_options
    from histofuse.registry import default_registry

    registry = default_registry()
    source, model = _split_backbone(backbone, registry.names("backbone"))
    spec = registry.get("backbone", source)
    built = spec.build(model=model, pretrained=str(file), image_size=image_size, **validate_options(spec, _options(option)))
    report = getattr(built, "weights_report", None)
    if report is None:
        raise WeightsError(f"backbone family '{source}' does not report on weights files")
    console.print(f"{file} fits {source}:{model}: {report.summary()}", markup=False)
    if report.missing:
        console.print(f"missing (first 10): {', '.join(report.missing[:10])}", markup=False)
    if report.unexpected:
        console.print(f"unexpected (first 10): {', '.join(report.unexpected[:10])}", markup=False)


@weights_app.command("export")
def export(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    name: str = typer.Argument(..., help="The backbone's name in the recipe, e.g. cnn."),
    out: Path = typer.Argument(..., help="Where to write the .safetensors file."),
) -> None:
    """Write one backbone's trained weights, in its family's own names, for pretrained = "OUT" in another recipe."""
    from safetensors.torch import save_file

    from histofuse.inference import LoadedRun

    model = LoadedRun(run_dir).model
    if name not in model.backbones:
        raise HistofuseError(f"run has no backbone '{name}'; its backbones are: {', '.join(model.backbones)}")
    backbone = model.backbones[name]
    state = backbone.export_state_dict() if hasattr(backbone, "export_state_dict") else backbone.state_dict()
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(out))
    console.print(f"wrote {len(state)} tensors of backbone '{name}' to {out}", markup=False)
