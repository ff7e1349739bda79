"""Training recipes: named hyper-parameter sets kept as data in `recipes.toml`."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields, replace
from functools import cache
from pathlib import Path

from bench.errors import BenchError

RECIPES_FILE = Path(__file__).with_name("recipes.toml")
AUGMENT = ("minority", "all")
ADDED_LATER = {"augment": "minority", "views": None}  # field -> its default


@dataclass(frozen=True)
class Recipe:
    """How a network is trained: SGD with Nesterov momentum and L2 for `epochs` epochs at `image_size` pixels."""

    name: str
    description: str
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    image_size: int
    batch_size: int
    train_last: int | None = None  # train only the last K parameterised layers of the feature net; None = all
    # epochs that train the new head alone before the feature net (linear probing, then fine-tuning): a random
    # head's first gradients would otherwise distort the pretrained features (Kumar et al., ICLR 2022)
    head_epochs: int = 0
    # which images are augmented: "minority", the paper's (only the copies that balance the classes), or "all" (every
    # image shown, so that the augmentation itself cannot tell the classes apart)
    augment: str = "minority"
    # a pool of this many views per image (view 0 as it is, the others augmented, drawn once): the top (`train_last`)
    # trains from the frozen trunk's activations of the pool, computed once into the store (bench.train.top); None: the
    # whole network runs every step, augmentations drawn afresh
    views: int | None = None

    def with_overrides(self, **overrides: int | float | str | None) -> Recipe:
        """A copy with the given fields changed; `None` values leave a field as it is."""
        changed = {k: v for k, v in overrides.items() if v is not None}
        bad = [f"--{k.replace('_', '-')} must be {why}" for k, v in changed.items() if (why := invalid(k, v))]
        if bad:
            raise BenchError("; ".join(bad))
        chosen = replace(self, **changed)
        if chosen.views and chosen.train_last is None:
            raise BenchError(f"--views needs a recipe that trains only the top (train_last); {self.name} trains "
                             "the whole network")
        return chosen

    def starting_from(self, random_init: bool) -> Recipe:
        """The recipe for a run from random (True) or pretrained weights: freezing random layers would not be
        training from scratch, so a random start trains every layer whatever `train_last` says (and without a
        trunk to cache, no view pool)."""
        return replace(self, train_last=None, views=None) if random_init else self

    def to_dict(self) -> dict:
        """The fields, as fingerprints see them: a field added after the first release is left out at its default,
        so that runs fingerprinted before it existed (and behaving as its default does) stay valid."""
        return {k: v for k, v in asdict(self).items() if ADDED_LATER.get(k, object()) != v}


def invalid(field: str, value: object) -> str | None:
    """What recipe field `field` must be, if `value` is not that; None when it is fine."""
    if field == "augment":
        return None if value in AUGMENT else f"one of {', '.join(AUGMENT)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "a number"
    if field == "head_epochs":
        return None if value >= 0 else "zero or more"
    if field == "views":  # view 0 is the image as it is: augmented images need at least one view more
        return None if isinstance(value, int) and value >= 2 else "a whole number, 2 or more"
    return None if value > 0 else "positive"


@cache
def recipes() -> dict[str, Recipe]:
    """Every recipe in `recipes.toml`, by name."""
    table = tomllib.loads(RECIPES_FILE.read_text())
    known = {f.name for f in fields(Recipe)}
    for name, values in table.items():
        unknown = set(values) - known
        if unknown:
            raise BenchError(f"{RECIPES_FILE}: recipe {name!r} has unknown field(s) {sorted(unknown)}")
        bad = [f"{k} must be {why}" for k, v in values.items() if k != "description" and (why := invalid(k, v))]
        if "views" in values and "train_last" not in values:
            bad.append("views needs train_last (only a top trains from cached trunk activations)")
        if bad:
            raise BenchError(f"{RECIPES_FILE}: recipe {name!r}: {'; '.join(bad)}")
    return {name: Recipe(name=name, **values) for name, values in table.items()}


def get_recipe(name: str) -> Recipe:
    available = recipes()
    if name not in available:
        raise BenchError(f"unknown recipe {name!r}; available: {', '.join(available)} (see `bench recipes`)")
    return available[name]
