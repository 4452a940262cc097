"""Optical flow between consecutive frames, with occlusion masks, cached beside the inversions.

Methods: DIS (Kroeger et al. 2016, OpenCV's ``DISOpticalFlow``; the default), Farneback
(Farneback 2003) and, when torchvision and a local weights file are at hand, RAFT (Teed &
Deng 2020; torchvision's ``raft_large`` or ``raft_small``, see :func:`raft_network`).
Flow is in pixels, ``(dx, dy)`` at each pixel of the first frame of a pair:
``forward[t]`` maps frame t to t+1, ``backward[t]`` maps frame t+1 to t.

Occlusions come from the forward-backward consistency check of Sundaram et al. 2010:
a pixel x of frame t is occluded in t+1 when

    |f(x) + b(x + f(x))|^2 > alpha (|f(x)|^2 + |b(x + f(x))|^2) + beta,

or when ``x + f(x)`` leaves the frame. Two additions to the paper's test: a photometric one
(the colour at x and at ``x + f(x)`` differ by more than ``photometric``, mean absolute RGB
in [0, 255]) and a dilation by ``dilate`` pixels. On textureless backgrounds the flow of a
moving object bleeds a few pixels past its outline, forward and backward alike, so the
consistency test alone finds few of the pixels it covers; with both additions the masks find
most true occlusions (docs/video.md). The paper's second test, on motion boundaries, is left
out: it marks edges, not occlusions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from videdit.errors import VideditError
from videdit.hashing import content_key
from videdit.io.atomic import atomic_path

log = logging.getLogger("videdit.flow")

FLOW_FORMAT = "videdit-flow-1"
FLOW_METHODS = ("dis", "farneback", "raft")
FLOW_COLOURS = ("gray", "lab")
MIN_CHROMA_RANGE = 2.0  # Lab a/b units: a channel that varies less over a pair gets no flow of its own
DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
FLO_MAGIC = 202021.25  # the bytes "PIEH"


@dataclass(frozen=True)
class FlowConfig:
    """How to estimate flow and occlusions. ``preset`` is DIS's; ``levels``/``window`` are
    Farneback's pyramid depth and averaging window; ``alpha``/``beta`` the consistency test's,
    ``photometric`` (None: off) and ``dilate`` the additions to it (see the module doc).
    ``colour``: ``"lab"`` (the default) estimates DIS/Farneback flow on grey and on CIELAB's
    a and b channels and keeps, per pixel, the flow whose warp matches best (see
    :func:`flow_pair`); ``"gray"`` on luminance only, about 6x faster (docs/video.md).
    ``raft_weights``: a local torchvision RAFT state dict (``raft_large`` or ``raft_small``, told
    apart by its keys), read for ``method="raft"``; ``raft_updates`` its refinement iterations."""

    method: str = "dis"
    preset: str = "medium"
    colour: str = "lab"
    levels: int = 5
    window: int = 15
    alpha: float = 0.01
    beta: float = 0.5
    photometric: float | None = 20.0
    dilate: int = 1
    raft_weights: str | None = None
    raft_updates: int = 12  # RAFT's refinement iterations: torchvision's default num_flow_updates

    def __post_init__(self):
        if self.method not in FLOW_METHODS:
            raise VideditError(f"unknown flow method {self.method!r}; choose from {list(FLOW_METHODS)}")
        if self.colour not in FLOW_COLOURS:
            raise VideditError(f"unknown flow colour {self.colour!r}; choose from {list(FLOW_COLOURS)}")
        if self.preset not in DIS_PRESETS:
            raise VideditError(f"unknown DIS preset {self.preset!r}; choose from {list(DIS_PRESETS)}")
        if not 1 <= self.levels <= 10:
            raise VideditError(f"levels must be in [1, 10], got {self.levels}")
        if self.window < 3:
            raise VideditError(f"window must be >= 3 pixels, got {self.window}")
        if self.alpha < 0 or self.beta < 0:
            raise VideditError(f"alpha and beta must be >= 0, got {self.alpha}, {self.beta}")
        if self.photometric is not None and not 0 < self.photometric <= 255:
            raise VideditError(f"photometric must be in (0, 255] (or None to skip it), got {self.photometric}")
        if not 0 <= self.dilate <= 16:
            raise VideditError(f"dilate must be in [0, 16] pixels, got {self.dilate}")
        if not 1 <= self.raft_updates <= 64:
            raise VideditError(f"raft_updates must be in [1, 64], got {self.raft_updates}")
        if self.method == "raft":
            _check_raft(self.raft_weights)


@dataclass(frozen=True)
class Flows:
    """Flow of a clip of T frames. ``occlusion[t]``: pixels of frame t not seen in t+1;
    ``occlusion_backward[t]``: pixels of frame t+1 not seen in t (disocclusions)."""

    forward: np.ndarray             # (T-1, H, W, 2) float32, frame t -> t+1
    backward: np.ndarray            # (T-1, H, W, 2) float32, frame t+1 -> t
    occlusion: np.ndarray           # (T-1, H, W) bool
    occlusion_backward: np.ndarray  # (T-1, H, W) bool
    cached: bool = False

    def __len__(self) -> int:
        return len(self.forward)


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """A Middlebury ``.flo`` file -> (H, W, 2) float32 flow (u, v)."""
    data = Path(path).read_bytes()
    if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != FLO_MAGIC:
        raise VideditError(f"{path} is not a Middlebury .flo file (magic {FLO_MAGIC} missing)")
    w, h = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
    if w < 1 or h < 1 or len(data) != 12 + 8 * w * h:
        raise VideditError(f"{path}: a {w}x{h} .flo file needs {12 + 8 * max(w, 0) * max(h, 0)} bytes, "
                           f"it has {len(data)}")
    return np.frombuffer(data[12:], "<f4").reshape(h, w, 2).copy()


def flow_pair(a: np.ndarray, b: np.ndarray, config: FlowConfig = FlowConfig()) -> np.ndarray:
    """Flow (H, W, 2) float32 from uint8 RGB frame ``a`` (H, W, 3) to ``b``, by DIS or Farneback.

    With ``config.colour == "lab"``, flow is estimated on CIELAB's a and b channels (each
    stretched to 0-255) besides grey, and each pixel keeps the candidate whose warp of
    ``b`` matches ``a`` best in Lab, the residual averaged over a 5x5 window. Grey-level flow
    cannot see an edge between two colours of the same luminance (red over purple, both grey
    ~87, in a toy occlusion clip); Lab flow finds it (docs/video.md)."""
    return _planes_flow(_planes(a, config), _planes(b, config), config)


def _channel_flow(ga: np.ndarray, gb: np.ndarray, config: FlowConfig) -> np.ndarray:
    if config.method == "dis":
        return _dis(config.preset).calc(ga, gb, None)
    if config.method == "farneback":
        return cv2.calcOpticalFlowFarneback(ga, gb, None, pyr_scale=0.5, levels=config.levels,
                                            winsize=config.window, iterations=3, poly_n=7, poly_sigma=1.5,
                                            flags=cv2.OPTFLOW_FARNEBACK_GAUSSIAN)
    raise VideditError(f"flow_pair computes dis and farneback; {config.method!r} runs through compute_flows")


def _lab_channels(frame: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 Lab (H, W, 3) with L in [0, 100], a and b in about [-128, 127]."""
    return cv2.cvtColor(np.ascontiguousarray(frame).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def _stretch(channel: np.ndarray) -> np.ndarray:
    """One channel of two frames (2, H, W) -> uint8 over its joint range, so a faint channel is not lost."""
    lo, hi = float(channel.min()), float(channel.max())
    return np.round((channel - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8)


def _planes(frame: np.ndarray, config: FlowConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """What flow is estimated on: grey (H, W) uint8 and, with ``colour="lab"``, Lab (H, W, 3) float32."""
    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    return grey, (_lab_channels(frame) if config.colour == "lab" else None)


def _planes_flow(first, second, config: FlowConfig) -> np.ndarray:
    """Flow between two frames' :func:`_planes`: grey's, or the best per pixel of grey's, a's and b's."""
    (ga, la), (gb, lb) = first, second
    if la is None:
        return _channel_flow(ga, gb, config)
    candidates = [_channel_flow(ga, gb, config)]
    for c in (1, 2):  # a and b: L adds nothing to grey but time
        pair = np.stack([la[..., c], lb[..., c]])                   # (2, H, W)
        if np.ptp(pair) >= MIN_CHROMA_RANGE:  # a grey clip's chroma is noise, stretched it would be all noise
            candidates.append(_channel_flow(*_stretch(pair), config))
    h, w = ga.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    residuals = []
    for f in candidates:
        warped = cv2.remap(lb, xs + f[..., 0], ys + f[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        residuals.append(cv2.blur(np.abs(warped - la).sum(-1), (5, 5)))
    best = np.argmin(np.stack(residuals), axis=0)  # ties go to grey, the first candidate
    return np.take_along_axis(np.stack(candidates), best[None, ..., None], axis=0)[0].astype(np.float32)


def _dis(preset: str):
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    dis.setUseSpatialPropagation(True)
    return dis


def occlusion_mask(forward: np.ndarray, backward: np.ndarray, alpha: float = 0.01,
                   beta: float = 0.5) -> np.ndarray:
    """Sundaram et al. 2010's consistency test: (H, W) bool, True where ``forward`` (H, W, 2),
    followed by ``backward`` sampled at its end point, does not come back (or leaves the frame)."""
    h, w = forward.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x, map_y = xs + forward[..., 0], ys + forward[..., 1]
    b = cv2.remap(backward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # b(x + f(x))
    err = ((forward + b) ** 2).sum(-1)
    bound = alpha * ((forward ** 2).sum(-1) + (b ** 2).sum(-1)) + beta
    outside = (map_x < -0.5) | (map_x > w - 0.5) | (map_y < -0.5) | (map_y > h - 0.5)
    return (err > bound) | outside


def photometric_mask(a: np.ndarray, b: np.ndarray, flow: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) bool: where frame ``a`` (H, W, 3) and frame ``b`` sampled at ``x + flow(x)``
    differ by more than ``threshold`` (mean absolute RGB, [0, 255])."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    bw = cv2.remap(b.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_REPLICATE)
    return np.abs(bw - a.astype(np.float32)).mean(-1) > threshold


def _occlusions(frames: np.ndarray, fwd: np.ndarray, bwd: np.ndarray, config: FlowConfig,
                backward: bool) -> np.ndarray:
    """(T-1, H, W) bool: pixels of frame t not seen in t+1 (or, ``backward``, of t+1 not in t)."""
    masks = []
    for t, (f, b) in enumerate(zip(fwd, bwd)):
        a, z = frames[t], frames[t + 1]
        if backward:
            f, b, a, z = b, f, z, a
        m = occlusion_mask(f, b, config.alpha, config.beta)
        if config.photometric is not None:
            m |= photometric_mask(a, z, f, config.photometric)
        if config.dilate:
            m = cv2.dilate(m.astype(np.uint8), np.ones((2 * config.dilate + 1,) * 2, np.uint8)) > 0
        masks.append(m)
    return np.stack(masks)


def compute_flows(frames: np.ndarray, config: FlowConfig = FlowConfig(), *, cache_dir: str | Path | None = None,
                  memo: dict | None = None, device: torch.device | str | None = None) -> Flows:
    """Forward and backward flow and occlusions of consecutive uint8 RGB ``frames`` (T, H, W, 3).

    With ``cache_dir`` the result is kept on disk (a safetensors file keyed by a hash of the
    frames and the config, in the inversion cache's folder; a bad entry is recomputed); with
    ``memo`` (a dict a temporal module keeps across windows) the latest result is kept in
    memory too, for other modules that ask for the same window's flow. RAFT runs on
    ``device`` (CPU when None)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 2:
        raise VideditError(f"flow needs uint8 RGB frames (T >= 2, H, W, 3), got {frames.dtype} {frames.shape}")
    key = flow_key(frames, config)
    if memo is not None and key in memo:
        return memo[key]
    flows = _load(Path(cache_dir), key, frames.shape) if cache_dir is not None else None
    if flows is None:
        flows = _estimate(frames, config, device)
        if cache_dir is not None:
            _save(Path(cache_dir), key, flows)
    if memo is not None:
        memo.clear()  # the current window's only: memory bounded by the window, not the clip
        memo[key] = flows
    return flows


def compute_flows_ahead(frames: np.ndarray, config: FlowConfig = FlowConfig(), **kwargs) -> Future:
    """:func:`compute_flows` started in the flow thread (one per process, made on first use), so
    that it runs while the model denoises; ``.result()`` gives the flows or raises their error."""
    global _FLOW_THREAD
    with _FLOW_THREAD_LOCK:
        if _FLOW_THREAD is None:
            _FLOW_THREAD = ThreadPoolExecutor(1, thread_name_prefix="videdit-flow")
    return _FLOW_THREAD.submit(compute_flows, frames, config, **kwargs)


def flow_key(frames: np.ndarray, config: FlowConfig) -> str:
    """The cache key of ``frames`` ' flow under ``config``: its options and, for RAFT, the sha256 of the
    weights file (a file replaced at the same path is not mistaken for the old one). ``raft_updates``
    enters only for RAFT, so the keys of DIS and Farneback flow are those from before it existed."""
    options = dataclasses.asdict(config)
    extra = {}
    if config.method == "raft":
        extra["raft_digest"] = raft_digest(config.raft_weights)
    else:
        del options["raft_updates"]
    return content_key(frames, FLOW_FORMAT, config=options, **extra)


def _estimate(frames: np.ndarray, config: FlowConfig, device) -> Flows:
    if config.method == "raft":
        fwd, bwd = _raft(frames, config, device)
    else:
        planes = [_planes(f, config) for f in frames]   # each frame converted once, not in each of its pairs
        fwd = np.stack([_planes_flow(a, b, config) for a, b in zip(planes[:-1], planes[1:])])
        bwd = np.stack([_planes_flow(b, a, config) for a, b in zip(planes[:-1], planes[1:])])
    fwd, bwd = fwd.astype(np.float32), bwd.astype(np.float32)
    return Flows(fwd, bwd, _occlusions(frames, fwd, bwd, config, backward=False),
                 _occlusions(frames, fwd, bwd, config, backward=True))


def flow_cache_path(directory: Path, key: str) -> Path:
    return directory / f"flow-{key[:32]}.safetensors"


def _load(directory: Path, key: str, shape: tuple[int, ...]) -> Flows | None:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = flow_cache_path(directory, key)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        t = load_file(str(path))
        n, h, w = shape[0] - 1, shape[1], shape[2]
        ok = (meta.get("key") == key and meta.get("format") == FLOW_FORMAT
              and t["forward"].shape == t["backward"].shape == (n, h, w, 2)
              and t["occlusion"].shape == t["occlusion_backward"].shape == (n, h, w)
              and np.isfinite(t["forward"]).all() and np.isfinite(t["backward"]).all())
        if not ok:
            raise ValueError("key, format or shape mismatch")
        return Flows(t["forward"], t["backward"], t["occlusion"].astype(bool), t["occlusion_backward"].astype(bool),
                     cached=True)
    except Exception as e:  # truncated or foreign file: recompute
        log.warning("ignoring bad flow cache entry %s (%s); recomputing", path.name, e)
        return None


def _save(directory: Path, key: str, flows: Flows) -> Path:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {"forward": flows.forward, "backward": flows.backward, "occlusion": flows.occlusion.astype(np.uint8),
               "occlusion_backward": flows.occlusion_backward.astype(np.uint8)}
    path = flow_cache_path(directory, key)
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
                  metadata={"key": key, "format": FLOW_FORMAT})
    return path


# ---------------------------------------------------------------- RAFT (optional)

RAFT_MIN_SIDE = 128  # torchvision's correlation pyramid (4 levels) needs feature maps of >= 16 cells at 1/8
RAFT_CHECK = ("flow method 'raft' needs torchvision and a local weights file: pip install -e '.[flow]' (see "
              "README, Optical flow) and give raft_weights=PATH to a raft_large or raft_small state dict "
              "(e.g. raft_large_C_T_SKHT_V2-ff5fadd5.pth); or use method 'dis'")
_RAFT_NETS: dict = {}  # (weights digest, device) -> the loaded network, the latest only
_RAFT_LOCK = threading.Lock()
_FLOW_THREAD: ThreadPoolExecutor | None = None   # compute_flows_ahead's
_FLOW_THREAD_LOCK = threading.Lock()


def _check_raft(weights: str | None) -> None:
    if importlib.util.find_spec("torchvision") is None or weights is None:
        raise VideditError(RAFT_CHECK)
    if not Path(weights).is_file():
        raise VideditError(f"raft_weights {weights!r} is not a file; give the path of a raft_large or raft_small "
                           "state dict")


def raft_digest(weights: str | os.PathLike) -> str:
    """sha256 of a RAFT weights file, so the flow cache's key changes with the file, not only its path
    (memoised by path, size and modification time: a 20 MB file is read once per process)."""
    st = os.stat(weights)
    memo_key = (str(Path(weights).resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _DIGESTS:
        h = hashlib.sha256()
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[memo_key] = h.hexdigest()
    return _DIGESTS[memo_key]


_DIGESTS: dict = {}


def _torchvision_raft():
    """torchvision's ``raft_large`` and ``raft_small`` builders, or a VideditError saying why not."""
    try:
        from torchvision.models.optical_flow import raft_large, raft_small
    except (ImportError, RuntimeError) as e:  # e.g. a CUDA-built torchvision beside a CPU torch: its ops fail
        raise VideditError(f"flow method 'raft': torchvision does not import here ({str(e).splitlines()[0]}); "
                           "install the torchvision release built for this torch (README, Optical flow) or use "
                           "method 'dis'") from e
    return raft_large, raft_small


def raft_network(weights: str, device=None) -> torch.nn.Module:
    """torchvision's RAFT with the state dict in ``weights``, in eval mode on ``device``: ``raft_large``
    when the dict has the large model's convex-upsampling ``mask_predictor`` (torchvision's standard
    and RAFT's own full model), else ``raft_small``. Kept loaded for the next window."""
    _check_raft(weights)
    device = torch.device(device or "cpu")
    key = (raft_digest(weights), str(device))
    with _RAFT_LOCK:   # flows are also estimated in a thread beside the edit (compute_flows_ahead)
        return _raft_net(weights, key, device)


def _raft_net(weights: str, key: tuple, device: torch.device) -> torch.nn.Module:
    if key not in _RAFT_NETS:
        raft_large, raft_small = _torchvision_raft()
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not any(k.startswith("feature_encoder.") for k in state):
            raise VideditError(f"raft_weights {weights!r} is not a torchvision RAFT state dict "
                               "(no feature_encoder.* entries)")
        large = any(k.startswith("mask_predictor.") for k in state)
        net = (raft_large if large else raft_small)(weights=None, progress=False)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise VideditError(f"raft_weights {weights!r} do not fit torchvision's "
                               f"{'raft_large' if large else 'raft_small'}: {str(e).splitlines()[0]}") from e
        _RAFT_NETS.clear()
        _RAFT_NETS[key] = net.eval().to(device)
    return _RAFT_NETS[key]


@torch.no_grad()
def _raft(frames: np.ndarray, config: FlowConfig, device) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward flow of consecutive frames by RAFT (Teed & Deng 2020) through torchvision,
    from a local state dict. Frames go in as torchvision's ``OpticalFlow`` transform gives them
    (RGB in [-1, 1]), padded on the right and bottom by replicating the border to sides that are
    multiples of 8 and at least 128 pixels (what RAFT's encoder and correlation pyramid take; the
    official ``InputPadder`` pads to multiples of 8 alike), and the flow is cropped back. Each pair
    runs forward and backward as one batch of two, ``config.raft_updates`` refinement iterations."""
    net = raft_network(config.raft_weights, device)
    device = next(net.parameters()).device
    h, w = frames.shape[1:3]
    ph, pw = max(RAFT_MIN_SIDE, h + -h % 8) - h, max(RAFT_MIN_SIDE, w + -w % 8) - w
    x = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1  # (T, 3, H, W) in [-1, 1]
    x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
    fwd, bwd = [], []
    for a, b in zip(x[:-1], x[1:]):
        pair = net(torch.stack([a, b]), torch.stack([b, a]), num_flow_updates=config.raft_updates)[-1]
        pair = pair[..., :h, :w].permute(0, 2, 3, 1).cpu().numpy()  # (2, H, W, 2): forward, backward
        fwd.append(pair[0])
        bwd.append(pair[1])
    return np.stack(fwd), np.stack(bwd)
