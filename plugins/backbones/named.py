"""Backbones a researcher names by a library's prefix, resolved when named (`bench_backbone_named`):

- `timm:NAME[.TAG]`: any architecture in timm's registry, e.g. `timm:convnext_atto.d2_in1k`;
- `hf-hub:ORG/NAME`: a timm checkpoint on the Hugging Face hub, e.g. `hf-hub:timm/vit_small_patch14_dinov2.lvd142m`;
- `open_clip:ARCH[/TAG]` or `open_clip:hf-hub:ORG/NAME`: a CLIP-family image tower (`pip install 'bench[clip]'`).

Preprocessing (size, mean/std, interpolation, resize and crop) is the library's own for the model; the feature is
timm's pooled pre-logits (`forward_head(forward_features(x), pre_logits=True)`: with its classifier reset to
Identity, a timm model's forward is exactly that) or the CLIP image embedding. Weights come, in this order, from
`--weights PATH`, from `$BENCH_HOME/weights/<name as a path part>.safetensors` (or `.pth`), else from the
library's own loader and cache (downloading when online). The libraries are imported only when such a name is.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from bench import paths
from bench.backbone import Backbone, Preprocessing, load_state_dict, read_checkpoint
from bench.errors import BenchError
from bench.hookspecs import hookimpl
from featurestore.keys import path_part

if TYPE_CHECKING:  # the libraries load when a prefixed name is resolved, never for `bench --help`
    from torch import nn

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")
CLIP_EXTRA = "pip install 'bench[clip]'"
TIMM_CROP = "center"  # the one crop_mode of timm's eval transform bench reproduces (`Preprocessing.load`)
HUB = "hf-hub"  # an open_clip:hf-hub: name's weights are its hub repo's, not a tag's
CLIP_RESIZE = {"shortest": "shorter-side", "squash": "square"}  # open_clip's resize_mode -> bench's


@hookimpl
def bench_backbone_named(name: str) -> Backbone | None:
    prefix, _, rest = name.partition(":")
    if prefix == "timm":
        return timm_backbone(name, rest)
    if prefix == "hf-hub":
        return timm_backbone(name, name)  # timm reads `hf-hub:ORG/NAME` itself
    if prefix == "open_clip":
        return clip_backbone(name, rest)
    return None


def local_weights(name: str) -> Path:
    """Where a file of `name`'s initial weights is looked for: `$BENCH_HOME/weights/timm~resnet18.safetensors`."""
    return paths.weights_dir(paths.home()) / f"{path_part(name)}{WEIGHT_SUFFIXES[0]}"


def _placed(name: str) -> Path | None:
    """The weights file the user put under $BENCH_HOME/weights/ for `name`, in any of WEIGHT_SUFFIXES."""
    folder = paths.weights_dir(paths.home())
    return next((p for p in (folder / f"{path_part(name)}{s}" for s in WEIGHT_SUFFIXES) if p.is_file()), None)


def _missing(name: str, where: str, exc: Exception | None) -> BenchError:
    """One line: why there are no weights, where to get them and where to put them."""
    why = f"they cannot be fetched ({_first_sentence(exc)})" if exc else "the library publishes none"
    return BenchError(f"no weights for {name}: {why}. Get them from {where} and pass --weights PATH, or put the "
                      f"file at {local_weights(name)}")


def _first_sentence(exc: Exception) -> str:
    """The gist of a library's error (hub errors run to paragraphs)."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0].split('. ')[0][:120]}"


def _initial(name: str, where: str, fetch: Callable[[], dict],
             load_state: Callable[[nn.Module, object, Path], None]) -> Callable[[nn.Module], None]:
    """A `load_initial`: the file placed under $BENCH_HOME/weights/, else the library's loader (`fetch` -> its
    state dict), else one line saying where to get them."""

    def load(net: nn.Module) -> None:
        placed = _placed(name)
        if placed is not None:
            load_state(net, read_checkpoint(placed)["state_dict"], placed)
            return
        try:
            with _cache_only_when_offline():
                state = fetch()
        except BenchError:
            raise
        except Exception as exc:  # noqa: BLE001 (offline, a missing file, a hub error: the libraries raise many types)
            raise _missing(name, where, exc) from exc
        net.load_state_dict(state)

    return load


@contextmanager
def _cache_only_when_offline() -> Iterator[None]:
    """Where the hub's host does not even resolve, the libraries read their cache at once: left alone, they retry
    every file for most of a minute, a warning a line, before falling back to it or failing."""
    import socket
    from unittest import mock

    try:
        socket.getaddrinfo("huggingface.co", 443)
        offline = False
    except OSError:
        offline = True
    if not offline:
        yield
        return
    from huggingface_hub import constants

    with mock.patch.object(constants, "HF_HUB_OFFLINE", True):
        yield


# --- timm -------------------------------------------------------------------------------------------------------

def timm_module():
    try:
        import timm
    except ImportError as exc:  # a dependency of bench, but a slimmed environment may lack it
        raise BenchError(f"timm is not installed ({exc}): pip install timm") from exc
    return timm


@cache
def _timm_meta(model: str) -> nn.Module:
    """timm's model on the meta device (no memory, no weights): its pretrained config and feature dimension."""
    import torch

    timm = timm_module()
    arch = model.split(".")[0]
    if not model.startswith("hf-hub:") and not timm.is_model(arch):
        raise BenchError(f"timm has no model {arch!r}: see `bench backbones --search {arch.split('_')[0]}`")
    try:
        with torch.device("meta"):
            return timm.create_model(model, pretrained=False, num_classes=0)
    except RuntimeError as exc:  # an unknown pretrained tag
        raise BenchError(f"timm:{model}: {exc} See `bench backbones --search {arch}`") from exc
    except Exception as exc:  # noqa: BLE001 (hf-hub: the config cannot be read)
        raise BenchError(f"{model}: timm cannot read its config ({_first_sentence(exc)}): run once "
                         "online so that it is cached, or name its architecture as timm:ARCH and pass --weights PATH"
                         ) from exc


def feature_dim(net: nn.Module) -> int:
    """The width of timm's pooled pre-logits (a head's hidden layer where it has one, else num_features)."""
    return int(getattr(net, "head_hidden_size", None) or net.num_features)


def timm_preprocessing(name: str, net: nn.Module) -> Preprocessing:
    """timm's evaluation transform of the model (`resolve_data_config`) as bench's Preprocessing."""
    from timm.data import resolve_data_config

    data = resolve_data_config(model=net)
    _, height, width = data["input_size"]
    if height != width or data["crop_mode"] != TIMM_CROP:
        raise BenchError(f"{name}: timm's input {height}x{width} with crop_mode {data['crop_mode']!r} is not "
                         f"supported; bench feeds square images with the '{TIMM_CROP}' crop. Choose another tag")
    return Preprocessing(size=height, mean=tuple(data["mean"]), std=tuple(data["std"]), resize_mode="shorter-side",
                         crop_pct=float(data["crop_pct"]), interpolation=data["interpolation"])


def timm_source(net: nn.Module) -> str:
    """Where the model's pretrained weights are published, for the missing-weights line."""
    cfg = net.pretrained_cfg
    if cfg.get("hf_hub_id"):
        return f"https://huggingface.co/{cfg['hf_hub_id']} (model.safetensors)"
    return cfg.get("url") or "the model's authors (timm lists no published weights for it)"


def timm_backbone(name: str, model: str, size: int | None = None) -> Backbone:
    """`model` as timm names it (`resnet18.a1_in1k`, `hf-hub:ORG/NAME`), built for `size` (default: its own)."""
    meta = _timm_meta(model)
    preprocessing = timm_preprocessing(name, meta)
    # a model whose layers depend on the input size (a ViT's position embedding) is built for the size asked for
    kwargs = {"img_size": size} if size and meta.pretrained_cfg.get("fixed_input_size") else {}
    classifier = meta.pretrained_cfg.get("classifier") or ()
    published = any(meta.pretrained_cfg.get(k) for k in ("hf_hub_id", "url", "file"))
    drop = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))

    def load_state(net: nn.Module, state: object, source: Path) -> None:  # a file's classifier is not the net's
        load_state_dict(net, state, source, drop)

    def fetch() -> dict:
        if not published:  # timm would warn and carry on with random weights
            raise _missing(name, "the model's authors", None)
        return timm_module().create_model(model, pretrained=True, num_classes=0, **kwargs).state_dict()

    return Backbone(
        name=name,
        architecture=f"{meta.pretrained_cfg.get('architecture', model)} (timm)",
        preprocessing=preprocessing,
        feature_layer="pooled pre-logits",
        feature_dim=feature_dim(meta),
        initial_weights=f"{meta.pretrained_cfg.get('tag') or 'pretrained'} (timm, hub cache or --weights)",
        build=lambda: timm_module().create_model(model, pretrained=False, num_classes=0, **kwargs),
        load_initial=_initial(name, timm_source(meta), fetch, load_state),
        load_state=load_state,
        at_size=(lambda s: timm_backbone(name, model, s)) if meta.pretrained_cfg.get("fixed_input_size") else None,
    )


# --- open_clip --------------------------------------------------------------------------------------------------

def clip_module():
    try:
        import open_clip
    except ImportError as exc:
        raise BenchError(f"open_clip backbones need the clip extra ({exc}): {CLIP_EXTRA}") from exc
    return open_clip


def _clip_tag(name: str, arch: str, tag: str | None) -> dict:
    """open_clip's config of pretrained tag `tag` of `arch` ({} without a tag)."""
    open_clip = clip_module()
    if not tag:
        return {}
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise BenchError(f"{name}: open_clip has no pretrained tag {tag!r} for {arch} (its tags: {tags})")
    return cfg


@cache
def _clip_meta(arch: str, quick_gelu: bool) -> nn.Module:
    """open_clip's model on the meta device (no memory, no weights): its image tower's preprocessing and width."""
    import torch

    open_clip = clip_module()
    if not arch.startswith("hf-hub:") and open_clip.get_model_config(arch) is None:
        raise BenchError(f"open_clip has no model {arch!r}: see `bench backbones --search {arch.split('-')[0]}`")
    try:
        with torch.device("meta"):
            return open_clip.create_model(arch, pretrained=None, load_weights=False, device="meta",
                                          force_quick_gelu=quick_gelu)
    except Exception as exc:  # noqa: BLE001 (hf-hub: the config cannot be read)
        raise BenchError(f"open_clip:{arch}: open_clip cannot read its config ({_first_sentence(exc)}): "
                         "run once online so that it is cached") from exc


def image_tower(arch: str, quick_gelu: bool, size: int | None, weights: str | None = None) -> nn.Module:
    """The image tower of an open_clip model (its forward is the image embedding, `encode_image`) built for `size`
    (None: its own), with the weights of pretrained tag `weights` (HUB: an hf-hub: name's own), else none."""
    model = clip_module().create_model(arch, pretrained=None if weights == HUB else weights,
                                       load_weights=weights is not None, force_quick_gelu=quick_gelu,
                                       force_image_size=size)
    return model.visual


def load_tower_state(net: nn.Module, state: object, source: Path) -> None:
    """A whole CLIP model's state dict (its `visual.` entries are the tower's) or the tower's own."""
    if isinstance(state, dict) and any(k.startswith("visual.") for k in state):
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    load_state_dict(net, state, source)


def clip_backbone(name: str, rest: str, size: int | None = None) -> Backbone:
    """`open_clip:ARCH[/TAG]` or `open_clip:hf-hub:ORG/NAME` (the hub repo holds config and weights)."""
    hub = rest.startswith("hf-hub:")
    arch, _, tag = (rest, "", "") if hub else rest.partition("/")
    cfg = _clip_tag(name, arch, tag)
    meta = _clip_meta(arch, bool(cfg.get("quick_gelu", False)))
    seen = {**meta.visual.preprocess_cfg, **{k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                                             if k in cfg}}
    if seen["resize_mode"] not in CLIP_RESIZE:
        raise BenchError(f"{name}: open_clip's resize_mode {seen['resize_mode']!r} is not supported (bench does "
                         f"{', '.join(CLIP_RESIZE)})")
    preprocessing = Preprocessing(size=int(seen["size"][0]), mean=tuple(seen["mean"]), std=tuple(seen["std"]),
                                  resize_mode=CLIP_RESIZE[seen["resize_mode"]], interpolation=seen["interpolation"])
    tower = partial(image_tower, arch, bool(cfg.get("quick_gelu", False)), size)
    where = (f"https://huggingface.co/{arch.removeprefix('hf-hub:')}" if hub else
             f"https://huggingface.co/{cfg['hf_hub'].rstrip('/')}" if cfg.get("hf_hub") else cfg.get("url"))
    if hub or tag:
        load_initial = _initial(name, where, lambda: tower(HUB if hub else tag).state_dict(), load_tower_state)
    else:
        load_initial = _initial(name, f"open_clip's tags for {arch} (name one: open_clip:{arch}/TAG)",
                                _no_tag(name, arch), load_tower_state)
    return Backbone(
        name=name,
        architecture=f"{arch} image tower (open_clip)",
        preprocessing=preprocessing,
        feature_layer="image embedding",
        feature_dim=int(clip_module().get_model_config(arch)["embed_dim"]),
        initial_weights=f"{tag or ('hub' if hub else 'none: name a tag')} (open_clip, hub cache or --weights)",
        build=tower,
        load_initial=load_initial,
        load_state=load_tower_state,
        at_size=lambda s: clip_backbone(name, rest, s),
    )


def _no_tag(name: str, arch: str) -> Callable[[], dict]:
    def fetch() -> dict:
        tags = ", ".join(clip_module().list_pretrained_tags_by_model(arch)) or "none"
        raise BenchError(f"no weights for {name}: name a pretrained tag (open_clip:{arch}/TAG; its tags: {tags}), or "
                         f"pass --weights PATH, or put the file at {local_weights(name)}")

    return fetch


# --- discovery: `bench backbones --search` ------------------------------------------------------------------------

def search(pattern: str) -> list[dict]:
    """Names in the installed timm (pretrained tags) and open_clip (pretrained pairs) registries matching
    `pattern` (a shell pattern, or a word matched anywhere), with feature dimension and input; no network."""
    glob = pattern.lower() if any(c in pattern for c in "*?[") else f"*{pattern.lower()}*"
    return _search_timm(glob) + _search_clip(glob)


def _search_timm(glob: str) -> list[dict]:
    rows = []
    for model in timm_module().list_models(glob, pretrained=True):
        meta = _timm_meta(model)  # on the meta device: ~0.1 s an architecture, no memory
        _, height, width = meta.pretrained_cfg["input_size"]
        rows.append({"name": f"timm:{model}", "dim": feature_dim(meta), "input": f"{height}x{width}",
                     "library": "timm"})
    return rows


def _search_clip(glob: str) -> list[dict]:
    import fnmatch

    try:
        open_clip = clip_module()
    except BenchError:  # the clip extra is optional: without it, timm's names only
        return []
    rows = []
    for arch, tag in open_clip.list_pretrained():
        if fnmatch.fnmatchcase(f"{arch}/{tag}".lower(), glob):
            cfg = open_clip.get_model_config(arch)
            size = cfg["vision_cfg"].get("image_size", 224)
            size = size if isinstance(size, int) else size[0]
            rows.append({"name": f"open_clip:{arch}/{tag}", "dim": int(cfg["embed_dim"]), "input": f"{size}x{size}",
                         "library": "open_clip"})
    return rows
