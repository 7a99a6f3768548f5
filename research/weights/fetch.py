"""`fetch(name)`: an official ImageNet weight file on local disk, checksum verified, downloaded only if needed.

Why: the reproductions need the exact files the published numbers were measured with. A file is looked for in
the caches Keras and torch already fill (`~/.keras/models/`, `~/.cache/torch/hub/checkpoints/`) and in ours,
so a user who has run either framework downloads nothing. Every candidate is verified against the published
checksum before use; a download streams to a temporary name and is renamed into place only once verified (`research.io`), so a
corrupt or interrupted download never lands in a cache.

Checksums: Keras publishes the md5 of each file (keras.applications' `file_hash`); torchvision publishes the
first 8 hex digits of the sha256 in the file name, which is what `torch.hub` checks, so that is what we check.
Keras publishes no hash for its MobileNet v1 and v2 files; those are used as downloaded (algorithm "none").
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from research import io
from research.errors import UserError

KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications"
TORCH_BASE = "https://download.pytorch.org/models"
CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Known:
    """One published file: where it lives and the digest its publisher gives ('md5', 'sha256' or 'sha256:8',
    a prefix of the sha256)."""
    url: str
    algorithm: str
    digest: str
    framework: str  # "keras" or "torchvision": which framework's cache may hold it

    @property
    def file(self) -> str:
        return self.url.rsplit("/", 1)[1]


def _keras(folder: str, arch: str, md5_top: str, md5_notop: str) -> dict[str, Known]:
    """keras.applications' two files per model, with and without the classifier."""
    stem = f"{arch}_weights_tf_dim_ordering_tf_kernels"
    return {f"{stem}.h5": Known(f"{KERAS_BASE}/{folder}/{stem}.h5", "md5", md5_top, "keras"),
            f"{stem}_notop.h5": Known(f"{KERAS_BASE}/{folder}/{stem}_notop.h5", "md5", md5_notop, "keras")}


def _torch(file: str) -> dict[str, Known]:
    """torchvision's file names end in the first 8 hex digits of their sha256."""
    prefix = file.rsplit("-", 1)[1].split(".")[0]
    return {file: Known(f"{TORCH_BASE}/{file}", "sha256:8", prefix, "torchvision")}


# The table: file name -> Known. Hashes as keras.applications (resnet.py WEIGHTS_HASHES, vgg16.py, vgg19.py)
# and torchvision (the IMAGENET1K_V1 / V2 weight enums) publish them.
KNOWN: dict[str, Known] = {
    **_keras("resnet", "resnet50", "2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    **_keras("resnet", "resnet101", "f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
    **_keras("resnet", "resnet152", "100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    **_keras("vgg16", "vgg16", "64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc"),
    **_keras("vgg19", "vgg19", "cbe5617147190e668d6c5d5026f83318", "253f8cb515780f3b799900260a226db6"),
    **_torch("resnet18-f37072fd.pth"),  # IMAGENET1K_V1
    **_torch("resnet50-0676ba61.pth"),  # IMAGENET1K_V1: the weights Kornblith et al. and SimCLR use
    **_torch("resnet50-11ad3fa6.pth"),  # IMAGENET1K_V2
    **_torch("resnet101-63fe2227.pth"),  # IMAGENET1K_V1
    **_torch("resnet152-394f9c45.pth"),  # IMAGENET1K_V1
    **_torch("vgg16-397923af.pth"),  # IMAGENET1K_V1
    **_torch("vgg19-dcbb9e9d.pth"),  # IMAGENET1K_V1
}


def _keras_file(folder: str, url_name: str, md5: str | None, cache_name: str | None = None) -> dict[str, Known]:
    """One keras.applications file, keyed by the name Keras caches it under; md5 None where Keras publishes
    no hash for it (MobileNet v1 and v2): such a file is used unverified (`verify` accepts any bytes)."""
    return {cache_name or url_name: Known(f"{KERAS_BASE}/{folder}/{url_name}", "md5" if md5 else "none",
                                          md5 or "", "keras")}


# The networks of Kornblith et al. (2019) that keras.applications publishes (URLs and md5s as keras 3's
# applications modules give them: inception_v3.py, inception_resnet_v2.py, resnet.py WEIGHTS_HASHES for the
# v2 ResNets, densenet.py, nasnet.py; mobilenet.py and mobilenet_v2.py give no hash).
KNOWN.update({
    **_keras("inception_v3", "inception_v3", "9a0d58056eeedaa3f26cb7ebd46da564", "bcbd6486424b2319ff4ef7d526e38f63"),
    **_keras("inception_resnet_v2", "inception_resnet_v2", "e693bd0210a403b3192acc6073ad2e96",
             "d19885ff4a710c122648d3b5c3b684e4"),
    **_keras("resnet", "resnet50v2", "3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917"),
    **_keras("resnet", "resnet101v2", "6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5"),
    **_keras("resnet", "resnet152v2", "a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33"),
    **_keras("densenet", "densenet121", "9d60b8095a5708f2dcce2bca79d332c7", "30ee3e1110167f948a6b9946edeeb738"),
    **_keras("densenet", "densenet169", "d699b8f76981ab1b30698df4c175e90b", "b8c4d4c20dd625c148057b9ff1c1176b"),
    **_keras("densenet", "densenet201", "1ceb130c1ea1b78c3bf6114dbdfd8807", "c13680b51ded0fb44dff2d8f86ac8bb1"),
    **_keras_file("mobilenet", "mobilenet_1_0_224_tf.h5", None),
    **_keras_file("mobilenet", "mobilenet_1_0_224_tf_no_top.h5", None),
    **_keras_file("mobilenet_v2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5", None),
    **_keras_file("mobilenet_v2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", None),
    **_keras_file("nasnet", "NASNet-mobile.h5", "020fb642bf7360b370c678b08e0adf61", "nasnet_mobile.h5"),
    **_keras_file("nasnet", "NASNet-mobile-no-top.h5", "1ed92395b5b598bdda52abe5c0dbfd63", "nasnet_mobile_no_top.h5"),
    **_keras_file("nasnet", "NASNet-large.h5", "11577c9a518f0070763c2b964a382f17", "nasnet_large.h5"),
    **_keras_file("nasnet", "NASNet-large-no-top.h5", "d81d89dc07e6e56530c4e77faddd61b5", "nasnet_large_no_top.h5"),
})


def known(name: str) -> Known:
    if name not in KNOWN:
        raise UserError(f"unknown weight file {name!r}; known: {', '.join(sorted(KNOWN))}")
    return KNOWN[name]


def default_cache() -> Path:
    """Our own cache: $RESEARCH_CACHE/weights, else ~/.cache/research/weights."""
    root = os.environ.get("RESEARCH_CACHE")
    return Path(root) / "weights" if root else Path.home() / ".cache" / "research" / "weights"


def framework_cache(framework: str) -> Path:
    """Where Keras' get_file or torch.hub would have put the file (honouring KERAS_HOME and TORCH_HOME)."""
    if framework == "keras":
        return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"


def candidates(name: str, cache_dir=None) -> list[Path]:
    """Where to look, in order: ours (or `cache_dir`), then the framework's own cache."""
    entry = known(name)
    return [Path(cache_dir or default_cache()) / name, framework_cache(entry.framework) / name]


def verify(path, entry: Known) -> bool:
    """Whether the file's digest is the published one (always, for a file whose publisher gives none)."""
    if entry.algorithm == "none":
        return True
    algorithm = "md5" if entry.algorithm == "md5" else "sha256"
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest().startswith(entry.digest.lower())


def find(name: str, cache_dir=None) -> Path | None:
    """The first cached copy whose checksum verifies, or None; no network."""
    entry = known(name)
    return next((p for p in candidates(name, cache_dir) if p.is_file() and verify(p, entry)), None)


def fetch(name: str, cache_dir=None, offline: bool = False, progress: bool | None = None) -> Path:
    """A verified local copy of the known file `name`, downloaded into our cache only when none is found."""
    found = find(name, cache_dir)
    if found is not None:
        return found
    ours = candidates(name, cache_dir)[0]
    if offline:
        raise UserError(f"weights {name} not found offline; put it in {ours.parent}/ or "
                        f"{framework_cache(known(name).framework)}/, or pass --weights")
    return download(known(name), ours, progress)


def download(entry: Known, out: Path, progress: bool | None = None) -> Path:
    """Streams `entry.url` to a temporary name beside `out`, verifies it, then renames it into place."""
    from tqdm import tqdm

    def write(tmp: Path) -> None:
        with urllib.request.urlopen(entry.url, timeout=60) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=entry.file, disable=progress is False,
                      leave=False) as bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
        if not verify(tmp, entry):
            raise UserError(f"{entry.url}: the download's {entry.algorithm} is not the published {entry.digest}; "
                            f"refused (nothing kept)")

    try:
        with io.writing(out.parent):
            out.parent.mkdir(parents=True, exist_ok=True)
        return io.atomic_write(out, write)
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"could not download {entry.url}: {getattr(e, 'reason', e)}") from None
