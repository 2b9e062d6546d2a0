"""Captions for Shapes scenes, and the parser that reads a prompt back into intent.

`scene_captions` writes paraphrases of one scene ("a small red circle moves left on
a blue background", "red ball rolling to the left, blue background", ...). The first
is canonical: it names every object's size, colour, shape and motion and the
background's colour and pattern. Every paraphrase names each object's colour, shape
and motion; some leave out sizes or the background.

`parse_prompt` turns any prompt (a caption, or text a person typed) into a
`PromptIntent`: the objects asked for and the background, each attribute None when
the prompt does not say it. The evaluator scores a video against that intent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from distill.data import vocab
from distill.data.scene import Background, ObjectSpec, Scene

# --- writing captions -------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(options, rng: np.random.Generator | None):
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def noun_phrase(obj: ObjectSpec, rng: np.random.Generator | None, with_size: bool, article: bool = True) -> str:
    """"a small red ball"; the size is left out for objects whose size changes."""
    words = []
    if with_size and obj.motion not in ("grow", "shrink"):
        words.append(_pick(vocab.SIZE_WORDS[obj.size], rng))
    words.append(obj.colour)  # canonical colour names only: the model learns one word per colour
    words.append(_pick(vocab.SHAPE_NOUNS[obj.shape], rng))
    text = " ".join(words)
    return f"{_article(text)} {text}" if article else text


def verb_phrase(obj: ObjectSpec, rng: np.random.Generator | None, participle: bool) -> str:
    """"moves left" (finite) or "moving left" (participle)."""
    form = 1 if participle else 0
    if obj.motion in vocab.DIRECTIONS:
        verbs = list(vocab.MOTION_PHRASES["straight"])
        if obj.shape == "circle" and obj.motion in ("left", "right"):
            verbs.append(vocab.ROLL_VERB)
        direction = _pick(vocab.DIRECTION_PHRASES[obj.motion], rng)
        phrases = [v[form].format(dir=direction) for v in verbs]
        extra = {"up": vocab.UP_VERBS, "down": vocab.DOWN_VERBS}.get(obj.motion, ())
        phrases += [v[form] for v in extra]
        return _pick(phrases, rng)
    return _pick(vocab.MOTION_PHRASES[obj.motion], rng)[form]


def background_phrase(bg: Background, rng: np.random.Generator | None) -> str:
    """"blue striped background" (no article)."""
    words = [bg.colour]
    if bg.pattern != "solid":
        words.append(_pick(vocab.PATTERN_WORDS[bg.pattern], rng))
    words.append(_pick(vocab.BACKGROUND_NOUNS, rng))
    return " ".join(words)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def scene_caption(scene: Scene, rng: np.random.Generator | None = None, template: int = 0) -> str:
    """One caption; rng None gives canonical words, `template` picks the sentence form."""
    objs = scene.objects
    with_size = rng is None or bool(rng.integers(2))
    finite = _join([f"{noun_phrase(o, rng, with_size)} {verb_phrase(o, rng, False)}" for o in objs])
    participle = _join([f"{noun_phrase(o, rng, with_size)} {verb_phrase(o, rng, True)}" for o in objs])
    bare = ", ".join(f"{noun_phrase(o, rng, with_size, article=False)} {verb_phrase(o, rng, True)}" for o in objs)
    bg = background_phrase(scene.background, rng)
    templates = (
        f"{finite} on {_article(bg)} {bg}",
        f"{bare}, {bg}",
        f"on {_article(bg)} {bg}, {finite}",
        f"{bg} with {participle}",
        f"{finite} over {_article(bg)} {bg}",
        finite,
        bare,
    )
    return templates[template]


NUM_TEMPLATES = 7


def scene_captions(scene: Scene, rng: np.random.Generator, count: int = 6) -> list[str]:
    """`count` distinct paraphrases (fewer if the scene allows fewer); [0] is canonical."""
    captions = [scene_caption(scene)]
    for _ in range(4 * count):
        if len(captions) >= count:
            break
        text = scene_caption(scene, rng, int(rng.integers(NUM_TEMPLATES)))
        if text not in captions:
            captions.append(text)
    return captions


# --- reading prompts ---------------------------------------------------------------


@dataclass(frozen=True)
class ObjectIntent:
    """What a prompt asks of one object; None = not said."""

    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    motion: str | None = None


@dataclass(frozen=True)
class PromptIntent:
    objects: tuple[ObjectIntent, ...]
    background: str | None = None  # colour name
    pattern: str | None = None  # "gradient" / "stripes" (None: plain or not said)

    @classmethod
    def from_scene(cls, scene: Scene) -> "PromptIntent":
        """Everything the canonical caption says about a scene."""
        return cls(
            objects=tuple(
                ObjectIntent(o.colour, o.shape, None if o.motion in ("grow", "shrink") else o.size, o.motion)
                for o in scene.objects
            ),
            background=scene.background.colour,
            pattern=None if scene.background.pattern == "solid" else scene.background.pattern,
        )


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower().replace("'", ""))


def _lexicon() -> dict[tuple[str, ...], tuple[str, str]]:
    """Phrase (as tokens) -> (kind, value). Longest phrases win when matching."""
    lex: dict[tuple[str, ...], tuple[str, str]] = {}

    def add(phrases, kind, value):
        for p in phrases:
            lex[tuple(_tokens(p))] = (kind, value)

    for colour, words in vocab.COLOUR_SYNONYMS.items():
        add(words, "colour", colour)
    for shape, words in vocab.SHAPE_NOUNS.items():
        add(words, "shape", shape)
    for size, words in vocab.SIZE_WORDS.items():
        add(words, "size", size)
    for pattern, words in vocab.PATTERN_WORDS.items():
        add(words, "pattern", pattern)
    add(("stripes", "stripe", "stripey", "striped"), "pattern", "stripes")
    add(vocab.BACKGROUND_NOUNS + ("bg", "backgrounds"), "bgnoun", "background")
    add(("left", "leftward", "leftwards", "west"), "dir", "left")
    add(("right", "rightward", "rightwards", "east"), "dir", "right")
    add(("up", "upward", "upwards", "top", "rises", "rising", "rise", "climbs", "climbing", "ascends", "north"), "dir", "up")
    add(("down", "downward", "downwards", "bottom", "falls", "falling", "fall", "sinks", "sinking",
         "drops", "dropping", "descends", "south"), "dir", "down")
    add(("bounce", "bounces", "bouncing", "bouncy", "hops", "hopping", "jumps", "jumping"), "motion", "bounce")
    add(("in a circle", "in circles", "in a loop", "circles", "circling", "orbits", "orbiting", "orbit",
         "round in circles", "around in a circle", "spins around", "in a circular path"), "motion", "circle")
    add(("grow", "grows", "growing", "bigger", "larger", "expands", "expanding", "expand", "enlarges", "swells"),
        "motion", "grow")
    add(("shrink", "shrinks", "shrinking", "smaller", "contracts", "contracting"), "motion", "shrink")
    add(("still", "stationary", "motionless", "static", "not move", "not moving", "doesnt move", "stops",
         "stopped", "stays", "rests", "resting", "standing still", "stands still"), "motion", "stop")
    return lex


_LEXICON = _lexicon()
_MAX_PHRASE = max(len(k) for k in _LEXICON)


def _lex_items(tokens: list[str]) -> list[tuple[int, str, str]]:
    """Greedy longest match: [(token index, kind, value)]."""
    items, i = [], 0
    while i < len(tokens):
        for n in range(min(_MAX_PHRASE, len(tokens) - i), 0, -1):
            hit = _LEXICON.get(tuple(tokens[i:i + n]))
            if hit:
                items.append((i, *hit))
                i += n
                break
        else:
            i += 1
    return items


def _motion_of(items: list[tuple[int, str, str]]) -> str | None:
    for _, kind, value in items:
        if kind == "motion":
            return value
    horizontal = next((v for _, k, v in items if k == "dir" and v in ("left", "right")), None)
    vertical = next((v for _, k, v in items if k == "dir" and v in ("up", "down")), None)
    if horizontal and vertical:
        return f"{vertical}-{horizontal}"
    return horizontal or vertical


def parse_prompt(text: str) -> PromptIntent:
    """Read objects (colour, shape, size, motion) and background from a prompt.

    Objects are anchored on shape nouns: colour and size words just before a noun
    describe it, motion words after it (up to the next object's adjectives) say how
    it moves. A colour next to "background"/"backdrop" is the background's."""
    items = _lex_items(_tokens(text))
    used: set[int] = set()
    background = None
    for n, (pos, kind, _) in enumerate(items):
        if kind != "bgnoun":
            continue
        before = [m for m in range(max(0, n - 3), n) if items[m][1] == "colour" and pos - items[m][0] <= 4]
        after = [m for m in range(n + 1, min(len(items), n + 3)) if items[m][1] == "colour"
                 and items[m][0] - pos <= 3 and not (m + 1 < len(items) and items[m + 1][1] == "shape")]
        pick = before[-1:] or after[:1]
        if pick and background is None:
            background = items[pick[0]][2]
            used.add(pick[0])
    pattern = next((v for _, k, v in items if k == "pattern"), None)
    free = [(m, it) for m, it in enumerate(items) if m not in used and it[1] != "bgnoun" and it[1] != "pattern"]
    anchors = [j for j, (_, it) in enumerate(free) if it[1] == "shape"]
    objects = []
    for a, j in enumerate(anchors):
        start = anchors[a - 1] + 1 if a else 0
        stop = anchors[a + 1] if a + 1 < len(anchors) else len(free)
        between = [it for _, it in free[start:j]]
        # Adjectives: the colour/size words after the previous object's last motion word.
        last_motion = max((k for k, it in enumerate(between) if it[1] in ("dir", "motion")), default=-1)
        adjectives = between[last_motion + 1:]
        after = [it for _, it in free[j + 1:stop]]
        if a + 1 < len(anchors):  # the next object's adjectives are not this one's motion
            last = max((k for k, it in enumerate(after) if it[1] in ("dir", "motion")), default=-1)
            after = after[:last + 1]
        objects.append(ObjectIntent(
            colour=next((v for _, k, v in reversed(adjectives) if k == "colour"), None),
            shape=free[j][1][2],
            size=next((v for _, k, v in adjectives if k == "size"), None),
            motion=_motion_of(after),
        ))
    return PromptIntent(objects=tuple(objects), background=background, pattern=pattern)
