"""The question world's logic: scenes of one to four objects, six question families, and the one function that
answers a question from a scene.

A scene is a tuple of objects (colour, shape, cell) in distinct cells of the seed world's 3x3 grid, drawn with its
renderer (nanovlm.data.vqa sums its one-object sprites). Spatial words compare grid columns and rows, as CLEVR's
do: "A left of B" means A's column is lower than B's (any rows), "A above B" that A's row is lower.

Families and their closed answer sets (CLEVR's, on our palette):
- exist          "is there a red circle?"                              yes | no
- count          "how many squares are there?" / "... red things ..."  0 1 2 3 4
- query_colour   "what colour is the circle [left of the blue square]?"  the 9 colours
- query_shape    "what shape is the red thing [above the green circle]?" the 3 shapes
- relation       "is the red circle left of the blue square?"          yes | no
- compare        "are there more circles than squares?"                yes | no

Every question is generated for a target answer: the family's answers are cycled, so each family's answers are
exactly balanced and the answer prior is uniform per family (a language prior remains per question *text*: "how
many red things" is mostly 0 or 1; that is what fusion=blind measures). A family's sampler only proposes a
scene likely to have the target answer; `answer` decides, and a proposal whose answer differs, or whose question
names an object that is not unique in the scene, is drawn again. So every kept question has exactly one answer,
computed from the scene by `answer` alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nanovlm.data.shapes import COLOURS, SHAPES

Object = tuple[str, str, int]  # colour, shape, cell (0..8, row-major)
Scene = tuple[Object, ...]
Combo = tuple[str, str]  # colour, shape

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBERS: tuple[str, ...] = ("0", "1", "2", "3", "4")
FAMILY_ANSWERS: dict[str, tuple[str, ...]] = {
    "exist": ("yes", "no"),
    "count": NUMBERS,
    "query_colour": tuple(COLOURS),
    "query_shape": SHAPES,
    "relation": ("yes", "no"),
    "compare": ("yes", "no"),
}
FAMILIES: tuple[str, ...] = tuple(FAMILY_ANSWERS)
ANSWERS: tuple[str, ...] = tuple(dict.fromkeys(a for answers in FAMILY_ANSWERS.values() for a in answers))
MAX_OBJECTS = 4


def holds(relation: str, a: Object, b: Object) -> bool:
    """Whether object a stands `relation` to object b on the grid."""
    (ra, ca), (rb, cb) = divmod(a[2], 3), divmod(b[2], 3)
    return {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}[relation]


@dataclass(frozen=True)
class Question:
    """A question as structure: its family and the words it is built from. `text` writes it; `answer` answers it."""

    family: str
    args: tuple[str, ...]  # per family, see `text`

    @property
    def text(self) -> str:
        a = self.args
        if self.family == "exist":  # (colour, shape)
            return f"is there a {a[0]} {a[1]}?"
        if self.family == "count":  # (attribute, value)
            return f"how many {_noun(a[0], a[1])} are there?"
        if self.family == "compare":  # (attribute, x, y)
            return f"are there more {_noun(a[0], a[1])} than {_noun(a[0], a[2])}?"
        if self.family == "relation":  # (colour, shape, relation, colour, shape)
            return f"is the {a[0]} {a[1]} {a[2]} the {a[3]} {a[4]}?"
        # query_colour (shape[, relation, colour, shape]) / query_shape (colour[, relation, colour, shape])
        target = a[0] if self.family == "query_colour" else f"{a[0]} thing"
        where = f" {a[1]} the {a[2]} {a[3]}" if len(a) > 1 else ""
        return f"what {'colour' if self.family == 'query_colour' else 'shape'} is the {target}{where}?"


def _noun(attribute: str, value: str) -> str:
    return f"{value}s" if attribute == "shape" else f"{value} things"


def _matches(obj: Object, attribute: str, value: str) -> bool:
    return obj[0 if attribute == "colour" else 1] == value


def _unique(scene: Scene, colour: str, shape: str) -> Object | None:
    found = [o for o in scene if o[0] == colour and o[1] == shape]
    return found[0] if len(found) == 1 else None


def answer(scene: Scene, question: Question) -> str | None:
    """The one true answer of `question` about `scene`; None when the question is ill-posed there (an object it
    names as "the ..." is absent or not unique)."""
    a, family = question.args, question.family
    if family == "exist":
        return "yes" if any(o[0] == a[0] and o[1] == a[1] for o in scene) else "no"
    if family == "count":
        return str(sum(_matches(o, a[0], a[1]) for o in scene))
    if family == "compare":
        more = sum(_matches(o, a[0], a[1]) for o in scene) > sum(_matches(o, a[0], a[2]) for o in scene)
        return "yes" if more else "no"
    if family == "relation":
        first, second = _unique(scene, a[0], a[1]), _unique(scene, a[3], a[4])
        if first is None or second is None:
            return None
        return "yes" if holds(a[2], first, second) else "no"
    candidates = _named(scene, question)
    if len(a) > 1:  # "... <relation> the <colour> <shape>": the anchor must be unique too
        anchor = _unique(scene, a[2], a[3])
        if anchor is None:
            return None
        candidates = [o for o in candidates if o != anchor and holds(a[1], o, anchor)]
    if len(candidates) != 1:
        return None
    return candidates[0][0] if family == "query_colour" else candidates[0][1]


def clause_decides(scene: Scene, question: Question) -> bool:
    """Whether a query's relation clause is what picks its object: more than one object in `scene` has the named
    colour (query_shape) or shape (query_colour), so "the circle" alone would not say which one."""
    if question.family not in ("query_colour", "query_shape") or len(question.args) == 1:
        return False
    return len(_named(scene, question)) > 1


def answer_ignoring_clause(scene: Scene, question: Question, truth: str) -> float:
    """The accuracy of answering a query from one of its named objects drawn at random, the relation clause
    ignored: the share of them whose colour (or shape) is `truth`."""
    named = _named(scene, question)
    index = 0 if question.family == "query_colour" else 1
    return sum(o[index] == truth for o in named) / len(named)


def _named(scene: Scene, question: Question) -> list[Object]:
    """The objects a query's noun names ("the circle", "the red thing"), before any relation clause."""
    attribute = "shape" if question.family == "query_colour" else "colour"
    return [o for o in scene if _matches(o, attribute, question.args[0])]


# --- Proposals: a scene and a question likely to have the target answer ----------------------------------------


def _place(rng: random.Random, combos: Sequence[Combo], n: int, used: set[int], keep: Callable[[Combo], bool]) -> list:
    """`n` objects of the combos `keep` accepts, in free cells (fewer if no combo is accepted)."""
    pool = [c for c in combos if keep(c)]
    free = [cell for cell in range(9) if cell not in used]
    if not pool:
        return []
    cells = rng.sample(free, n)
    used.update(cells)
    return [(*rng.choice(pool), cell) for cell in cells]


def _value(rng: random.Random, combos: Sequence[Combo], attribute: str) -> str:
    return rng.choice(sorted({c[0] if attribute == "colour" else c[1] for c in combos}))


def propose(
    rng: random.Random, family: str, target: str, combos: Sequence[Combo], relations: Sequence[str] = RELATIONS
) -> tuple[Scene, Question]:
    """One (scene, question) of `family` built to have answer `target`, objects drawn from `combos` only, spatial
    words from `relations` only."""
    used: set[int] = set()
    anything = lambda c: True  # noqa: E731
    if family == "exist":
        c, s = rng.choice(combos)
        if target == "yes":
            objects = [(c, s, rng.randrange(9))]
            used.add(objects[0][2])
            objects += _place(rng, combos, rng.randint(0, 3), used, anything)
        else:
            objects = _place(rng, combos, rng.randint(1, 4), used, lambda x: x != (c, s))
        return tuple(objects), Question(family, (c, s))
    if family in ("count", "compare"):
        attribute = rng.choice(("colour", "shape"))
        x = _value(rng, combos, attribute)
        if family == "count":
            k = int(target)
            objects = _place(rng, combos, k, used, lambda c: _matches((*c, 0), attribute, x))
            objects += _place(
                rng,
                combos,
                rng.randint(max(0, 1 - k), MAX_OBJECTS - k),
                used,
                lambda c: not _matches((*c, 0), attribute, x),
            )
            return tuple(objects), Question(family, (attribute, x))
        y = rng.choice([v for v in sorted({c[0] if attribute == "colour" else c[1] for c in combos}) if v != x])
        nx, ny = rng.choice(
            [(i, j) for i in range(5) for j in range(5) if 1 <= i + j <= 4 and (i > j) == (target == "yes")]
        )
        objects = _place(rng, combos, nx, used, lambda c: _matches((*c, 0), attribute, x))
        objects += _place(rng, combos, ny, used, lambda c: _matches((*c, 0), attribute, y))
        objects += _place(
            rng,
            combos,
            rng.randint(0, MAX_OBJECTS - nx - ny),
            used,
            lambda c: not _matches((*c, 0), attribute, x) and not _matches((*c, 0), attribute, y),
        )
        return tuple(objects), Question(family, (attribute, x, y))
    relation = rng.choice(relations)
    if family == "relation":
        first, second = rng.sample(list(combos), 2)
        objects = _place(rng, combos, 2, used, anything)
        objects = [(*first, objects[0][2]), (*second, objects[1][2])]
        objects += _place(rng, combos, rng.randint(0, 2), used, lambda c: c not in (first, second))
        return tuple(objects), Question(family, (*first, relation, *second))
    # query_colour / query_shape: the target object holds the answer; with p = 1/2 it is named through a relation
    keyed = [c for c in combos if c[0 if family == "query_colour" else 1] == target]
    obj = rng.choice(keyed)
    key = obj[1] if family == "query_colour" else obj[0]
    others = _place(rng, combos, 1 + rng.randint(0, 2), used, anything)
    objects = [(*obj, rng.choice([cell for cell in range(9) if cell not in used])), *others]
    if rng.random() < 0.5 or len(others) == 0:
        return tuple(objects), Question(family, (key,))
    anchor = others[0]
    relation = next((r for r in rng.sample(list(relations), len(relations)) if holds(r, objects[0], anchor)), relation)
    return tuple(objects), Question(family, (key, relation, anchor[0], anchor[1]))


def reachable_answers(family: str, combos: Sequence[Combo]) -> tuple[str, ...]:
    """The answers of `family` that scenes of `combos` can have: a query answers only the colours (or shapes) the
    combos hold; every other family's answers are all reachable from any two combos of distinct colours and
    shapes."""
    if family == "query_colour":
        return tuple(a for a in FAMILY_ANSWERS[family] if any(c == a for c, _ in combos))
    if family == "query_shape":
        return tuple(a for a in FAMILY_ANSWERS[family] if any(s == a for _, s in combos))
    return FAMILY_ANSWERS[family]


def generate(
    n: int,
    combos: Sequence[Combo],
    seed: int,
    families: Sequence[str] = FAMILIES,
    relations: Sequence[str] = RELATIONS,
) -> list[tuple[Scene, Question, str]]:
    """`n` (scene, question, answer) triples: `families` in turn, each family's reachable answers in turn (so both
    are balanced to within one), every answer checked by `answer`; spatial words drawn from `relations`."""
    rng = random.Random(seed)
    out = []
    turns = {family: 0 for family in families}
    reachable = {family: reachable_answers(family, combos) for family in families}
    for i in range(n):
        family = families[i % len(families)]
        answers = reachable[family]
        target = answers[turns[family] % len(answers)]
        turns[family] += 1
        for _ in range(10_000):
            scene, question = propose(rng, family, target, combos, relations)
            if answer(scene, question) == target:
                break
        else:  # pragma: no cover - a combos list that cannot produce the answer
            raise ValueError(f"cannot generate a {family} question with answer {target!r} from combos {combos}")
        out.append((scene, question, target))
    return out


def all_questions(combos: Sequence[Combo] = ()) -> dict[str, Question]:
    """Every question the families can ask, by its text (about 4,300): what reads a typed question back."""
    combos = combos or [(c, s) for c in COLOURS for s in SHAPES]
    colours, shapes = sorted({c for c, _ in combos}), sorted({s for _, s in combos})
    questions = [Question("exist", c) for c in combos]
    for attribute, values in (("colour", colours), ("shape", shapes)):
        questions += [Question("count", (attribute, v)) for v in values]
        questions += [Question("compare", (attribute, x, y)) for x in values for y in values if x != y]
    questions += [Question("relation", (*a, r, *b)) for a in combos for r in RELATIONS for b in combos]
    for family, keys in (("query_colour", shapes), ("query_shape", colours)):
        questions += [Question(family, (k,)) for k in keys]
        questions += [Question(family, (k, r, *b)) for k in keys for r in RELATIONS for b in combos]
    return {q.text: q for q in questions}
