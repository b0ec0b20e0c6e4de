"""TensorBoardEventWriter: TensorBoard event files written with the ``tensorboard`` package alone (no torch, no TF).

Importing this module imports ``tensorboard``; ``TBAnalyticsReceiver`` imports it only when a run starts.
Images need ``Pillow`` (imported when the first image is written).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from typing import Any

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.text.summary_v2 import text_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter

MAX_SCALARS_WRITERS = 256  # add_scalars subfolders (one event file writer and thread each) per writer


MAX_FOLDER_NAME_BYTES = 200  # file systems allow 255 bytes; the rest is room for what TensorBoard adds


def safe_folder_name(name: str) -> str:
    """Return ``name`` usable as one folder name: path separators and NUL become ``_``; ``""``, ``.`` and ``..``
    get a leading ``_``; characters the file system cannot encode become ``?``; a name longer than
    ``MAX_FOLDER_NAME_BYTES`` (UTF-8) is cut and ends with ``~`` and 12 hex digits of its hash (still unique)."""
    cleaned = name.replace("/", "_").replace("\\", "_").replace("\x00", "_")
    cleaned = "_" + cleaned if cleaned in ("", ".", "..") else cleaned
    encoded = cleaned.encode("utf-8", errors="replace")
    if len(encoded) > MAX_FOLDER_NAME_BYTES:
        digest = hashlib.sha256(name.encode("utf-8", errors="surrogatepass")).hexdigest()[:12]
        encoded = encoded[: MAX_FOLDER_NAME_BYTES - 13] + b"~" + digest.encode()
    return encoded.decode("utf-8", errors="ignore")


def _image_hwc(value: Any) -> np.ndarray:
    """An HW, HWC or CHW image (1, 3 or 4 channels) as HWC uint8; non-uint8 values are taken as 0..1."""
    image = np.asarray(value)
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    elif image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[2] not in (1, 3, 4):
        image = np.transpose(image, (1, 2, 0))
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image must be HW, HWC or CHW with 1, 3 or 4 channels; got shape {image.shape}")
    if image.dtype != np.uint8:
        image = (image.astype(np.float32) * 255.0).clip(0, 255).astype(np.uint8)
    return image


class TensorBoardEventWriter:
    """Writes scalars, scalar groups, texts and images to event files under ``log_dir`` (like torch's SummaryWriter)."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.writer = EventFileWriter(log_dir)
        self.scalar_writers: dict[str, EventFileWriter] = {}

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None:
        """Write one scalar."""
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(scalar_value))])
        self._add(self.writer, summary, global_step)

    def add_scalars(self, main_tag: str, tag_scalar_dict: dict, global_step: int | None = None) -> None:
        """Write each value under ``main_tag`` into subfolder ``<main_tag with / as _>_<tag>`` (one series each).

        Raises:
            ValueError: the writer already has ``MAX_SCALARS_WRITERS`` subfolders and this would add one more.
        """
        for tag, value in tag_scalar_dict.items():
            key = safe_folder_name(f"{main_tag.replace('/', '_')}_{tag}")
            writer = self.scalar_writers.get(key)
            if writer is None:
                if len(self.scalar_writers) >= MAX_SCALARS_WRITERS:
                    raise ValueError(
                        f"{self.log_dir} already has {MAX_SCALARS_WRITERS} add_scalars series; {key!r} is not written"
                    )
                writer = self.scalar_writers[key] = EventFileWriter(os.path.join(self.log_dir, key))
            summary = Summary(value=[Summary.Value(tag=main_tag, simple_value=float(value))])
            self._add(writer, summary, global_step)

    def add_text(self, tag: str, text_string: str, global_step: int | None = None) -> None:
        """Write one text (TensorBoard's text plugin)."""
        self._add(self.writer, text_pb(tag, text_string), global_step)

    def add_image(self, tag: str, img_tensor: Any, global_step: int | None = None) -> None:
        """Write one image (an HW, HWC or CHW array) as PNG.

        Raises:
            ImportError: Pillow is not installed.
            ValueError: the array does not have an image's shape.
        """
        try:
            from PIL import Image
        except ImportError as exc:
            raise ImportError("writing TensorBoard images needs Pillow: pip install pillow") from exc
        image = _image_hwc(img_tensor)
        height, width, channels = image.shape
        buffer = io.BytesIO()
        Image.fromarray(image[:, :, 0] if channels == 1 else image).save(buffer, format="PNG")
        picture = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=buffer.getvalue())
        self._add(self.writer, Summary(value=[Summary.Value(tag=tag, image=picture)]), global_step)

    def flush(self) -> None:
        """Write what is buffered to the event files."""
        self.writer.flush()
        for writer in self.scalar_writers.values():
            writer.flush()

    def close(self) -> None:
        """Flush and close every event file."""
        self.writer.close()
        for writer in self.scalar_writers.values():
            writer.close()

    @staticmethod
    def _add(writer: EventFileWriter, summary: Summary, global_step: int | None) -> None:
        event = Event(wall_time=time.time(), summary=summary)
        if global_step is not None:
            event.step = int(global_step)
        writer.add_event(event)
