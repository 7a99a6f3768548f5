"""Vision Transformers as timm builds them (`timm.models.vision_transformer.VisionTransformer`, DeiT's distilled
variant): supervised ViT (AugReg), DeiT, DeiT III, DINOv2 (with and without registers), CLIP image towers, MAE.

Patch embedding: a PxP stride-P conv (no bias under CLIP's `pre_norm`). Prefix tokens: the class token, DeiT's
distillation token, register tokens. Position embeddings are added before the prefix tokens are joined
(`no_embed_class`: DeiT III, DINOv2 with registers) or after (the rest). At an input size other than the trained
one they are resampled as timm's `dynamic_img_size=True` does (`resample_abs_pos_embed`: torch's bicubic with
antialias=True, which `jax.image.resize(..., "cubic", antialias=True)` reproduces; tests/test_timm_vit.py checks
it). Blocks: pre-norm attention and MLP (GELU exact, QuickGELU, or DINOv2-giant's packed SwiGLU), optional layer
scale. After the blocks: `norm`, then the pooling (class token, average of the patch tokens with `fc_norm`, or
the attention-pool head `map`), then the classifier. LayerNorm epsilon 1e-6, CLIP's 1e-5.

Param paths: `patch_embed/{proj,cls_token,dist_token,reg_token,pos_embed,norm_pre}`;
`block{i}/{norm1,attn/qkv,attn/proj,ls1,norm2,mlp/fc1,mlp/fc2,ls2}`; `norm`; `attn_pool/{latent,q,kv,proj,norm,
mlp/fc1,mlp/fc2}`; `fc_norm`; `head/fc` (and a distilled DeiT's `head/fc_dist`).

Taps: `patch_embed` (the token sequence entering block1: prefix tokens, position embeddings, CLIP's norm_pre),
`block1`..`blockN` (N, tokens, C), `norm` (after the final norm), `pre_logits` (timm's
`forward_head(pre_logits=True)`), `logits`. Token taps keep the prefix tokens first (`prefix_tokens`).

Archs are timm's architecture names; a snapshot's `model_args` (config.json) may change the build within what is
implemented (`ARG_OPTIONS`): the image size, pooling, widths, depth, tokens, layer scale, activation.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.errors import UserError
from research.models import layers
from research.models.heads import Head
from research.models.registry import HEAD, Arch, Family, Source, TapCollector

MAX_DEPTH = 48  # the block modules the record lists (freeze presets cut there); deeper snapshots are refused
VIT_LAYER_SCALE = 1e-5  # timm's LayerScale init (the value only matters for a model built without weights)


@dataclasses.dataclass(frozen=True)
class Config:
    """timm's VisionTransformer arguments that decide the computation (names as timm's, where it has them)."""
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False
    layer_scale: bool = False  # timm's init_values is not None
    pre_norm: bool = False
    fc_norm: bool | None = None  # None: with average pooling, as timm
    final_norm: bool = True
    global_pool: str = "token"
    act_layer: str = "gelu"
    mlp_layer: str = "mlp"  # or "swiglu_packed" (DINOv2 giant)
    norm_eps: float = 1e-6
    distilled: bool = False  # DeiT's distillation token and second head
    img_size: int = 224

    @property
    def use_fc_norm(self) -> bool:
        return self.final_norm and (self.global_pool == "avg" if self.fc_norm is None else self.fc_norm)

    @property
    def prefix(self) -> tuple[str, ...]:
        """The prefix tokens in sequence order."""
        return (("cls",) * self.class_token + ("dist",) * self.distilled
                + tuple(f"reg{i}" for i in range(1, self.reg_tokens + 1)))

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


def _vit(embed_dim, depth, num_heads, **kw):
    return dict(dict(patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=num_heads), **kw)


_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
_CLIP = dict(pre_norm=True, norm_eps=1e-5)
_DINO = dict(patch_size=14, layer_scale=True, img_size=518)
_GIANT = dict(embed_dim=1536, depth=40, num_heads=24, mlp_ratio=2.66667 * 2, mlp_layer="swiglu_packed")

# timm's model_args of each architecture (timm/models/vision_transformer.py, deit.py), as Config fields.
VARIANTS: dict[str, dict] = {
    **{f"vit_{s}_patch16_224": _vit(*_SIZES[s]) for s in ("tiny", "small", "base", "large")},
    **{f"deit_{s}_patch16_224": _vit(*_SIZES[s]) for s in ("tiny", "small", "base")},
    **{f"deit_{s}_distilled_patch16_224": _vit(*_SIZES[s], distilled=True) for s in ("tiny", "small", "base")},
    **{f"deit3_{s}_patch16_224": _vit(*_SIZES[s], no_embed_class=True, layer_scale=True)
       for s in ("small", "base", "large")},
    **{f"vit_{s}_patch14_dinov2": _vit(*_SIZES[s], **_DINO) for s in ("small", "base", "large")},
    "vit_giant_patch14_dinov2": dict(_DINO, **_GIANT),
    **{f"vit_{s}_patch14_reg4_dinov2": _vit(*_SIZES[s], **_DINO, reg_tokens=4, no_embed_class=True)
       for s in ("small", "base", "large")},
    "vit_giant_patch14_reg4_dinov2": dict(_DINO, **_GIANT, reg_tokens=4, no_embed_class=True),
    "vit_base_patch16_clip_224": _vit(*_SIZES["base"], **_CLIP),
    "vit_base_patch32_clip_224": dict(_vit(*_SIZES["base"], **_CLIP), patch_size=32),
    # timm's QuickGELU twins: the same weights (`.openai` and other OpenAI-trained tags) computed as trained;
    # timm's plain clip archs compute those tags with exact GELU
    "vit_base_patch16_clip_quickgelu_224": _vit(*_SIZES["base"], **_CLIP, act_layer="quick_gelu"),
    "vit_base_patch32_clip_quickgelu_224": dict(_vit(*_SIZES["base"], **_CLIP, act_layer="quick_gelu"),
                                                patch_size=32),
}

# model_args keys -> Config fields; `img_size` is the spec's `input_size` option. Keys that only matter for
# training, or that say what is already fixed, are ignored; any other key is refused (`options`).
ARG_OPTIONS = {"patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "class_token",
               "reg_tokens", "no_embed_class", "pre_norm", "fc_norm", "final_norm", "global_pool", "act_layer"}
IGNORED_ARGS = {"num_classes", "dynamic_img_size", "drop_rate", "pos_drop_rate", "patch_drop_rate",
                "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "weight_init", "fix_init", "device", "dtype"}
FIXED_ARGS = {"in_chans": 3, "dynamic_img_pad": False, "qk_norm": False, "proj_bias": True, "pos_embed": "learn",
              "pool_include_prefix": False, "scale_attn_norm": False, "scale_mlp_norm": False}
POOLS = ("token", "avg", "map")
ACTIVATIONS = {"gelu": functools.partial(nn.gelu, approximate=False),
               "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x), "silu": nn.silu}


def config_of(spec) -> Config:
    """The arch's config with the spec's options (the snapshot's model_args) applied."""
    args = dict(VARIANTS[spec.arch])
    args.update({k: v for k, v in spec.options if k in Config.__dataclass_fields__})
    args["img_size"] = spec.input_size
    return Config(**args)


class Attention(nn.Module):
    num_heads: int
    qkv_bias: bool
    dense: Any

    @nn.compact
    def __call__(self, x):
        n, t, c = x.shape
        qkv = self.dense(3 * c, use_bias=self.qkv_bias, name="qkv")(x).reshape(n, t, 3, self.num_heads, -1)
        y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])  # softmax in float32
        return self.dense(c, name="proj")(y.reshape(n, t, c))


class Mlp(nn.Module):
    hidden: int
    act: str
    packed_glu: bool
    dense: Any

    @nn.compact
    def __call__(self, x):
        y = self.dense(self.hidden, name="fc1")(x)
        if self.packed_glu:  # timm's SwiGLUPacked: act(first half) * second half
            a, b = jnp.split(y, 2, axis=-1)
            y = ACTIVATIONS[self.act](a) * b
        else:
            y = ACTIVATIONS[self.act](y)
        return self.dense(x.shape[-1], name="fc2")(y)


class Block(nn.Module):
    cfg: Config
    dense: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        act = "silu" if cfg.mlp_layer == "swiglu_packed" else cfg.act_layer
        y = Attention(cfg.num_heads, cfg.qkv_bias, self.dense, name="attn")(self.norm(name="norm1")(x).astype(x.dtype))
        x = x + (layers.LayerScale(VIT_LAYER_SCALE, name="ls1")(y) if cfg.layer_scale else y)
        y = Mlp(hidden, act, cfg.mlp_layer == "swiglu_packed", self.dense, name="mlp")(
            self.norm(name="norm2")(x).astype(x.dtype))
        return x + (layers.LayerScale(VIT_LAYER_SCALE, name="ls2")(y) if cfg.layer_scale else y)


def resample_pos_embed(grid_embed, size: tuple[int, int]):
    """(1, g*g, C) position embeddings of a gxg grid -> (1, h*w, C), as timm's resample_abs_pos_embed: bicubic
    in float32 with torch's antialias=True (Keys a=-0.5, weights renormalised at the borders)."""
    g = math.isqrt(grid_embed.shape[1])
    grid = grid_embed.reshape(1, g, g, -1).astype(jnp.float32)
    out = jax.image.resize(grid, (1, *size, grid.shape[-1]), "cubic", antialias=True)
    return out.reshape(1, size[0] * size[1], -1)


class PatchEmbed(nn.Module):
    """Image -> the token sequence entering the first block."""
    cfg: Config
    dtype: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        cfg, c = self.cfg, self.cfg.embed_dim
        p = cfg.patch_size
        x = nn.Conv(c, (p, p), (p, p), padding="VALID", use_bias=not cfg.pre_norm, dtype=self.dtype,
                    param_dtype=jnp.float32, name="proj")(x)
        n, h, w, _ = x.shape
        x = x.reshape(n, h * w, c)
        init = nn.initializers.normal(0.02)
        prefix = [self.param(name, init, (1, count, c), jnp.float32)
                  for name, count in (("cls_token", int(cfg.class_token)), ("dist_token", int(cfg.distilled)),
                                      ("reg_token", cfg.reg_tokens)) if count]
        prefix = [jnp.broadcast_to(t.astype(self.dtype), (n, *t.shape[1:])) for t in prefix]
        n_embed = len(cfg.prefix) * (not cfg.no_embed_class)
        pos = self.param("pos_embed", init, (1, n_embed + cfg.grid ** 2, c), jnp.float32)
        if (h, w) != (cfg.grid, cfg.grid):
            pos = jnp.concatenate([pos[:, :n_embed], resample_pos_embed(pos[:, n_embed:], (h, w))], axis=1)
        pos = pos.astype(self.dtype)
        if cfg.no_embed_class:
            x = jnp.concatenate([*prefix, x + pos], axis=1)
        else:
            x = jnp.concatenate([*prefix, x], axis=1) + pos
        return self.norm(name="norm_pre")(x).astype(self.dtype) if cfg.pre_norm else x


class AttentionPool(nn.Module):
    """timm's AttentionPoolLatent with one latent query: the `map` head."""
    cfg: Config
    dense: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        n, t, c = x.shape
        heads = self.cfg.num_heads
        latent = self.param("latent", nn.initializers.normal(c ** -0.5), (1, 1, c), jnp.float32)
        q = self.dense(c, name="q")(jnp.broadcast_to(latent.astype(x.dtype), (n, 1, c))).reshape(n, 1, heads, -1)
        kv = self.dense(2 * c, name="kv")(x).reshape(n, t, 2, heads, -1)
        y = self.dense(c, name="proj")(jax.nn.dot_product_attention(q, kv[:, :, 0], kv[:, :, 1]).reshape(n, 1, c))
        y = y + Mlp(int(c * self.cfg.mlp_ratio), self.cfg.act_layer, False, self.dense, name="mlp")(
            self.norm(name="norm")(y).astype(y.dtype))
        return y[:, 0]


class DistilledHead(nn.Module):
    """DeiT's two classifiers, on the class and distillation tokens, averaged (timm at eval). A fresh head
    (heads.fresh_head: one `fc`, no `fc_dist`) is one linear layer on pre_logits, the tokens' mean."""
    num_classes: int
    dense: Any

    @nn.compact
    def __call__(self, tokens, pre_logits):
        if self.is_initializing() or self.has_variable("params", "fc_dist"):
            return (self.dense(self.num_classes, name="fc")(tokens[:, 0])
                    + self.dense(self.num_classes, name="fc_dist")(tokens[:, 1])) / 2
        return self.dense(self.num_classes, name="fc")(pre_logits)


class VisionTransformer(nn.Module):
    """Returns a dict of the requested taps; computes nothing past the deepest one. `train` changes nothing
    (no dropout or stochastic depth); it is taken as every family's forward is."""
    cfg: Config
    num_classes: int = 1000
    dtype: Any = jnp.float32
    frozen_bn: frozenset = frozenset()  # unused: LayerNorm has no running statistics

    @nn.compact
    def __call__(self, x, train: bool = False, taps: Sequence[str] = ("logits",)):
        cfg = self.cfg
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
        # LayerNorm in float32: a wide bfloat16 vector's statistics lose too much
        norm = functools.partial(nn.LayerNorm, epsilon=cfg.norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
                                 use_fast_variance=False)
        got = TapCollector(taps)
        x = PatchEmbed(cfg, self.dtype, norm, name="patch_embed")(x.astype(self.dtype))
        if got.add("patch_embed", x):
            return got.out
        for i in range(1, cfg.depth + 1):
            x = Block(cfg, dense, norm, name=f"block{i}")(x)
            if got.add(f"block{i}", x):
                return got.out
        if cfg.final_norm and not cfg.use_fc_norm:
            x = norm(name="norm")(x).astype(self.dtype)
        if got.add("norm", x):
            return got.out
        tokens, prefix = x, len(cfg.prefix)
        if cfg.global_pool == "map":
            x = AttentionPool(cfg, dense, norm, name="attn_pool")(x[:, prefix:])
        elif cfg.distilled:
            x = (x[:, 0] + x[:, 1]) / 2
        elif cfg.global_pool == "token":
            x = x[:, 0]
        else:
            x = jnp.mean(x[:, prefix:], axis=1)
        if cfg.use_fc_norm:
            x = norm(name="fc_norm")(x).astype(self.dtype)
        if got.add("pre_logits", x) or not self.num_classes:
            return got.out
        if cfg.distilled:
            got.add("logits", DistilledHead(self.num_classes, dense, name=HEAD)(tokens, x))
        else:
            got.add("logits", Head(self.num_classes, self.dtype, name=HEAD)(x))
        return got.out


# timm's module names -> (param path, kind of research/weights/torchvision.py), one table for every arch and
# depth (a name the snapshot lacks is simply unused; what the model lacks or the file has extra is reported).
BLOCK_NAMES = {"norm1": ("norm1", "layer_norm"), "attn.qkv": ("attn/qkv", "linear"),
               "attn.proj": ("attn/proj", "linear"), "ls1": ("ls1", "layer_scale"), "norm2": ("norm2", "layer_norm"),
               "mlp.fc1": ("mlp/fc1", "linear"), "mlp.fc2": ("mlp/fc2", "linear"), "ls2": ("ls2", "layer_scale")}
TOP_NAMES = {
    "patch_embed.proj": ("patch_embed/proj", "conv"), "cls_token": ("patch_embed/cls_token", "tensor"),
    "dist_token": ("patch_embed/dist_token", "tensor"), "reg_token": ("patch_embed/reg_token", "tensor"),
    "pos_embed": ("patch_embed/pos_embed", "tensor"), "norm_pre": ("patch_embed/norm_pre", "layer_norm"),
    "norm": ("norm", "layer_norm"), "fc_norm": ("fc_norm", "layer_norm"),
    "attn_pool.latent": ("attn_pool/latent", "tensor"), "attn_pool.q": ("attn_pool/q", "linear"),
    "attn_pool.kv": ("attn_pool/kv", "linear"), "attn_pool.proj": ("attn_pool/proj", "linear"),
    "attn_pool.norm": ("attn_pool/norm", "layer_norm"), "attn_pool.mlp.fc1": ("attn_pool/mlp/fc1", "linear"),
    "attn_pool.mlp.fc2": ("attn_pool/mlp/fc2", "linear"),
    "head": (f"{HEAD}/fc", "linear"), "head_dist": (f"{HEAD}/fc_dist", "linear"),
}
TABLE = {**TOP_NAMES, **{f"blocks.{i}.{src}": (f"block{i + 1}/{dst}", kind)
                         for i in range(MAX_DEPTH) for src, (dst, kind) in BLOCK_NAMES.items()}}


def timm_names(arch: str) -> dict[str, tuple[str, str]]:
    return TABLE


def _signature(cfg: Config) -> tuple:
    """What a state_dict shows of a config: patch, width, depth, tokens, norms, layer scale, MLP, grid."""
    return (cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.prefix, cfg.pre_norm, cfg.layer_scale,
            cfg.mlp_layer, cfg.no_embed_class, cfg.use_fc_norm, cfg.global_pool == "map", cfg.grid)


def detect_timm(state: dict) -> str | None:
    """A timm ViT state_dict -> the first arch (in VARIANTS' order) whose default build has its shapes."""
    proj = state.get("patch_embed.proj.weight")
    if proj is None or "blocks.0.attn.qkv.weight" not in state:
        return None
    depth = sum(bool(re.fullmatch(r"blocks\.\d+\.norm1\.weight", k)) for k in state)
    prefix = (("cls",) * ("cls_token" in state) + ("dist",) * ("dist_token" in state)
              + tuple(f"reg{i}" for i in range(1, (state["reg_token"].shape[1] if "reg_token" in state else 0) + 1)))
    positions = state["pos_embed"].shape[1] if "pos_embed" in state else 0
    no_embed_class = math.isqrt(positions) ** 2 == positions and bool(prefix)
    grid = math.isqrt(positions - (0 if no_embed_class else len(prefix)))
    fc1, fc2 = state["blocks.0.mlp.fc1.weight"].shape[0], state["blocks.0.mlp.fc2.weight"].shape[1]
    found = (int(proj.shape[-1]), int(proj.shape[0]), depth, prefix, "norm_pre.weight" in state,
             "blocks.0.ls1.gamma" in state, "swiglu_packed" if fc1 == 2 * fc2 else "mlp", no_embed_class,
             "fc_norm.weight" in state, "attn_pool.latent" in state, grid)
    arch = next((a for a, args in VARIANTS.items() if _signature(Config(**args)) == found), None)
    if arch is None:
        raise UserError(f"a timm ViT (patch {found[0]}, width {found[1]}, depth {depth}, prefix tokens "
                        f"{'+'.join(prefix) or 'none'}, {grid}x{grid} position grid) that is none of the supported "
                        f"architectures at timm's defaults; its config.json (architecture, model_args) is needed")
    return arch


def timm_options(model_args: dict, state: dict) -> dict:
    """ModelSpec options from a snapshot's model_args (the tensors' shapes are checked against the result
    later, by mapping.assemble)."""
    known = ARG_OPTIONS | IGNORED_ARGS | set(FIXED_ARGS) | {"img_size", "init_values"}
    unknown = sorted(k for k in model_args if k not in known)
    fixed = sorted(f"{k}={model_args[k]!r}" for k, v in FIXED_ARGS.items() if k in model_args and model_args[k] != v)
    if unknown or fixed:
        raise UserError(f"timm ViT model_args not supported: {', '.join(unknown + fixed)}")
    out = {k: model_args[k] for k in ARG_OPTIONS if k in model_args}
    if "init_values" in model_args:
        out["layer_scale"] = model_args["init_values"] is not None
    if "img_size" in model_args:
        size = model_args["img_size"]
        size = size if isinstance(size, (list, tuple)) else (size, size)
        if len(set(size)) != 1:
            raise UserError(f"timm ViT img_size {list(size)}: only square inputs are supported")
        out["input_size"] = int(size[0])
    if out.get("global_pool", "token") not in POOLS:
        raise UserError(f"timm ViT global_pool {out['global_pool']!r}; supported: {', '.join(POOLS)}")
    if out.get("class_token") is False and out.get("global_pool", "token") == "token":
        raise UserError("timm ViT model_args: global_pool 'token' needs the class token (class_token is false)")
    if out.get("act_layer", "gelu") not in ("gelu", "quick_gelu"):
        raise UserError(f"timm ViT act_layer {out['act_layer']!r}; supported: gelu, quick_gelu")
    if not 1 <= out.get("depth", 1) <= MAX_DEPTH:
        raise UserError(f"timm ViT depth {out['depth']}; supported: 1..{MAX_DEPTH}")
    return out


def build(spec, config, **common):
    return VisionTransformer(config_of(spec), **common)


def spec_taps(spec) -> tuple[str, ...]:
    depth = config_of(spec).depth
    return ("patch_embed", *(f"block{i}" for i in range(1, depth + 1)), "norm", "pre_logits", "logits")


def prefix_tokens(spec) -> tuple[str, ...]:
    return config_of(spec).prefix


def last_block(modules) -> str:
    """The `top_block` preset's start: the deepest block the params have."""
    return max((m for m in modules if re.fullmatch(r"block\d+", m)), key=lambda m: int(m[5:]), default="norm")


BLOCKS = tuple(f"block{i}" for i in range(1, MAX_DEPTH + 1))
FAMILY = Family(
    name="vit",
    archs={arch: Arch(args, ("timm",), input_size=args.get("img_size", 224)) for arch, args in VARIANTS.items()},
    build=build,
    taps=("patch_embed", *BLOCKS, "norm", "pre_logits", "logits"),
    modules=("patch_embed", *BLOCKS, "norm", "attn_pool", "fc_norm", HEAD),
    top_block=last_block,
    # without a config.json: ImageNet's mean/std (DeiT, DeiT III, DINOv2, MAE; AugReg and CLIP differ)
    sources={"timm": Source("torch", timm_names, detect_timm,
                            "timm ViT/DeiT/DeiT III/DINOv2/CLIP", options=timm_options)},
    bn={"timm": layers.BN_SETTINGS["torchvision"]},  # no BatchNorm; only for a fresh head with batch_norm
    tap_modules={"pre_logits": "attn_pool"},
    spec_taps=spec_taps,
    prefix_tokens=prefix_tokens,
)
