"""histofuse serve: a Gradio app over a finished run — upload, choose normalization and TTA, see probabilities,
the decision at the run's locked threshold, heatmaps, and the time taken. Offline: no analytics, no CDN."""

from __future__ import annotations

import os
import time

from histofuse.errors import HistofuseError, ImageDecodeError

SUFFIXES = [".png", ".jpg", ".jpeg", ".tif", ".tiff"]
MAX_PIXELS = 50_000_000  # a 7000×7000 tile; whole-slide images belong to a tiling pipeline, not this demo


def import_gradio():
    # Before gradio is imported: no usage analytics, no Hugging Face hub calls, no telemetry.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio
    except ImportError:
        raise HistofuseError('the web app needs Gradio: pip install "histofuse[serve]"') from None
    return gradio


def classify(run, upload: bytes | None, normalization: str, tta: str, max_bytes: int):
    """(probabilities, decision text, heatmap gallery, timing text); a ``ValueError`` carries a message for the user."""
    from histofuse.explain import explain

    if not upload:
        raise ValueError("Upload an image first: PNG, JPEG or TIFF.")
    if len(upload) > max_bytes:
        raise ValueError(f"The file is {len(upload) / 1e6:.1f} MB; this app accepts up to {max_bytes / 1e6:.0f} MB.")
    if tta not in ("none", "paper7", "d4"):
        raise ValueError(f"Unknown test-time augmentation '{tta}'.")
    normalize = normalization != "none"
    if normalize and normalization != run.normalizer_name:
        raise ValueError(f"Unknown stain normalization '{normalization}'.")
    started = time.perf_counter()
    rgb = decode_upload(upload)
    if normalize:
        run.adapt([rgb])  # a "dataset" normalizer sees the upload as its set
    grid = None
    if run.recipe.data.tiles is not None:  # as evaluation saw images: a grid of tiles, their probabilities averaged
        from histofuse.tile_map import tile_map

        grid = tile_map(run, rgb, normalize=normalize, tta=tta)
        probs = grid.pooled[None]
    else:
        probs = run.probabilities(run.preprocess(rgb, normalize)[None], tta)
    decided = int(run.decide(probs, tta)[0])
    # The heatmaps explain the class shown, which the chosen TTA and calibration decided.
    _, explanations = explain(run, rgb, normalize=normalize, target=decided, grid=grid)
    elapsed = time.perf_counter() - started
    return (
        {c: float(p) for c, p in zip(run.classes, probs[0])},
        f"{run.classes[decided]}  ({decision_rule(run, tta)})",
        [(e.overlay, f"{e.backbone}: {e.method}") for e in explanations],
        f"{elapsed * 1000:.0f} ms (TTA {tta}, normalization {normalization})",
    )


def decode_upload(upload: bytes):
    """RGB pixels of the upload; a ``ValueError`` says in the user's words why not. Over-size headers are refused
    before decoding, so a small file claiming a huge image costs nothing."""
    import numpy as np

    from histofuse.data.decode import decode_buffer, header_pixels

    try:
        rgb = decode_buffer(upload, "the uploaded file", max_pixels=MAX_PIXELS)
    except ImageDecodeError as exc:
        claimed = header_pixels(np.frombuffer(upload, np.uint8))
        if claimed is not None and claimed[0] > MAX_PIXELS:
            raise ValueError(_too_large(claimed[1])) from None
        raise ValueError(f"That file is not an image this app can read ({exc.reason}). Upload a PNG, JPEG or TIFF.") from None
    # Formats whose header Pillow cannot size are only measured once decoded.
    if rgb.shape[0] * rgb.shape[1] > MAX_PIXELS:
        raise ValueError(_too_large(f"{rgb.shape[1]} x {rgb.shape[0]}"))
    return rgb


def _too_large(pixels: str) -> str:
    return (f"The image is too large ({pixels} pixels); this app accepts up to {MAX_PIXELS / 1e6:.0f} megapixels. "
            "Crop or downscale it first.")


def decision_rule(run, tta: str) -> str:
    """How the shown class was chosen, saying so when the run never calibrated this TTA mode."""
    if not run.calibrated(tta):
        return f"most probable class at temperature 1: the run locked no threshold or temperature for TTA {tta}"
    threshold = run.calibration(tta)["threshold"]
    return f"p({run.classes[1]}) ≥ {threshold:.3f}, locked on validation" if threshold is not None else "most probable class"


def build_app(run, max_bytes: int):
    gr = import_gradio()
    normalizations = ["none"] + ([run.normalizer_name] if run.normalizer is not None else [])

    def on_classify(upload, normalization, tta):
        try:
            return classify(run, upload, normalization, tta, max_bytes)
        except ValueError as exc:
            raise gr.Error(str(exc), duration=None) from None

    with gr.Blocks(title=f"histofuse: {run.recipe.name}", analytics_enabled=False) as app:
        gr.Markdown(
            f"# {run.recipe.name}\n{run.recipe.description}\n\nClasses: {', '.join(run.classes)}. "
            "A research model: not for diagnosis."
        )
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="H&E image (PNG, JPEG, TIFF)", file_types=SUFFIXES, type="binary", elem_id="upload")
                normalization = gr.Radio(normalizations, value="none", label="Stain normalization", elem_id="normalization")
                tta = gr.Radio(["none", "paper7", "d4"], value="none", label="Test-time augmentation", elem_id="tta")
                button = gr.Button("Classify", variant="primary", elem_id="classify")
            with gr.Column():
                decision = gr.Textbox(label="Decision", interactive=False, elem_id="decision")
                # No heading: Label would headline the most probable class, which the locked threshold may overrule.
                probabilities = gr.Label(
                    label="Class probabilities", num_top_classes=len(run.classes), show_heading=False, elem_id="probabilities"
                )
                heatmaps = gr.Gallery(label="Where each branch looks", columns=2, height="auto", elem_id="heatmaps")
                timing = gr.Textbox(label="Time", interactive=False, elem_id="timing")
        # One request at a time: Grad-CAM hooks the shared model, so concurrent requests must not interleave.
        button.click(
            on_classify, [upload, normalization, tta], [probabilities, decision, heatmaps, timing], concurrency_limit=1,
            api_name="classify",
        )
    return app


def serve(run, host: str, port: int, max_mb: int) -> None:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests, one log line each
    app = build_app(run, max_mb * 1_000_000)
    app.queue(max_size=64).launch(
        server_name=host, server_port=port, share=False, ssr_mode=False, mcp_server=False, inbrowser=False,
        max_file_size=f"{max_mb}mb", show_error=True, quiet=False,
    )
