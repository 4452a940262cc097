"""A seeded toy world of coloured shapes, with captions and exact ground truth.

Scenes are one or two objects (circle, square, triangle) in one of six
well-separated colours on a plain or two-tone (left/right halves) background.
Clips move the objects with known translation, scaling and rotation and come
with exact forward optical flow and occlusion masks. Everything is rendered
with anti-aliasing (polygon fill with ``cv2.LINE_AA`` on a supersampled canvas,
then area downsampling), so per-pixel coverage is known exactly.

Coordinates are continuous pixel units with the image's top-left corner at
(0, 0) and pixel ``(i, j)`` (row, column) covering ``[j, j+1) x [i, i+1)``; its
centre is ``(j + 0.5, i + 0.5)``. Angles are degrees, clockwise on screen
(the y axis points down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from videdit.errors import VideditError

OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 190),
    "orange": (250, 135, 0),
}
"""Object palette (RGB). Pairwise distances >= ~95, so nearest-palette works."""

BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
"""Background palette (RGB), >= ~100 away from every object colour."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

CAPTION_WORDS: tuple[str, ...] = (
    ("a", "and", "on", "background") + tuple(OBJECT_COLOURS) + SHAPES + tuple(BACKGROUND_COLOURS)
)
"""Every word a caption can contain."""

_CIRCLE_VERTICES = 96
# Outline of each shape in unit coordinates (scale 1 = the shape's half-size).
_TRIANGLE_RADIUS = 1.2  # circumradius, so a triangle looks about as big as the others
_SQUARE_HALF_SIDE = 0.9


def _unit_outline(shape: str) -> np.ndarray:
    """Vertices (V, 2) of a shape at scale 1, angle 0, centred on the origin."""
    if shape == "circle":
        a = np.linspace(0.0, 2.0 * math.pi, _CIRCLE_VERTICES, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], axis=1)
    if shape == "square":
        h = _SQUARE_HALF_SIDE
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if shape == "triangle":  # equilateral, apex up, centroid at the origin
        a = np.deg2rad(np.array([-90.0, 30.0, 150.0]))
        return _TRIANGLE_RADIUS * np.stack([np.cos(a), np.sin(a)], axis=1)
    raise VideditError(f"unknown shape {shape!r}; choose from {list(SHAPES)}")


def shape_extent(shape: str) -> float:
    """Distance from the centre to the farthest outline point, at scale 1."""
    return float(np.linalg.norm(_unit_outline(shape), axis=1).max())


def shape_area(shape: str) -> float:
    """Area of the drawn outline at scale 1 (circle ~pi, square 3.24, triangle ~1.87)."""
    x, y = _unit_outline(shape).T
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def _rotation(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


@dataclass(frozen=True)
class WorldObject:
    """One shape: its kind, colour name, centre (x, y) in pixels, scale in pixels, angle in degrees."""

    shape: str
    colour: str
    center: tuple[float, float]
    scale: float
    angle: float = 0.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise VideditError(f"unknown shape {self.shape!r}; choose from {list(SHAPES)}")
        if self.colour not in OBJECT_COLOURS:
            raise VideditError(f"unknown colour {self.colour!r}; choose from {sorted(OBJECT_COLOURS)}")
        if not self.scale > 0:
            raise VideditError(f"scale must be > 0, got {self.scale}")

    def outline(self) -> np.ndarray:
        """Vertices (V, 2) in image pixel coordinates."""
        u = _unit_outline(self.shape)  # (V, 2)
        return np.asarray(self.center) + self.scale * u @ _rotation(self.angle).T

    @property
    def rgb(self) -> tuple[int, int, int]:
        return OBJECT_COLOURS[self.colour]


@dataclass(frozen=True)
class WorldConfig:
    """What the scene sampler draws from."""

    size: int = 64
    two_object_prob: float = 0.35
    overlap_prob: float = 0.0  # of two-object scenes, the share where the second object partly hides the first
    two_tone_prob: float = 0.25
    min_scale: float = 0.12  # scale as a fraction of size
    max_scale: float = 0.22
    max_angle: float = 30.0  # squares and triangles are rotated by U(-max_angle, max_angle)
    supersample: int = 4

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 2:
            raise VideditError(f"size must be an even number >= 16, got {self.size}")
        for name in ("two_object_prob", "overlap_prob", "two_tone_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise VideditError(f"{name} must be in [0, 1], got {v}")
        if not 0.0 < self.min_scale <= self.max_scale <= 0.3:
            raise VideditError(
                f"need 0 < min_scale <= max_scale <= 0.3, got {self.min_scale}, {self.max_scale}"
            )
        if self.supersample < 1:
            raise VideditError(f"supersample must be >= 1, got {self.supersample}")


@dataclass(frozen=True)
class Scene:
    """A rendered scene with its caption and ground truth.

    ``image`` is (H, W, 3) uint8; ``masks`` (N, H, W) bool are the visible
    pixels of each object (coverage >= 0.5); ``coverage`` (N, H, W) float32 is
    the exact visible fraction of each pixel; ``background`` holds one colour
    name (plain) or two (left half, right half).
    """

    image: np.ndarray
    masks: np.ndarray
    coverage: np.ndarray
    objects: tuple[WorldObject, ...]
    background: tuple[str, ...]
    caption: str = ""

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(o.colour for o in self.objects)

    @property
    def shapes(self) -> tuple[str, ...]:
        return tuple(o.shape for o in self.objects)

    @property
    def background_label(self) -> str:
        return background_label(self.background)


@dataclass(frozen=True)
class Motion:
    """Per-frame motion of one object: translation (px/frame), scale factor per frame, rotation (deg/frame)."""

    velocity: tuple[float, float] = (0.0, 0.0)
    scale_rate: float = 1.0
    angular_velocity: float = 0.0

    def __post_init__(self) -> None:
        if not self.scale_rate > 0:
            raise VideditError(f"scale_rate must be > 0, got {self.scale_rate}")

    def at(self, obj: WorldObject, t: float) -> WorldObject:
        """The object ``t`` frames after ``obj``."""
        cx, cy = obj.center
        return WorldObject(
            obj.shape,
            obj.colour,
            (cx + self.velocity[0] * t, cy + self.velocity[1] * t),
            obj.scale * self.scale_rate**t,
            obj.angle + self.angular_velocity * t,
        )


@dataclass(frozen=True)
class Clip:
    """A rendered clip with exact motion ground truth.

    ``frames`` (T, H, W, 3) uint8; ``flows`` (T-1, H, W, 2) float32 forward
    flow (dx, dy) in pixels from frame t to t+1 at each pixel centre;
    ``occlusions`` (T-1, H, W) bool, True where the surface seen at a pixel of
    frame t is not visible (hidden or out of frame) in frame t+1; ``masks``
    (T, N, H, W) bool visible object pixels; ``objects`` the first frame's
    objects (back to front) and ``motions`` one per object.
    """

    frames: np.ndarray
    flows: np.ndarray
    occlusions: np.ndarray
    masks: np.ndarray
    objects: tuple[WorldObject, ...]
    motions: tuple[Motion, ...]
    background: tuple[str, ...]
    caption: str = ""
    kind: str = ""

    def objects_at(self, t: int) -> tuple[WorldObject, ...]:
        """The objects as they are in frame ``t``."""
        return tuple(m.at(o, t) for o, m in zip(self.objects, self.motions))

    def condition(self, kind: str) -> np.ndarray:
        """(T, H, W, 3) uint8 ``kind`` ("depth" or "pose") maps of every frame (:func:`depth_map`,
        :func:`pose_map`)."""
        draw = {"depth": depth_map, "pose": pose_map}.get(kind)
        if draw is None:
            raise VideditError(f"a toy clip draws depth or pose maps, not {kind!r}")
        size = self.frames.shape[1]
        return np.stack([draw(self.objects_at(t), size) for t in range(len(self.frames))])


CLIP_KINDS: tuple[str, ...] = ("translate", "scale", "rotate", "occlude")


def background_label(background: tuple[str, ...]) -> str:
    """``("gray",)`` -> ``"gray"``; ``("white", "black")`` -> ``"white and black"``."""
    return " and ".join(background)


def caption_for(objects: tuple[WorldObject, ...], background: tuple[str, ...]) -> str:
    """``"a red circle and a blue square on a white background"``."""
    if not objects:
        raise VideditError("a caption needs at least one object")
    things = " and ".join(f"a {o.colour} {o.shape}" for o in objects)
    return f"{things} on a {background_label(background)} background"


def render_background(background: tuple[str, ...], size: int) -> np.ndarray:
    """(H, W, 3) float32 background: plain, or left/right halves."""
    if len(background) not in (1, 2) or any(b not in BACKGROUND_COLOURS for b in background):
        raise VideditError(
            f"background must be one or two of {sorted(BACKGROUND_COLOURS)}, got {background!r}"
        )
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUND_COLOURS[background[0]]
    if len(background) == 2:
        img[:, size // 2 :] = BACKGROUND_COLOURS[background[1]]
    return img


def object_coverage(obj: WorldObject, size: int, supersample: int = 4) -> np.ndarray:
    """(H, W) float32 fraction of each pixel covered by ``obj`` (anti-aliased)."""
    k = supersample
    canvas = np.zeros((size * k, size * k), np.uint8)
    shift = 4
    # Supersampled pixel J has its centre at J in cv2's coordinates and covers
    # [J/k, (J+1)/k) in ours, so cv2 = ours * k - 0.5.
    pts = np.round((obj.outline() * k - 0.5) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(canvas, [pts.reshape(-1, 1, 2)], 255, lineType=cv2.LINE_AA, shift=shift)
    if k > 1:
        canvas = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return canvas.astype(np.float32) / 255.0


def render(
    objects: tuple[WorldObject, ...], background: tuple[str, ...], size: int, supersample: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Composite ``objects`` (back to front) over ``background``.

    Returns the (H, W, 3) uint8 image and the (N, H, W) float32 visible coverage.
    """
    img = render_background(background, size)
    cov = np.stack([object_coverage(o, size, supersample) for o in objects]) if objects else np.zeros(
        (0, size, size), np.float32
    )
    vis = cov.copy()
    for i, o in enumerate(objects):
        a = cov[i][..., None]  # (H, W, 1)
        img = img * (1.0 - a) + np.asarray(o.rgb, np.float32) * a
        vis[:i] *= 1.0 - cov[i]  # what is drawn later hides what is behind
    return np.clip(np.round(img), 0, 255).astype(np.uint8), vis


# ---------------------------------------------------------------- conditions: depth and pose

# Depth as MiDaS gives it (relative inverse depth, near = bright, as Text2Video-Zero's depth ControlNet
# reads it): the objects are flat cards in front of a floor that comes nearer towards the bottom.
_FLOOR_DEPTH = (0.0, 60.0)    # inverse depth at the top and bottom rows of the background
_NEAREST_CARD = 255.0         # the front object's inverse depth; each object behind it is _CARD_STEP less
_CARD_STEP = 65.0
# Pose as OpenPose draws it (Text2Video-Zero's pose ControlNet reads these renderings): on black, each
# object a skeleton of limbs from its centre to its corners (a circle: 8 points of its rim), each limb
# in the next of OpenPose's limb colours, with a dot at every joint.
_POSE_COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
                 (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255))
_CIRCLE_SPOKES = 8
_LIMB_WIDTH = 1.0             # pixels at the map's size
_JOINT_RADIUS = 1.5


def depth_map(objects: tuple[WorldObject, ...], size: int, supersample: int = 4) -> np.ndarray:
    """(H, W, 3) uint8 inverse depth of ``objects`` (back to front): a floor ramp, the front object
    brightest, each one behind it darker; grey in three channels, anti-aliased as :func:`render`."""
    ramp = np.linspace(*_FLOOR_DEPTH, size, dtype=np.float32)[:, None].repeat(size, 1)
    depth = ramp
    for i, o in enumerate(objects):
        a = object_coverage(o, size, supersample)
        depth = depth * (1.0 - a) + (_NEAREST_CARD - _CARD_STEP * (len(objects) - 1 - i)) * a
    return np.repeat(np.clip(np.round(depth), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def skeleton(obj: WorldObject) -> np.ndarray:
    """(K, 2) joints at the ends of ``obj``'s limbs (its corners; a circle's rim at 8 points), pixels."""
    outline = obj.outline()
    return outline[:: _CIRCLE_VERTICES // _CIRCLE_SPOKES] if obj.shape == "circle" else outline


def pose_map(objects: tuple[WorldObject, ...], size: int, supersample: int = 4) -> np.ndarray:
    """(H, W, 3) uint8 skeletons of ``objects`` on black (see :func:`skeleton`), anti-aliased."""
    k, shift = supersample, 4
    canvas = np.zeros((size * k, size * k, 3), np.uint8)
    to_cv = lambda xy: tuple(np.round((np.asarray(xy) * k - 0.5) * (1 << shift)).astype(int))   # noqa: E731
    for o in objects:
        centre = to_cv(o.center)
        for j, end in enumerate(skeleton(o)):
            colour = _POSE_COLOURS[j % len(_POSE_COLOURS)]
            cv2.line(canvas, centre, to_cv(end), colour, max(1, round(_LIMB_WIDTH * k)), cv2.LINE_AA, shift)
            cv2.circle(canvas, to_cv(end), round(_JOINT_RADIUS * k * (1 << shift)), colour, -1, cv2.LINE_AA, shift)
        cv2.circle(canvas, centre, round(_JOINT_RADIUS * k * (1 << shift)), (255, 255, 255), -1, cv2.LINE_AA, shift)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA) if k > 1 else canvas


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _sample_background(rng: np.random.Generator, config: WorldConfig) -> tuple[str, ...]:
    names = list(BACKGROUND_COLOURS)
    if rng.random() < config.two_tone_prob:
        i, j = rng.choice(len(names), size=2, replace=False)
        return (names[i], names[j])
    return (names[rng.integers(len(names))],)


def _sample_objects(rng: np.random.Generator, n: int, config: WorldConfig) -> tuple[WorldObject, ...]:
    size = config.size
    colours = list(OBJECT_COLOURS)
    colour_idx = rng.choice(len(colours), size=n, replace=False)  # distinct colours
    # Drawn only when asked for, so that scenes from a config without overlap keep their seeds.
    overlap = n == 2 and config.overlap_prob > 0 and rng.random() < config.overlap_prob
    for _ in range(1000):
        objs = []
        for c in colour_idx:
            shape = SHAPES[rng.integers(len(SHAPES))]
            scale = rng.uniform(config.min_scale, config.max_scale) * size
            angle = 0.0 if shape == "circle" else float(rng.uniform(-config.max_angle, config.max_angle))
            margin = scale * shape_extent(shape) + 1.0
            center = (float(rng.uniform(margin, size - margin)), float(rng.uniform(margin, size - margin)))
            objs.append(WorldObject(shape, colours[c], center, float(scale), angle))
        if overlap:  # apart by 0.45-0.85 of their summed extents: the front one hides part of the back one
            a, b = objs
            reach = a.scale * shape_extent(a.shape) + b.scale * shape_extent(b.shape)
            if 0.45 * reach < math.dist(a.center, b.center) < 0.85 * reach:
                return tuple(objs)
        elif all(
            math.dist(a.center, b.center)
            > a.scale * shape_extent(a.shape) + b.scale * shape_extent(b.shape) + 2.0
            for i, a in enumerate(objs)
            for b in objs[i + 1 :]
        ):
            return tuple(objs)
    raise VideditError(f"could not place {n} objects without overlap; lower max_scale or raise size")


def make_scene(
    objects: tuple[WorldObject, ...], background: tuple[str, ...], size: int = 64, supersample: int = 4
) -> Scene:
    """Render given objects (back to front) into a :class:`Scene`."""
    image, vis = render(objects, background, size, supersample)
    return Scene(image, vis >= 0.5, vis, tuple(objects), tuple(background), caption_for(objects, background))


def sample_scene(seed: int | np.random.Generator, config: WorldConfig = WorldConfig()) -> Scene:
    """A random scene; the same seed gives the same scene."""
    rng = _rng(seed)
    n = 2 if rng.random() < config.two_object_prob else 1
    background = _sample_background(rng, config)
    objects = _sample_objects(rng, n, config)
    return make_scene(objects, background, config.size, config.supersample)


def sample_scenes(seed: int, n: int, config: WorldConfig = WorldConfig()) -> list[Scene]:
    """``n`` scenes from one seed."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, config) for _ in range(n)]


# ---------------------------------------------------------------- clips


def _inverse_map(obj_t: WorldObject, obj_u: WorldObject, xy: np.ndarray) -> np.ndarray:
    """Where the surface point at ``xy`` (..., 2) on ``obj_t`` lands on ``obj_u``."""
    u = (xy - np.asarray(obj_t.center)) @ _rotation(obj_t.angle) / obj_t.scale  # R^T (x - c) / s
    return np.asarray(obj_u.center) + obj_u.scale * u @ _rotation(obj_u.angle).T


def _top_ids(vis: np.ndarray) -> np.ndarray:
    """(H, W) int: 0 for background, k + 1 where object k is visible (coverage >= 0.5)."""
    ids = np.zeros(vis.shape[1:], np.int64)
    for k in range(vis.shape[0]):
        ids[vis[k] >= 0.5] = k + 1
    return ids


def render_clip(
    objects: tuple[WorldObject, ...],
    motions: tuple[Motion, ...],
    background: tuple[str, ...],
    n_frames: int,
    size: int = 64,
    supersample: int = 4,
    kind: str = "",
) -> Clip:
    """Render ``objects`` moving by ``motions`` for ``n_frames`` frames with exact flow."""
    if len(motions) != len(objects):
        raise VideditError(f"need one motion per object, got {len(motions)} for {len(objects)}")
    if n_frames < 2:
        raise VideditError(f"a clip needs n_frames >= 2, got {n_frames}")
    frames, vis = [], []
    poses = [tuple(m.at(o, t) for o, m in zip(objects, motions)) for t in range(n_frames)]
    for objs in poses:
        img, v = render(objs, background, size, supersample)
        frames.append(img)
        vis.append(v)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    centres = np.stack([xs + 0.5, ys + 0.5], axis=-1)  # (H, W, 2)
    flows = np.zeros((n_frames - 1, size, size, 2), np.float32)
    occl = np.zeros((n_frames - 1, size, size), bool)
    for t in range(n_frames - 1):
        ids_t, ids_u = _top_ids(vis[t]), _top_ids(vis[t + 1])
        target = centres.copy()
        for k in range(len(objects)):
            sel = ids_t == k + 1
            target[sel] = _inverse_map(poses[t][k], poses[t + 1][k], centres[sel])
        flows[t] = (target - centres).astype(np.float32)
        col = np.floor(target[..., 0]).astype(np.int64)
        row = np.floor(target[..., 1]).astype(np.int64)
        inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
        landed = np.full_like(ids_t, -1)
        landed[inside] = ids_u[row[inside], col[inside]]
        occl[t] = landed != ids_t
    return Clip(
        frames=np.stack(frames),
        flows=flows,
        occlusions=occl,
        masks=np.stack(vis) >= 0.5,
        objects=tuple(objects),
        motions=tuple(motions),
        background=tuple(background),
        caption=caption_for(tuple(objects), tuple(background)),
        kind=kind,
    )


def sample_clip(
    seed: int | np.random.Generator,
    kind: str = "translate",
    n_frames: int = 8,
    config: WorldConfig = WorldConfig(),
) -> Clip:
    """A random clip of one motion ``kind`` (see :data:`CLIP_KINDS`).

    ``translate``/``scale``/``rotate`` move one object; ``occlude`` slides a
    front object across a static back one.
    """
    if kind not in CLIP_KINDS:
        raise VideditError(f"unknown clip kind {kind!r}; choose from {list(CLIP_KINDS)}")
    rng = _rng(seed)
    size = config.size
    background = _sample_background(rng, config)
    colours = list(OBJECT_COLOURS)
    span = n_frames - 1

    def obj(colour: str, scale: float, center: tuple[float, float]) -> WorldObject:
        shape = SHAPES[rng.integers(len(SHAPES))]
        angle = 0.0 if shape == "circle" else float(rng.uniform(-config.max_angle, config.max_angle))
        return WorldObject(shape, colour, center, scale, angle)

    scale = float(rng.uniform(config.min_scale, config.max_scale) * size)
    if kind == "occlude":
        ci, cj = rng.choice(len(colours), size=2, replace=False)
        y = float(rng.uniform(0.35, 0.65) * size)
        back = obj(colours[ci], scale, (size / 2, y))
        front_scale = float(rng.uniform(config.min_scale, config.max_scale) * size)
        direction = 1.0 if rng.random() < 0.5 else -1.0
        x0 = size / 2 - direction * 0.3 * size
        front = obj(colours[cj], front_scale, (x0, y + float(rng.uniform(-0.1, 0.1) * size)))
        speed = direction * 0.6 * size / span
        return render_clip(
            (back, front), (Motion(), Motion(velocity=(speed, 0.0))), background, n_frames, size,
            config.supersample, kind,
        )
    colour = colours[rng.integers(len(colours))]
    if kind == "translate":
        travel = 0.3 * size
        a = rng.uniform(0, 2 * math.pi)
        v = (travel * math.cos(a) / span, travel * math.sin(a) / span)
        c0 = (size / 2 - v[0] * span / 2, size / 2 - v[1] * span / 2)
        motion = Motion(velocity=v)
    elif kind == "scale":
        scale = float(config.min_scale * size)
        c0 = (float(rng.uniform(0.4, 0.6) * size), float(rng.uniform(0.4, 0.6) * size))
        motion = Motion(scale_rate=(config.max_scale / config.min_scale) ** (1.0 / span))
    else:  # rotate
        c0 = (float(rng.uniform(0.4, 0.6) * size), float(rng.uniform(0.4, 0.6) * size))
        motion = Motion(angular_velocity=float(rng.choice([-1.0, 1.0]) * 60.0 / span))
    o = obj(colour, scale, c0)
    if kind == "rotate" and o.shape == "circle":  # a rotating circle shows no motion
        o = WorldObject("square", o.colour, o.center, o.scale, o.angle)
    return render_clip((o,), (motion,), background, n_frames, size, config.supersample, kind)
