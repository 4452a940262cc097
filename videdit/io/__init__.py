"""Frame I/O: read videos, frame folders and images as RGB chunks; write videos (with the
source's audio), frame folders, images and GIF previews, atomically."""

from videdit.io.atomic import atomic_path
from videdit.io.options import ClipInfo, ReadOptions
from videdit.io.overlap import WriteAborted, read_ahead, write_beside
from videdit.io.read import BACKEND_ENV, IMAGE_SUFFIXES, is_image, probe, read_clip, read_frames, read_selected
from videdit.io.video import BrokenVideoWarning
from videdit.io.write import (
    GIF_SUFFIX,
    VIDEO_FORMATS,
    check_output_path,
    check_preview_path,
    write_frames_dir,
    write_gif,
    write_image,
    write_output,
    write_video,
)

__all__ = [
    "BACKEND_ENV",
    "GIF_SUFFIX",
    "IMAGE_SUFFIXES",
    "VIDEO_FORMATS",
    "BrokenVideoWarning",
    "ClipInfo",
    "ReadOptions",
    "WriteAborted",
    "atomic_path",
    "check_output_path",
    "check_preview_path",
    "is_image",
    "probe",
    "read_ahead",
    "read_clip",
    "read_frames",
    "read_selected",
    "write_frames_dir",
    "write_gif",
    "write_image",
    "write_output",
    "write_beside",
    "write_video",
]
