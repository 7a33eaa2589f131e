"""Training data: CIFAR-10 from the WebDataset shards, ImageNet-style folders, and an in-memory
loader that serves uint8 batches from the training device.

CIFAR-10 is 50k + 10k 32x32 JPEGs (about 20 MB as shards, 184 MB decoded). They are decoded once
(all shards in parallel), cached as uint8 .npy files, and kept on the GPU for the whole run, so
a training step never waits on the host. Folder datasets (`class/xxx.jpg`) are decoded and
resized to a fixed size by DataLoader workers and augmented on the device like CIFAR.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SHARDS = {"train": ("train-000.tar.gz", "train-001.tar.gz"), "test": ("test.tar.gz",)}
_IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class DataError(ValueError):
    """A dataset file or folder that cannot be used; the message names it."""


def find_cifar10(root: str | None = None) -> str:
    """The CIFAR-10 shard folder: `root`, else $QVIT_DATA/cifar10 or $QVIT_DATA, else the copy in the
    repository (datasets/cifar10), else ../shared/data/cifar10."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root:  # an explicit folder is used or refused, never silently replaced by another
        if os.path.isfile(os.path.join(root, _SHARDS["test"][0])):
            return os.path.abspath(root)
        raise DataError(f"{root}: CIFAR-10 shards ({', '.join(_SHARDS['train'] + _SHARDS['test'])}) not found there")
    cands = []
    if os.environ.get("QVIT_DATA"):
        cands += [os.path.join(os.environ["QVIT_DATA"], "cifar10"), os.environ["QVIT_DATA"]]
    cands += [os.path.join(here, "datasets", "cifar10"), os.path.join(os.getcwd(), "datasets", "cifar10"),
              os.path.join(here, "..", "shared", "data", "cifar10")]
    for c in cands:
        if c and os.path.isfile(os.path.join(c, _SHARDS["test"][0])):
            return os.path.abspath(c)
    raise DataError(f"CIFAR-10 shards ({', '.join(_SHARDS['train'] + _SHARDS['test'])}) not found in any of: "
                    f"{', '.join(c for c in cands if c)}; pass --data-root or set QVIT_DATA")


def _decode_shard(path: str):
    from PIL import Image
    xs, ys = [], []
    try:
        with tarfile.open(path, "r:*") as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable tar shard ({type(e).__name__}: {e})") from e
    keys = sorted(n[:-4] for n in members if n.endswith(".jpg"))
    if not keys:
        raise DataError(f"{path}: holds no .jpg members")
    for k in keys:
        if k + ".cls" not in members:
            raise DataError(f"{path}: {k}.jpg has no {k}.cls label")
        try:
            img = Image.open(io.BytesIO(members[k + ".jpg"])).convert("RGB")
        except Exception as e:
            raise DataError(f"{path}: {k}.jpg is not a decodable image ({e})") from e
        xs.append(np.asarray(img))
        ys.append(int(members[k + ".cls"]))
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def _cache_dir() -> str:
    return os.environ.get("QVIT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "qvit"))


def load_cifar10(split: str, root: str | None = None, cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) for split 'train' or 'test'."""
    if split not in _SHARDS:
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    root = find_cifar10(root)
    paths = [os.path.join(root, s) for s in _SHARDS[split]]
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"{p}: missing CIFAR-10 shard")
    key = hashlib.sha1("|".join(f"{os.path.basename(p)}:{os.path.getsize(p)}:{os.path.getmtime(p)}"
                                for p in paths).encode()).hexdigest()[:12]
    cx = os.path.join(_cache_dir(), f"cifar10-{split}-{key}-x.npy")
    cy = cx[:-6] + "-y.npy"
    if cache and os.path.isfile(cx) and os.path.isfile(cy):
        x, y = np.load(cx), np.load(cy)
    else:
        if len(paths) > 1:
            with ProcessPoolExecutor(min(len(paths), os.cpu_count() or 1)) as ex:
                parts = list(ex.map(_decode_shard, paths))
        else:
            parts = [_decode_shard(paths[0])]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        if cache:
            try:
                from qvit.vit.checkpoint import atomic_write
                os.makedirs(_cache_dir(), exist_ok=True)
                atomic_write(cy, lambda t: np.save(open(t, "wb"), y))
                atomic_write(cx, lambda t: np.save(open(t, "wb"), x))
            except OSError:
                pass  # a read-only home only costs the decode next time
    if y.min() < 0 or y.max() >= 10:
        raise DataError(f"{root}: labels outside 0..9 in the {split} split")
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)


def scan_folder(root: str) -> tuple[list[str], list[int], list[str]]:
    """ImageNet-style folder: root/<class>/<image>. Returns (paths, labels, class names sorted)."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such image folder")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    paths, labels = [], []
    for i, c in enumerate(classes):
        for dp, _, files in sorted(os.walk(os.path.join(root, c))):
            for f in sorted(files):
                if f.lower().endswith(_IMG_EXT):
                    paths.append(os.path.join(dp, f))
                    labels.append(i)
    if not paths:
        raise DataError(f"{root}: no image files ({', '.join(_IMG_EXT)}) under its class folders")
    return paths, labels, classes


def load_image_u8(path: str, size: int, crop_pct: float = 1.0) -> torch.Tensor:
    """One image file -> uint8 (3, size, size): shorter side resized to size / crop_pct (bicubic),
    then center-cropped. Raises DataError naming the file if it is not a readable image."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = size / crop_pct
            nw, nh = (round(s), round(s * h / w)) if w <= h else (round(s * w / h), round(s))
            im = im.resize((max(nw, size), max(nh, size)), Image.BICUBIC)
            w, h = im.size
            l, t = (w - size) // 2, (h - size) // 2
            im = im.crop((l, t, l + size, t + size))
            a = np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return torch.from_numpy(a).permute(2, 0, 1)


class FolderDataset(torch.utils.data.Dataset):
    """Folder images as uint8 (3, size, size); augmentation happens later, batched on the device."""

    def __init__(self, root: str, size: int, crop_pct: float = 1.0):
        self.paths, self.labels, self.classes = scan_folder(root)
        self.size, self.crop_pct = size, crop_pct

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return load_image_u8(self.paths[i], self.size, self.crop_pct), self.labels[i]


def load_folder(root: str, size: int, crop_pct: float = 1.0, workers: int = 0):
    """Decode a (small) folder dataset into memory: (uint8 (N, 3, size, size), labels, classes)."""
    ds = FolderDataset(root, size, crop_pct)
    dl = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=workers)
    xs, ys = zip(*[(x, y) for x, y in dl])
    return torch.cat(xs), torch.cat(ys).long(), ds.classes


class DeviceLoader:
    """Batches of an in-memory uint8 dataset, in an order set by (seed, epoch), sharded over ranks.

    The permutation is drawn on the CPU from `seed + epoch` so that every rank (and a resumed run)
    sees the same order; rank r takes batches' slices r, r + world, ... of each global batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, drop_last: bool,
                 seed: int = 0, rank: int = 0, world: int = 1, device="cpu"):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"images ({x.shape[0]}) and labels ({y.shape[0]}) differ in count")
        if batch_size % world:
            raise ValueError(f"global batch size {batch_size} is not divisible by the world size {world}")
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0

    def __len__(self):
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        n = self.x.shape[0]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        order = order.to(self.x.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world]
            yield self.x[idx], self.y[idx]
