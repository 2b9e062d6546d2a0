"""Structured Shapes scenes: what is in a clip, how it moves, and how to sample one.

A scene is resolution-free: positions are fractions of the frame's width and height,
sizes and speeds are fractions of min(height, width) (per second for speeds). The
renderer turns it into pixels at any size and fps; the captions and the evaluator
read the same structure.

Motion is a closed-form function of time since the scene started, so any frame of a
stream can be rendered without rendering the frames before it, and a stream can run
for hours: straight motions wrap around the frame (the renderer draws on a torus),
bounces and orbits are periodic, grow/shrink are saw-tooth cycles.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from engine.shapes import vocab


@dataclass(frozen=True)
class ObjectSpec:
    """One object and its motion, with its state at the moment its scene starts."""

    colour: str  # a key of vocab.OBJECT_COLOURS
    shape: str  # one of vocab.SHAPES
    size: str  # a key of vocab.SIZES
    motion: str  # one of vocab.MOTIONS
    x: float  # centre, fraction of width, at the scene's first frame
    y: float  # centre, fraction of height
    speed: float = 0.18  # straight motions: min(H, W) per second
    period: float = 2.0  # seconds per bounce / orbit / grow-shrink cycle
    amplitude: float = 0.18  # bounce height or orbit radius, fraction of min(H, W)
    clockwise: bool = True  # orbit direction
    scale: float = 1.0  # size multiplier at the first frame (grow/shrink cycle position)
    elapsed: float = 0.0  # seconds of this motion already run when the scene starts


@dataclass(frozen=True)
class Background:
    colour: str  # a key of vocab.ALL_COLOURS
    pattern: str = "solid"  # one of vocab.BACKGROUND_PATTERNS
    angle: float = 0.0  # gradient / stripe direction, degrees
    stripe_width: float = 0.08  # fraction of min(H, W)


@dataclass(frozen=True)
class Scene:
    """Objects drawn back to front over a background, from `start_frame` on."""

    objects: tuple[ObjectSpec, ...]
    background: Background
    start_frame: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(
            objects=tuple(ObjectSpec(**o) for o in d["objects"]),
            background=Background(**d["background"]),
            start_frame=int(d.get("start_frame", 0)),
        )


# Grow and shrink cycle the size multiplier between these bounds (saw-tooth), so an
# object never vanishes or fills the frame however long the stream runs.
SCALE_MIN, SCALE_MAX = 0.55, 1.6


@dataclass(frozen=True)
class SceneSampling:
    """Distributions a random scene is drawn from (see `random_scene`)."""

    object_count_weights: tuple[float, ...] = (0.5, 0.3, 0.2)  # P(1), P(2), P(3) objects
    pattern_weights: tuple[float, ...] = (0.5, 0.25, 0.25)  # solid, gradient, stripes
    speed_range: tuple[float, float] = (0.14, 0.26)  # min(H, W) per second
    bounce_period_range: tuple[float, float] = (0.6, 0.9)  # a 1 s clip holds a bounce
    orbit_period_range: tuple[float, float] = (1.4, 2.2)  # a 1 s clip turns >= 160 deg
    grow_period_range: tuple[float, float] = (2.5, 3.5)
    motions: tuple[str, ...] = vocab.MOTIONS
    shapes: tuple[str, ...] = vocab.SHAPES
    colours: tuple[str, ...] = tuple(vocab.OBJECT_COLOURS)
    sizes: tuple[str, ...] = tuple(vocab.SIZES)
    # "random": objects start anywhere in the frame's middle 60 % (kept apart). "canonical":
    # object i of n starts at CANONICAL_SLOTS[n][i] (a bouncing one on the floor below it),
    # moved by at most `jitter` (fraction of the frame) each way: the caption lists objects in
    # scene order, so their places follow from the prompt. A generator trained on random
    # places must first decide where an object goes, and until it can, its best guess at high
    # noise is the caption's colour spread over every place the object could be (a blob); with
    # the places known, the outline pays at every noise level (docs/default-model.md).
    layout: str = "random"
    jitter: float = 0.03
    # "either": an orbit turns clockwise or anticlockwise (drawn, and not in the caption);
    # "clockwise": always clockwise, so that "circling" names one path from where the object
    # starts rather than two that part within half a second (the draw is made either way, so
    # everything else a seed draws stays the same).
    orbit: str = "either"


LAYOUTS: tuple[str, ...] = ("random", "canonical")
ORBITS: tuple[str, ...] = ("either", "clockwise")
# (x, y) starting centres, fractions of the frame, for scenes of 1, 2 and 3 objects; more
# objects than slots take random places.
CANONICAL_SLOTS: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((0.5, 0.5),),
    2: ((0.3, 0.5), (0.7, 0.5)),
    3: ((0.25, 0.32), (0.75, 0.32), (0.5, 0.7)),
}
CANONICAL_FLOOR = 0.7  # where a bouncing object starts in the canonical layout


def random_object(rng: np.random.Generator, sampling: SceneSampling, colour: str, aspect: float) -> ObjectSpec:
    """Draw one object of a given colour; `aspect` = width / height of the frame."""
    shape = str(rng.choice(sampling.shapes))
    size = str(rng.choice(sampling.sizes))
    motion = str(rng.choice(sampling.motions))
    obj = ObjectSpec(
        colour=colour,
        shape=shape,
        size=size,
        motion=motion,
        x=float(rng.uniform(0.2, 0.8)),
        y=float(rng.uniform(0.2, 0.8)),
        speed=float(rng.uniform(*sampling.speed_range)),
        clockwise=bool(rng.integers(2)) or sampling.orbit == "clockwise",
    )
    if motion == "bounce":
        obj = replace(obj, y=float(rng.uniform(0.6, 0.8)))  # start on a floor low in the frame
    return with_motion(obj, motion, rng, sampling)


def placed_object(rng: np.random.Generator, sampling: SceneSampling, colour: str, aspect: float,
                  slot: tuple[float, float]) -> ObjectSpec:
    """Draw one object as `random_object` does, then start it at `slot` (x, y), a bouncing
    one on the floor below it, moved by up to `sampling.jitter` each way."""
    obj = random_object(rng, sampling, colour, aspect)
    x, y = slot
    if obj.motion == "bounce":
        y = max(y, CANONICAL_FLOOR)
    dx, dy = rng.uniform(-sampling.jitter, sampling.jitter, size=2)
    return replace(obj, x=float(x + dx), y=float(y + dy))


def with_motion(obj: ObjectSpec, motion: str, rng: np.random.Generator, sampling: SceneSampling) -> ObjectSpec:
    """The same object carrying on from its current state with a new motion."""
    if motion == "bounce":
        return replace(obj, motion=motion, period=float(rng.uniform(*sampling.bounce_period_range)),
                       amplitude=float(rng.uniform(0.22, 0.32)), scale=1.0)
    if motion == "circle":
        return replace(obj, motion=motion, period=float(rng.uniform(*sampling.orbit_period_range)),
                       amplitude=float(rng.uniform(0.14, 0.22)), scale=1.0)
    if motion in ("grow", "shrink"):
        return replace(obj, motion=motion, period=float(rng.uniform(*sampling.grow_period_range)),
                       scale=float(obj.scale if obj.motion in ("grow", "shrink") else 1.0))
    return replace(obj, motion=motion, scale=1.0)


def random_scene(rng: np.random.Generator, sampling: SceneSampling = SceneSampling(), aspect: float = 1.0) -> Scene:
    """A scene of 1..len(object_count_weights) objects with distinct colours, on a
    background whose colour no object wears (the evaluator finds objects by colour)."""
    weights = np.asarray(sampling.object_count_weights, float)
    count = int(rng.choice(len(weights), p=weights / weights.sum())) + 1
    colours = [str(c) for c in rng.choice(sampling.colours, size=count, replace=False)]
    if sampling.layout not in LAYOUTS:
        raise ValueError(f"unknown layout {sampling.layout!r}; one of {LAYOUTS}")
    if sampling.orbit not in ORBITS:
        raise ValueError(f"unknown orbit {sampling.orbit!r}; one of {ORBITS}")
    if sampling.layout == "canonical" and count in CANONICAL_SLOTS:
        objects_at = tuple(placed_object(rng, sampling, colour, aspect, slot)
                           for colour, slot in zip(colours, CANONICAL_SLOTS[count]))
        return Scene(objects=objects_at, background=random_background(rng, sampling, colours))
    objects: list[ObjectSpec] = []
    for colour in colours:
        # Start objects apart (the best of a few draws), or two moving the same way
        # overlap for the whole stream and neither can be seen whole.
        draws = [random_object(rng, sampling, colour, aspect) for _ in range(6)]
        objects.append(max(draws, key=lambda d: _clearance(d, objects)))
    return Scene(objects=tuple(objects), background=random_background(rng, sampling, colours))


def _clearance(obj: ObjectSpec, others: list[ObjectSpec]) -> float:
    """Smallest gap between obj and the others at the start, in min(H, W) units,
    counting each at its largest size (edges of the unit square are not walls: the
    frame wraps, so distances are taken round the torus)."""
    gaps = [1.0]
    for o in others:
        dx = abs(obj.x - o.x) % 1.0
        dy = abs(obj.y - o.y) % 1.0
        dist = math.hypot(min(dx, 1 - dx), min(dy, 1 - dy))
        gaps.append(dist - 0.5 * SCALE_MAX * (vocab.SIZES[obj.size] + vocab.SIZES[o.size]))
    return min(gaps)


def random_background(rng: np.random.Generator, sampling: SceneSampling, taken: list[str]) -> Background:
    free = [c for c in vocab.ALL_COLOURS if c not in taken]
    pw = np.asarray(sampling.pattern_weights, float)
    return Background(
        colour=str(rng.choice(free)),
        pattern=str(rng.choice(vocab.BACKGROUND_PATTERNS, p=pw / pw.sum())),
        angle=float(rng.choice([0.0, 45.0, 90.0, 135.0])),
        stripe_width=float(rng.uniform(0.06, 0.1)),
    )


# --- kinematics -----------------------------------------------------------------

def object_state(obj: ObjectSpec, t: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre (x, y) in pixels and outer width in pixels at times `t` (seconds since
    the scene started).  t: [T] -> x [T], y [T], diameter [T]. x, y are not wrapped:
    the renderer draws modulo the frame size."""
    unit = float(min(height, width))
    t = np.asarray(t, np.float64) + obj.elapsed
    x0, y0 = obj.x * width, obj.y * height
    x, y = np.full_like(t, x0), np.full_like(t, y0)
    scale = np.full_like(t, obj.scale)
    if obj.motion in vocab.DIRECTION_VECTORS:
        ux, uy = vocab.DIRECTION_VECTORS[obj.motion]
        x = x0 + ux * obj.speed * unit * t
        y = y0 + uy * obj.speed * unit * t
    elif obj.motion == "bounce":
        # A ball under constant gravity: parabolic arcs of height h between impacts on
        # a floor, u the phase within a bounce; floor and phase are chosen so the
        # motion starts where the object is, and h is capped so the top of the arc
        # stays inside the frame (unless the object starts above that).
        half = 0.5 * vocab.SIZES[obj.size] * unit
        floor = max(y0, min(y0 + 0.5 * obj.amplitude * unit, height - half - 1.0))
        h = max(floor - y0, min(obj.amplitude * unit, floor - half - 1.0), 1e-3)
        u0 = 0.5 * (1.0 - math.sqrt(max(0.0, 1.0 - (floor - y0) / h)))
        u = np.mod(u0 + t / obj.period, 1.0)
        y = floor - 4.0 * h * u * (1.0 - u)
    elif obj.motion == "circle":
        # Orbit around a centre pulled towards the frame centre, starting at (x0, y0).
        r = obj.amplitude * unit
        phase = math.atan2(y0 - height / 2, x0 - width / 2)
        cx, cy = x0 - r * math.cos(phase), y0 - r * math.sin(phase)
        sign = 1.0 if obj.clockwise else -1.0  # y points down, so +angle is clockwise
        angle = phase + sign * 2 * np.pi * t / obj.period
        x, y = cx + r * np.cos(angle), cy + r * np.sin(angle)
    elif obj.motion in ("grow", "shrink"):
        span = SCALE_MAX - SCALE_MIN
        start = (np.clip(obj.scale, SCALE_MIN, SCALE_MAX) - SCALE_MIN) / span
        if obj.motion == "grow":
            scale = SCALE_MIN + span * np.mod(start + t / obj.period, 1.0)
        else:
            scale = SCALE_MAX - span * np.mod((1.0 - start) + t / obj.period, 1.0)
    return x, y, scale * vocab.SIZES[obj.size] * unit


def carried_on(obj: ObjectSpec, t: float) -> ObjectSpec:
    """The same object, unchanged, in a scene that starts `t` seconds later."""
    return replace(obj, elapsed=obj.elapsed + t)


def state_at(obj: ObjectSpec, t: float, height: int, width: int) -> ObjectSpec:
    """The object's state `t` seconds into its scene, as the start of a new scene
    (positions wrapped back into the frame)."""
    x, y, diameter = object_state(obj, np.array([t]), height, width)
    scale = float(diameter[0] / (vocab.SIZES[obj.size] * min(height, width)))
    return replace(obj, x=float(x[0] / width % 1.0), y=float(y[0] / height % 1.0), scale=scale, elapsed=0.0)
