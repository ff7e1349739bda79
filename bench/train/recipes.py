"""Training recipes: named hyper-parameter sets kept as data in `recipes.toml`.

`Recipe` is a plain dataclass (the command line imports it at start-up), and its annotations are its checks:
pydantic validates a recipe against them where one is read or changed, and is imported only then.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from annotated_types import Ge, Gt

from bench.errors import BenchError

RECIPES_FILE = Path(__file__).with_name("recipes.toml")
ADDED_LATER = {"augment": "minority", "views": None, "keep": "loss", "cpu_precision": "float32",
               "target": "design"}  # field -> its default
Positive = Annotated[int, Gt(0)]


@dataclass(frozen=True)
class Recipe:
    """How a network is trained: SGD with Nesterov momentum and L2 for `epochs` epochs at `image_size` pixels."""

    name: str
    description: str
    epochs: Positive
    lr: Annotated[float, Gt(0)]
    momentum: Annotated[float, Gt(0)]
    weight_decay: Annotated[float, Gt(0)]
    image_size: Positive
    batch_size: Positive
    train_last: Positive | None = None  # train only the last K parameterised layers of the feature net; None = all
    # epochs that train the new head alone before the feature net (linear probing, then fine-tuning): a random
    # head's first gradients would otherwise distort the pretrained features (Kumar et al., ICLR 2022)
    head_epochs: Annotated[int, Ge(0)] = 0
    # which images are augmented: "minority", the paper's (only the copies that balance the classes), or "all" (every
    # image shown, so that the augmentation itself cannot tell the classes apart)
    augment: Literal["minority", "all"] = "minority"
    # a pool of this many views per image (view 0 as it is, the others augmented, drawn once): the top (`train_last`)
    # trains from the frozen trunk's activations of the pool, computed once into the store (bench.train.top); None: the
    # whole network runs every step, augmentations drawn afresh. View 0 is the image as it is: augmented images need
    # at least one view more.
    views: Annotated[int, Ge(2)] | None = None
    # which epoch is kept: "loss", the one with the lowest validation loss, or "auc", the one whose own classifier
    # (the new head) has the highest validation AUC (one-vs-rest macro for more than two classes). Validation loss
    # rises with over-confidence while the ranking a class-balanced AUC scores may still improve.
    keep: Literal["loss", "auc"] = "loss"
    # arithmetic of a run on the CPU: "float32", or "bfloat16" autocast (weights and optimiser stay float32), about
    # twice as fast where the CPU has bfloat16 instructions (AVX512-BF16, AMX) and slower where it has not. A run on
    # a GPU always autocasts (bfloat16, else float16 with loss scaling), whatever this says.
    cpu_precision: Literal["float32", "bfloat16"] = "float32"
    # what a fine-tune learns to tell apart: "design", the protocol's classes (e.g. melanoma / benign), or
    # "diagnosis", every diagnosis among the design's training images (HAM10000: six or seven), a richer task on the
    # same images; the features, not the head, are what is kept. Source stages always learn their own labels.
    target: Literal["design", "diagnosis"] = "design"

    __pydantic_config__ = {"extra": "forbid"}  # pydantic refuses a field the recipe does not have

    def with_overrides(self, **overrides: int | float | str | None) -> Recipe:
        """A copy with the given fields changed; `None` values leave a field as it is."""
        from pydantic import TypeAdapter, ValidationError

        from bench.validation import first, message

        changed = {k: v for k, v in overrides.items() if v is not None}
        try:
            chosen = TypeAdapter(Recipe).validate_python({**asdict(self), **changed})
        except ValidationError as exc:  # the field named as the command line spells it
            error = first(exc)
            raise BenchError(f"--{str(error['loc'][0]).replace('_', '-')} {message(error, Recipe)}") from None
        if chosen.views and chosen.train_last is None:
            raise BenchError(f"--views needs a recipe that trains only the top (train_last); {self.name} trains "
                             "the whole network")
        return chosen

    def departures(self) -> list[str]:
        """In words, the training choices a recipe's name and sizes do not show (for the command line and reports)."""
        said = ["in bfloat16 on the CPU"] if self.cpu_precision == "bfloat16" else []
        return said + (["learning every diagnosis"] if self.target == "diagnosis" else [])

    def starting_from(self, random_init: bool) -> Recipe:
        """The recipe for a run from random (True) or pretrained weights: freezing random layers would not be
        training from scratch, so a random start trains every layer whatever `train_last` says (and without a
        trunk to cache, no view pool)."""
        return replace(self, train_last=None, views=None) if random_init else self

    def to_dict(self) -> dict:
        """The fields, as fingerprints see them: a field added after the first release is left out at its default,
        so that runs fingerprinted before it existed (and behaving as its default does) stay valid."""
        return {k: v for k, v in asdict(self).items() if ADDED_LATER.get(k, object()) != v}


@cache
def recipes() -> dict[str, Recipe]:
    """Every recipe in `recipes.toml`, by name."""
    from bench.validation import validate

    table = tomllib.loads(RECIPES_FILE.read_text())
    found = validate(dict[str, Recipe], {name: {"name": name, **values} for name, values in table.items()},
                     str(RECIPES_FILE))
    for name, recipe in found.items():
        if recipe.views and recipe.train_last is None:
            raise BenchError(f"{RECIPES_FILE}: {name}.views: needs train_last (only a top trains from cached trunk "
                             "activations)")
    return found


def get_recipe(name: str) -> Recipe:
    available = recipes()
    if name not in available:
        raise BenchError(f"unknown recipe {name!r}; available: {', '.join(available)} (see `bench recipes`)")
    return available[name]
