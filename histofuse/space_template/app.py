"""histofuse web app for a Hugging Face Space (or any machine): ONNX Runtime + Gradio, nothing else from histofuse.

Reads model.onnx and model.onnx.json (classes, preprocessing, validation-locked threshold and temperature per
test-time-augmentation mode) from this folder. Runs offline: no analytics, no CDN.
"""

import json
import os
import time
from pathlib import Path

MAX_PIXELS = 50_000_000
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# OpenCV reads this once, when it loads: every header claiming more pixels is refused before any memory is allocated,
# so a small file claiming a gigapixel image (a decompression bomb) costs nothing.
os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(MAX_PIXELS)

import cv2  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIG = json.loads((HERE / "model.onnx.json").read_text())
SESSION = onnxruntime.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
CLASSES = CONFIG["classes"]
MAX_BYTES = int(os.environ.get("MAX_UPLOAD_MB", "50")) * 1_000_000


def decode(data: bytes) -> np.ndarray:
    """RGB uint8 from PNG/JPEG/TIFF bytes: grey to RGB, 16-bit to 8-bit, alpha composited onto white."""
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        # OpenCV signals its pixel limit only through this assertion's text.
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            raise ValueError(f"The image is too large; this app accepts up to {MAX_PIXELS / 1e6:.0f} megapixels. "
                             "Crop or downscale it first.") from None
        raise ValueError("That file is not an image this app can read. Upload a PNG, JPEG or TIFF.") from None
    if image is None:
        raise ValueError("That file is not an image this app can read. Upload a PNG, JPEG or TIFF.")
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if image.dtype != np.uint8:
        raise ValueError(f"Unsupported pixel type {image.dtype}. Upload an 8- or 16-bit image.")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        alpha = image[..., 3:4].astype(np.float32) / 255.0
        image = (image[..., :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """Shorter side to ``resize`` (area interpolation), centre crop ``image_size``, [0, 1], NCHW: as in training."""
    size, resize = CONFIG["image_size"], CONFIG["resize"]
    h, w = rgb.shape[:2]
    scale = resize / min(h, w)
    resized = cv2.resize(rgb, (max(size, round(w * scale)), max(size, round(h * scale))), interpolation=cv2.INTER_AREA)
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    crop = resized[top : top + size, left : left + size]
    return (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]


VIEWS = {
    "none": [lambda x: x],
    # The paper's seven views: both flips equal the 180-degree rotation, so that view counts twice.
    "paper7": [lambda x: x, lambda x: x[..., ::-1], lambda x: x[..., ::-1, :], lambda x: x[..., ::-1, ::-1],
               lambda x: np.rot90(x, 1, (2, 3)), lambda x: np.rot90(x, 2, (2, 3)), lambda x: np.rot90(x, 3, (2, 3))],
    "d4": [lambda x, k=k, f=f: np.rot90(x[..., ::-1] if f else x, k, (2, 3)) for f in (False, True) for k in range(4)],
}


def probabilities(x: np.ndarray, tta: str) -> np.ndarray:
    batch = np.ascontiguousarray(np.concatenate([view(x) for view in VIEWS[tta]]), dtype=np.float32)
    logits = SESSION.run(["logits"], {"image": batch})[0].astype(np.float64)
    # As histofuse does: average the views' probabilities, then apply the temperature to the log of that average.
    views = np.exp(logits - logits.max(1, keepdims=True))
    mean = np.log(np.clip((views / views.sum(1, keepdims=True)).mean(0), 1e-12, None))
    calibration = CONFIG["calibration"].get(tta) or {"threshold": None, "temperature": 1.0}
    scaled = mean / calibration["temperature"]
    probs = np.exp(scaled - scaled.max())
    return probs / probs.sum()


def classify(upload, tta):
    if not upload:
        raise gr.Error("Upload an image first: PNG, JPEG or TIFF.", duration=None)
    if len(upload) > MAX_BYTES:
        raise gr.Error(f"The file is {len(upload) / 1e6:.1f} MB; this app accepts up to {MAX_BYTES / 1e6:.0f} MB.", duration=None)
    if tta not in VIEWS:
        raise gr.Error(f"Unknown test-time augmentation '{tta}'.", duration=None)
    started = time.perf_counter()
    try:
        rgb = decode(upload)
    except ValueError as exc:
        raise gr.Error(str(exc), duration=None) from None
    probs = probabilities(preprocess(rgb), tta)
    threshold = (CONFIG["calibration"].get(tta) or {}).get("threshold")
    decided = int(probs[1] >= threshold) if threshold is not None and len(CLASSES) == 2 else int(probs.argmax())
    rule = f"p({CLASSES[1]}) ≥ {threshold:.3f}, locked on validation" if threshold is not None else "most probable class"
    return (
        {c: float(p) for c, p in zip(CLASSES, probs)},
        f"{CLASSES[decided]}  ({rule})",
        f"{(time.perf_counter() - started) * 1000:.0f} ms (TTA {tta})",
    )


with gr.Blocks(title=CONFIG.get("title", "histofuse"), analytics_enabled=False) as demo:
    gr.Markdown(f"# {CONFIG.get('title', 'histofuse')}\nClasses: {', '.join(CLASSES)}. A research model: not for diagnosis.")
    with gr.Row():
        with gr.Column():
            upload = gr.File(label="H&E image (PNG, JPEG, TIFF)", file_types=[".png", ".jpg", ".jpeg", ".tif", ".tiff"],
                             type="binary", elem_id="upload")
            tta = gr.Radio(list(VIEWS), value="none", label="Test-time augmentation", elem_id="tta")
            button = gr.Button("Classify", variant="primary", elem_id="classify")
        with gr.Column():
            decision = gr.Textbox(label="Decision", interactive=False, elem_id="decision")
            probs = gr.Label(label="Class probabilities", num_top_classes=len(CLASSES), show_heading=False, elem_id="probabilities")
            timing = gr.Textbox(label="Time", interactive=False, elem_id="timing")
    button.click(classify, [upload, tta], [probs, decision, timing], api_name="classify")

if __name__ == "__main__":
    demo.queue(max_size=64).launch(
        server_name=os.environ.get("HOST", "0.0.0.0"), server_port=int(os.environ.get("PORT", "7860")),
        ssr_mode=False, share=False, mcp_server=False, max_file_size=f"{MAX_BYTES // 1_000_000}mb",
    )
