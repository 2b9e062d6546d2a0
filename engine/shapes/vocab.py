"""The Shapes world's vocabulary: colours, shapes, sizes, motions, backgrounds and
the words that name them.

Defined once, here, and read by the renderer (what to draw), the caption writer
(how to say it), the prompt parser (which words mean what) and the evaluator
(which colours to look for). Adding a colour or a synonym is one edit in this file.
"""

from __future__ import annotations

# --- colours ------------------------------------------------------------------
# Object colours are saturated and at least ~40 CIELAB units (Delta E 1976) apart from
# each other and from the neutral background colours, so a pixel's nearest named
# colour survives the blur and colour shift of a small autoencoder. The evaluator's
# classifier is built from exactly these values.
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (30, 110, 235),
    "purple": (140, 40, 170),
    "pink": (250, 130, 200),
}
# Backgrounds may use any object colour not worn by an object of the same scene, or a
# neutral; neutrals are never object colours, so a grey thing is never asked for.
NEUTRAL_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
}
ALL_COLOURS: dict[str, tuple[int, int, int]] = {**OBJECT_COLOURS, **NEUTRAL_COLOURS}

# Captions always use the canonical (first) name; the prompt parser accepts them all.
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "amber", "tangerine"),
    "yellow": ("yellow", "golden", "lemon"),
    "green": ("green", "lime", "emerald"),
    "cyan": ("cyan", "turquoise", "aqua", "teal"),
    "blue": ("blue", "azure", "cobalt"),
    "purple": ("purple", "violet", "lilac"),
    "pink": ("pink", "magenta", "rose"),
    "black": ("black",),
    "white": ("white",),
    "gray": ("gray", "grey", "silver"),
}

# --- shapes -------------------------------------------------------------------
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
SHAPE_NOUNS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "star": ("star",),
}

# --- sizes (the shape's outer width, as a fraction of min(height, width)) -----
SIZES: dict[str, float] = {"small": 0.16, "medium": 0.22, "large": 0.30}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}

# --- motions ------------------------------------------------------------------
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right")
MOTIONS: tuple[str, ...] = DIRECTIONS + ("bounce", "circle", "grow", "shrink", "stop")
# Unit vectors in image coordinates (x right, y down) for the straight motions.
DIRECTION_VECTORS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-0.7071, -0.7071),
    "up-right": (0.7071, -0.7071),
    "down-left": (-0.7071, 0.7071),
    "down-right": (0.7071, 0.7071),
}

# Verb phrases for captions, as (finite form, participle form) pairs: "a red ball
# moves left" / "red ball moving left". The first pair of each motion is canonical.
# A "{dir}" slot is filled with a direction phrase from DIRECTION_PHRASES.
MOTION_PHRASES: dict[str, tuple[tuple[str, str], ...]] = {
    "straight": (
        ("moves {dir}", "moving {dir}"),
        ("slides {dir}", "sliding {dir}"),
        ("drifts {dir}", "drifting {dir}"),
        ("travels {dir}", "travelling {dir}"),
        ("glides {dir}", "gliding {dir}"),
    ),
    "bounce": (
        ("bounces", "bouncing"),
        ("bounces up and down", "bouncing up and down"),
        ("hops up and down", "hopping up and down"),
    ),
    "circle": (
        ("moves in a circle", "moving in a circle"),
        ("circles around", "circling around"),
        ("goes round in circles", "going round in circles"),
        ("orbits in a circle", "orbiting in a circle"),
    ),
    "grow": (
        ("grows", "growing"),
        ("gets bigger", "getting bigger"),
        ("expands", "expanding"),
        ("grows larger", "growing larger"),
    ),
    "shrink": (
        ("shrinks", "shrinking"),
        ("gets smaller", "getting smaller"),
        ("shrinks down", "shrinking down"),
    ),
    "stop": (
        ("stays still", "staying still"),
        ("sits still", "sitting still"),
        ("does not move", "not moving"),
        ("rests in place", "resting in place"),
    ),
}
# Extra verbs that only read well for some motions ("a ball rolls", "a star rises").
UP_VERBS: tuple[tuple[str, str], ...] = (("rises", "rising"), ("floats upward", "floating upward"))
DOWN_VERBS: tuple[tuple[str, str], ...] = (("falls", "falling"), ("sinks", "sinking"), ("drops down", "dropping down"))
ROLL_VERB: tuple[str, str] = ("rolls {dir}", "rolling {dir}")

DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("left", "to the left", "leftward"),
    "right": ("right", "to the right", "rightward"),
    "up": ("up", "upward", "toward the top"),
    "down": ("down", "downward", "toward the bottom"),
    "up-left": ("up and to the left", "diagonally up-left", "toward the top left"),
    "up-right": ("up and to the right", "diagonally up-right", "toward the top right"),
    "down-left": ("down and to the left", "diagonally down-left", "toward the bottom left"),
    "down-right": ("down and to the right", "diagonally down-right", "toward the bottom right"),
}

# --- backgrounds --------------------------------------------------------------
BACKGROUND_PATTERNS: tuple[str, ...] = ("solid", "gradient", "stripes")
PATTERN_WORDS: dict[str, tuple[str, ...]] = {
    "solid": ("plain", "solid"),
    "gradient": ("gradient", "shaded"),
    "stripes": ("striped", "stripy"),
}
BACKGROUND_NOUNS: tuple[str, ...] = ("background", "backdrop")
