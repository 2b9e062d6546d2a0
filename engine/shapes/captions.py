"""Captions for Shapes scenes, and the parser that reads a prompt back into intent.

`scene_captions` writes paraphrases of one scene ("a small red circle moves left on
a blue background", "crimson ball rolling to the left, azure backdrop", ...). The first
is canonical: it names every object's size, colour, shape and motion and the
background's colour and pattern, in the canonical words. The others draw colour, shape,
size and motion words from their synonyms, and some leave out sizes, the background or
an object's motion, as people's prompts do. Every caption names each object's colour
and shape.

`parse_prompt` turns any prompt (a caption, or text a person typed) into a
`PromptIntent`: the objects asked for and the background, each attribute None when
the prompt does not say it. The evaluator scores a video against that intent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from engine.shapes import vocab
from engine.shapes.scene import CANONICAL_SLOTS, Background, ObjectSpec, Scene

# --- writing captions -------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(options, rng: np.random.Generator | None):
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def colour_word(colour: str, rng: np.random.Generator | None) -> str:
    """The canonical name half of the time, else any of its synonyms ("crimson", "azure")."""
    if rng is None or rng.random() < 0.5:
        return colour
    return _pick(vocab.COLOUR_SYNONYMS[colour], rng)


def noun_phrase(obj: ObjectSpec, rng: np.random.Generator | None, with_size: bool, article: bool = True) -> str:
    """"a small red ball"; the size is left out for objects whose size changes."""
    words = []
    if with_size and obj.motion not in ("grow", "shrink"):
        words.append(_pick(vocab.SIZE_WORDS[obj.size], rng))
    words.append(colour_word(obj.colour, rng))
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
    words = [colour_word(bg.colour, rng)]
    if bg.pattern != "solid":
        words.append(_pick(vocab.PATTERN_WORDS[bg.pattern], rng))
    words.append(_pick(vocab.BACKGROUND_NOUNS, rng))
    return " ".join(words)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def scene_caption(scene: Scene, rng: np.random.Generator | None = None, template: int = 0,
                  motion_dropout: float = 0.0) -> str:
    """One caption; rng None gives canonical words, `template` picks the sentence form (the
    last three name no background), `motion_dropout` the chance of leaving an object's
    motion unsaid."""
    objs = scene.objects
    with_size = rng is None or bool(rng.integers(2))
    says_motion = [rng is None or rng.random() >= motion_dropout for _ in objs]

    def verb(o: ObjectSpec, i: int, participle: bool) -> str:
        return f" {verb_phrase(o, rng, participle)}" if says_motion[i] else ""

    finite = _join([f"{noun_phrase(o, rng, with_size)}{verb(o, i, False)}" for i, o in enumerate(objs)])
    participle = _join([f"{noun_phrase(o, rng, with_size)}{verb(o, i, True)}" for i, o in enumerate(objs)])
    bare = ", ".join(f"{noun_phrase(o, rng, with_size, article=False)}{verb(o, i, True)}" for i, o in enumerate(objs))
    bg = background_phrase(scene.background, rng)
    templates = (
        f"{finite} on {_article(bg)} {bg}",
        f"{bare}, {bg}",
        f"on {_article(bg)} {bg}, {finite}",
        f"{bg} with {participle}",
        f"{finite} over {_article(bg)} {bg}",
        f"{participle} against {_article(bg)} {bg}",
        f"{finite} in front of {_article(bg)} {bg}",
        finite,
        bare,
        participle,
    )
    return templates[template]


NUM_TEMPLATES = 10
# The words the templates above add around the phrases (kept beside them: the prompt-set
# test checks that sampled captions use no other word).
TEMPLATE_WORDS: tuple[str, ...] = ("a", "an", "on", "over", "with", "against", "in", "front", "of", "and")


def caption_vocabulary() -> frozenset[str]:
    """Every word a training caption can contain, lower-cased (punctuation dropped). A
    prompt with a word outside it is one no template can produce."""
    phrases = [*TEMPLATE_WORDS, *vocab.BACKGROUND_NOUNS, *(w for ws in vocab.COLOUR_SYNONYMS.values() for w in ws),
               *(w for ws in vocab.SHAPE_NOUNS.values() for w in ws), *(w for ws in vocab.SIZE_WORDS.values() for w in ws),
               *(w for ws in vocab.PATTERN_WORDS.values() for w in ws),
               *(w for ws in vocab.DIRECTION_PHRASES.values() for w in ws),
               *(v for pairs in vocab.MOTION_PHRASES.values() for pair in pairs for v in pair),
               *(v for pair in vocab.UP_VERBS + vocab.DOWN_VERBS + (vocab.ROLL_VERB,) for v in pair)]
    return frozenset(w for p in phrases for w in caption_words(p.replace("{dir}", "")))


def caption_words(text: str) -> list[str]:
    return re.findall(r"[a-z'-]+", text.lower())


def scene_captions(scene: Scene, rng: np.random.Generator, count: int = 6, motion_dropout: float = 0.15) -> list[str]:
    """`count` distinct paraphrases (fewer if the scene allows fewer); [0] is canonical."""
    captions = [scene_caption(scene)]
    for _ in range(4 * count):
        if len(captions) >= count:
            break
        text = scene_caption(scene, rng, int(rng.integers(NUM_TEMPLATES)), motion_dropout)
        if text not in captions:
            captions.append(text)
    return captions


# --- hard negatives: a caption with one attribute made wrong ------------------------

_SHAPE_OF_NOUN = {noun: shape for shape, nouns in vocab.SHAPE_NOUNS.items() for noun in nouns}
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "leftward": "rightward",
             "rightward": "leftward", "upward": "downward", "downward": "upward", "top": "bottom", "bottom": "top"}
# verbs that carry their direction: each to a verb of the other way, same form
_OPPOSITE.update({down: up for (down, up) in zip(
    [f for pair in vocab.DOWN_VERBS for f in pair], [f for pair in vocab.UP_VERBS * 3 for f in pair])})
_OPPOSITE.update({up: down for (up, down) in zip(
    [f for pair in vocab.UP_VERBS for f in pair], [f for pair in vocab.DOWN_VERBS for f in pair])})
_DIRECTION_WORDS = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _OPPOSITE), key=len, reverse=True)) + r")\b")


def swapped_caption(caption: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """The caption with one shape noun changed to another shape's ("a red square" -> "a red
    star") or every direction reversed ("moves leftward" -> "moves rightward", "up-left" ->
    "down-right"), whichever it has (a coin toss when both): a caption that describes some
    other clip, for teaching the words that tell them apart. -> (caption, "shape" | "motion"),
    or None when it names neither. "circle" in a motion ("in a circle") is not a shape, and a
    bounce ("up and down") has no direction to reverse."""
    words = list(re.finditer(r"[a-z]+", caption))
    shapes = [m for i, m in enumerate(words) if m.group() in _SHAPE_OF_NOUN
              and not (m.group() == "circle" and "in" in (w.group() for w in words[max(0, i - 2):i]))]
    bounce = re.search(r"\b(up and down|down and up)\b", caption)
    directions = [] if bounce else list(_DIRECTION_WORDS.finditer(caption))
    if not shapes and not directions:
        return None
    if shapes and (not directions or rng.random() < 0.5):
        m = shapes[int(rng.integers(len(shapes)))]
        others = [s for s in vocab.SHAPES if s != _SHAPE_OF_NOUN[m.group()]]
        nouns = vocab.SHAPE_NOUNS[others[int(rng.integers(len(others)))]]
        return caption[:m.start()] + nouns[int(rng.integers(len(nouns)))] + caption[m.end():], "shape"
    out, last = [], 0
    for m in directions:
        out += [caption[last:m.start()], _OPPOSITE[m.group()]]
        last = m.end()
    return "".join(out) + caption[last:], "motion"


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
    add(("up", "upward", "upwards", "top", "upper", "rises", "rising", "rise", "climbs", "climbing", "ascends",
         "north"), "dir", "up")
    add(("down", "downward", "downwards", "bottom", "lower", "falls", "falling", "fall", "sinks", "sinking",
         "drops", "dropping", "descends", "south"), "dir", "down")
    add(("bounce", "bounces", "bouncing", "bouncy", "hops", "hopping", "jumps", "jumping"), "motion", "bounce")
    add(("in a circle", "in circles", "in a loop", "circles", "circling", "orbits", "orbiting", "orbit",
         "round in circles", "around in a circle", "spins around", "in a circular path"), "motion", "circle")
    add(("grow", "grows", "growing", "bigger", "larger", "expands", "expanding", "expand", "enlarges", "swells"),
        "motion", "grow")
    add(("shrink", "shrinks", "shrinking", "smaller", "contracts", "contracting"), "motion", "shrink")
    add(("still", "stationary", "motionless", "static", "not move", "not moving", "doesnt move", "stops",
         "stopped", "stays", "rests", "resting", "standing still", "stands still", "sits", "sitting", "unmoving",
         "frozen", "idle"), "motion", "stop")
    return lex


_LEXICON = _lexicon()
_MAX_PHRASE = max(len(k) for k in _LEXICON)


# "on gray", "against black": a colour right after one of these, with no shape after it,
# is the background's even when the prompt does not say "background".
BACKGROUND_PREPOSITIONS = ("on", "against", "over")


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
    tokens = _tokens(text)
    items = _lex_items(tokens)
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
    if background is None:
        for n, (pos, kind, value) in enumerate(items):
            follows = items[n + 1][1] if n + 1 < len(items) else None
            if kind == "colour" and pos and tokens[pos - 1] in BACKGROUND_PREPOSITIONS and follows not in ("shape", "size"):
                background = value
                used.add(n)
                break
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


# --- rewriting a prompt into the caption a canonical-caption model reads --------------


def _contrast(a: str, b: str) -> float:
    return float(np.linalg.norm(np.subtract(vocab.ALL_COLOURS[a], vocab.ALL_COLOURS[b])))


def canonical_prompt(text: str) -> str | None:
    """The canonical caption of what a prompt asks, with what it leaves unsaid filled in, or
    None when it names no object the Shapes world draws (or more than its canonical slots hold).

    A teacher trained on canonical captions only (`captions: canonical`) reads one phrasing
    of each scene; this maps a person's phrasing onto it, as video models' prompt extenders
    do: synonyms become the canonical words (through `parse_prompt`, the evaluator's own
    reading), an unsaid size is "medium", an unsaid motion "stays still", an object without a
    colour takes the object colour farthest from the background, and an unsaid background the
    colour farthest from every object's, so the object always stands out."""
    intent = parse_prompt(text)
    if not intent.objects or len(intent.objects) > max(CANONICAL_SLOTS):
        return None
    named = [o.colour for o in intent.objects if o.colour is not None]
    background = intent.background
    colours = []
    for o in intent.objects:
        colour = o.colour
        if colour is None:  # farthest from the background (or from nothing said: the first free colour)
            free = [c for c in vocab.OBJECT_COLOURS if c not in named + colours and c != background]
            free = free or list(vocab.OBJECT_COLOURS)
            colour = max(free, key=lambda c: _contrast(c, background)) if background else free[0]
        colours.append(colour)
    if background is None:
        candidates = [c for c in vocab.ALL_COLOURS if c not in colours]
        background = max(candidates, key=lambda c: min(_contrast(c, o) for o in colours))
    slots = CANONICAL_SLOTS[len(intent.objects)]
    objects = tuple(ObjectSpec(colour=c, shape=o.shape, size=o.size or "medium", motion=o.motion or "stop",
                               x=x, y=y) for o, c, (x, y) in zip(intent.objects, colours, slots))
    return scene_caption(Scene(objects, Background(background, intent.pattern or "solid")))
