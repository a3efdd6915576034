"""Image augmentation and preprocessing in numpy.

Two kinds of functions live here, matching the two hooks of
`bigbatch_jax.data.BatchIterator`:

* batch augmentations `f(x, rng) -> x` over a whole (N, H, W, C) float batch,
  vectorised with numpy slicing (no per-example Python loop): the CIFAR
  pad-4 random crop and horizontal flip of the bigBatch reference
  (`preprocess.pad_random_crop`).
* per-example transforms `f(image, rng) -> x` for streaming sources whose
  images have varying sizes (ImageNet): decode-side resizing and cropping with
  PIL, as torchvision's `RandomResizedCrop` / `Resize(256) + CenterCrop(224)`,
  then the reference normalisation.
"""

from __future__ import annotations

import math

import numpy as np

# Normalisation of the bigBatch reference (preprocess.py, `__imagenet_stats`).
# The reference applies these ImageNet statistics to CIFAR-10/100 as well.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_batch(x: np.ndarray, what: str) -> None:
  if not isinstance(x, np.ndarray) or x.ndim != 4:
    shape = getattr(x, "shape", type(x).__name__)
    raise ValueError(f"{what} expects a numpy batch of images shaped (N, H, W, C); got {shape}")


def _crop_and_flip(
  x: np.ndarray, offsets: np.ndarray, flips: np.ndarray, padding: int, fill: float
) -> np.ndarray:
  """Crops image i of the `fill`-padded batch at offsets[:, i], mirrored where flips[i]."""
  n, h, w, c = x.shape
  out = np.empty_like(x)
  if n == 0:
    return out
  # Images sharing (row offset, column offset, flip) are moved with one slice
  # copy: at most (2p + 1)^2 * 2 = 162 groups for p = 4, whatever the batch
  # size. This is ~7x faster than one fancy-indexing gather over the padded
  # batch and never builds the padded copy.
  key = (offsets[0] * (2 * padding + 1) + offsets[1]) * 2 + flips
  order = np.argsort(key, kind="stable")
  starts = np.flatnonzero(np.diff(key[order])) + 1
  for group in np.split(order, starts):
    first = group[0]
    dy, dx = int(offsets[0, first]) - padding, int(offsets[1, first]) - padding
    # Output pixel (r, col) reads input pixel (r + dy, col + dx) when it exists.
    r0, r1 = max(0, -dy), min(h, h - dy)
    c0, c1 = max(0, -dx), min(w, w - dx)
    block = np.full((len(group), h, w, c), fill, x.dtype)
    if r0 < r1 and c0 < c1:
      block[:, r0:r1, c0:c1] = x[group, r0 + dy : r1 + dy, c0 + dx : c1 + dx]
    out[group] = block[:, :, ::-1] if flips[first] else block
  return out


def _check_padding(padding: int) -> None:
  if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
    raise ValueError(f"padding must be a non-negative int, got {padding!r}")


def random_crop(
  x: np.ndarray, rng: np.random.Generator, *, padding: int = 4, fill: float = 0.0
) -> np.ndarray:
  """Pads every image by `padding` pixels and takes a random crop of the original size.

  The crop offsets (into the padded image) are drawn as
  `rng.integers(0, 2 * padding + 1, size=(2, N))`, rows first, then columns,
  so a test can replay them.

  Args:
    x: batch of images, shape (N, H, W, C).
    rng: numpy generator supplying the crop offsets.
    padding: pixels of constant padding on every side (the reference uses 4).
    fill: value of the padding. On normalised inputs 0 is the dataset mean;
      the reference pads the raw image with grey 127 before normalising,
      which lands close to it.

  Returns:
    An array of the same shape and dtype as `x`.
  """
  _check_batch(x, "random_crop")
  _check_padding(padding)
  offsets = rng.integers(0, 2 * padding + 1, size=(2, x.shape[0]))
  return _crop_and_flip(x, offsets, np.zeros(x.shape[0], bool), padding, fill)


def random_flip_left_right(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Mirrors each image horizontally with probability 1/2.

  The decisions are `rng.random(N) < 0.5`, so a test can replay them.

  Args:
    x: batch of images, shape (N, H, W, C).
    rng: numpy generator supplying the flip decisions.

  Returns:
    An array of the same shape and dtype as `x`.
  """
  _check_batch(x, "random_flip_left_right")
  flip = rng.random(x.shape[0]) < 0.5
  return np.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def cifar_augment(
  x: np.ndarray, rng: np.random.Generator, *, padding: int = 4, fill: float = 0.0
) -> np.ndarray:
  """CIFAR training augmentation of the bigBatch reference: pad 4, random crop, flip.

  Equals `random_flip_left_right(random_crop(x, rng, padding=padding, fill=fill), rng)`
  (same draws, in that order), computed in one pass.

  Args:
    x: batch of normalised images, shape (N, 32, 32, C) (any H, W work).
    rng: numpy generator; crop offsets are drawn before flip decisions.
    padding: pixels of padding on every side.
    fill: value of the padding (0: the dataset mean for normalised inputs).

  Returns:
    The augmented batch, same shape and dtype.
  """
  _check_batch(x, "cifar_augment")
  _check_padding(padding)
  offsets = rng.integers(0, 2 * padding + 1, size=(2, x.shape[0]))
  flips = rng.random(x.shape[0]) < 0.5
  return _crop_and_flip(x, offsets, flips, padding, fill)


# --- per-example transforms for streaming image sources -----------------------


def _check_image(image: np.ndarray) -> None:
  if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
    desc = (
      f"{image.dtype} array of shape {image.shape}"
      if isinstance(image, np.ndarray)
      else type(image).__name__
    )
    raise ValueError(f"expected a uint8 image of shape (H, W, C); got {desc}")
  if image.shape[-1] not in (1, 3):
    raise ValueError(f"expected 1 or 3 channels; got an image of shape {image.shape}")


def _to_pil(image: np.ndarray):
  from PIL import Image

  _check_image(image)
  if image.shape[-1] == 1:
    return Image.fromarray(image[..., 0])
  return Image.fromarray(image)


def _from_pil(pil, channels: int) -> np.ndarray:
  out = np.asarray(pil, dtype=np.uint8)
  return out[..., None] if channels == 1 else out


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes a uint8 (H, W, C) image to (height, width) with bilinear filtering."""
  from PIL import Image

  if height < 1 or width < 1:
    raise ValueError(f"resize target must be positive, got ({height}, {width})")
  pil = _to_pil(image)
  return _from_pil(pil.resize((width, height), Image.Resampling.BILINEAR), image.shape[-1])


def _resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
  h, w = image.shape[:2]
  if h <= w:
    return resize_image(image, size, max(1, round(w * size / h)))
  return resize_image(image, max(1, round(h * size / w)), size)


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
  h, w = image.shape[:2]
  if h < size or w < size:
    raise ValueError(f"cannot center-crop {size}x{size} from an image of shape {image.shape}")
  top = (h - size) // 2
  left = (w - size) // 2
  return image[top : top + size, left : left + size]


def normalize_image(
  image: np.ndarray,
  mean: tuple[float, ...] = IMAGENET_MEAN,
  std: tuple[float, ...] = IMAGENET_STD,
) -> np.ndarray:
  """Scales a uint8 image to [0, 1] and standardises each channel: float32 output."""
  mean_arr = np.asarray(mean, np.float32)
  std_arr = np.asarray(std, np.float32)
  return (image.astype(np.float32) / 255.0 - mean_arr) / std_arr


def _random_resized_crop_box(
  h: int,
  w: int,
  rng: np.random.Generator,
  scale: tuple[float, float],
  ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
  # torchvision.transforms.RandomResizedCrop.get_params: ten tries at a box
  # of random area and log-uniform aspect ratio, then a central fallback.
  area = h * w
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    cw = round(math.sqrt(target_area * aspect))
    ch = round(math.sqrt(target_area / aspect))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      return top, left, ch, cw
  in_ratio = w / h
  if in_ratio < min(ratio):
    cw, ch = w, round(w / min(ratio))
  elif in_ratio > max(ratio):
    ch, cw = h, round(h * max(ratio))
  else:
    cw, ch = w, h
  return (h - ch) // 2, (w - cw) // 2, ch, cw


def imagenet_train_transform(
  image: np.ndarray,
  rng: np.random.Generator,
  *,
  size: int = 224,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
  """ImageNet training preprocessing: random resized crop, random flip, normalise.

  The reference (`preprocess.inception_preproccess`) uses torchvision's
  RandomSizedCrop(224) + RandomHorizontalFlip + Normalize(ImageNet stats).

  Args:
    image: decoded uint8 image, shape (H, W, 3) of any size.
    rng: numpy generator for the crop box and the flip.
    size: output side length.
    scale: range of the crop area as a fraction of the image area.
    ratio: range of the crop aspect ratio (width / height).

  Returns:
    float32 array of shape (size, size, 3).
  """
  _check_image(image)
  h, w = image.shape[:2]
  top, left, ch, cw = _random_resized_crop_box(h, w, rng, scale, ratio)
  crop = resize_image(image[top : top + ch, left : left + cw], size, size)
  if rng.random() < 0.5:
    crop = crop[:, ::-1]
  return normalize_image(crop)


def imagenet_eval_transform(
  image: np.ndarray,
  rng: np.random.Generator | None = None,
  *,
  size: int = 224,
  resize: int = 256,
) -> np.ndarray:
  """ImageNet evaluation preprocessing: resize the shorter side, center crop, normalise.

  The reference (`preprocess.scale_crop`) uses Scale(256) + CenterCrop(224).

  Args:
    image: decoded uint8 image, shape (H, W, 3) of any size.
    rng: unused (deterministic); accepted so that the function fits the
      `transform(image, rng)` hook of the pipeline.
    size: output side length.
    resize: length of the shorter side before cropping; must be >= size.

  Returns:
    float32 array of shape (size, size, 3).
  """
  del rng
  if resize < size:
    raise ValueError(f"resize ({resize}) must be >= size ({size}) for a center crop")
  return normalize_image(_center_crop(_resize_shorter_side(image, resize), size))


# --- the bigBatch reference's MNIST augmentation -------------------------------

# Normalisation of the bigBatch reference for MNIST (preprocess.py, its
# `get_transform('mnist')`): (x - 0.5) / 0.5, so black (0) becomes -1.
REFERENCE_MNIST_MEAN = (0.5,)
REFERENCE_MNIST_STD = (0.5,)


def black_pixel(mean, std) -> np.ndarray:
  """The value of a black pixel (0 in [0, 1] units) after `(x - mean) / std`.

  Args:
    mean: per-channel mean in [0, 1] pixel units (a scalar or a sequence).
    std: per-channel standard deviation, same shape.

  Returns:
    float32 array of shape (C,): `(0 - mean) / std`.
  """
  mean_arr = np.atleast_1d(np.asarray(mean, np.float32))
  std_arr = np.atleast_1d(np.asarray(std, np.float32))
  if mean_arr.shape != std_arr.shape or np.any(std_arr <= 0):
    raise ValueError(f"need positive std of the same shape as mean, got mean={mean}, std={std}")
  return (0.0 - mean_arr) / std_arr


def reference_mnist_augment(
  x: np.ndarray, rng: np.random.Generator, *, fill, padding: int = 2
) -> np.ndarray:
  """The bigBatch reference's MNIST augmentation: pad 2 with black, random crop, flip.

  The reference falls back to `get_transform('mnist', augment=True)`:
  `RandomCrop(28, padding=2)` on the raw image (padding with black, 0), then
  `RandomHorizontalFlip`, then `Normalize(0.5, 0.5)`. On normalised inputs the
  padding is therefore the black pixel in normalised units, `fill`
  (see :func:`black_pixel`: -1 under the reference's normalisation). Unlike
  :func:`cifar_augment`, whose fill 0 is the dataset mean, this pads black.

  Crop offsets are drawn before flip decisions, as in :func:`cifar_augment`.

  Args:
    x: batch of normalised images, shape (N, 28, 28, C) (any H, W work).
    rng: numpy generator.
    fill: the black pixel in the normalisation in use: a scalar or one value
      per channel (:func:`black_pixel` of the dataset's mean and std).
    padding: pixels of padding on every side (the reference uses 2).

  Returns:
    The augmented batch, same shape and dtype.
  """
  _check_batch(x, "reference_mnist_augment")
  fill_arr = np.asarray(fill, x.dtype)
  if fill_arr.ndim > 1 or fill_arr.size not in (1, x.shape[-1]):
    raise ValueError(
      f"fill must be a scalar or one value per channel ({x.shape[-1]}), got shape {fill_arr.shape}"
    )
  return cifar_augment(x, rng, padding=padding, fill=fill_arr)
