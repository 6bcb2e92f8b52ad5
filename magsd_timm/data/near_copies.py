"""Near-copies: one film saved twice, resized, re-encoded, slightly cropped or with other contrast.

Public chest X-ray sets share films, rarely byte for byte. Two stages find the copies among N images:

1. Candidates. Every image is histogram-equalised (contrast changes drop out) and squeezed to a square
   (resizing to another aspect ratio drops out). Its fingerprint holds the fine detail (the image minus
   its local mean) of a 24 x 24 thumbnail of the whole image and of 48 crops that remove up to 10% of
   the width and of the height, from either side or both. A pair is a candidate when the whole of one
   correlates with some crop of the other at CANDIDATE_THRESHOLD or more: one matrix product, blockwise.
2. Check. The candidate's best crop (the way round that scores best) is aligned to the other image at
   64 x 64 px (OpenCV's ECC, an affine warp), and their fine detail correlated: at NEAR_COPY_THRESHOLD
   or more they are one film. Distinct films of one class share the anatomy, not the noise, vessels and
   edges, so they stay far below.

docs/data.md gives the precision and recall measured on made copies (recipes/benchmark.py --suite
near-copies) and the time on 10,000 images.
"""
import io
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageEnhance

__all__ = ['CANDIDATE_THRESHOLD', 'COPY_KINDS', 'NEAR_COPY_THRESHOLD', 'Fingerprint', 'NoStructureError',
           'fingerprint', 'near_copy_groups', 'near_copy_pairs']

CANDIDATE_THRESHOLD = 0.75
NEAR_COPY_THRESHOLD = 0.85
_COARSE = 24  # px of the candidate stage's thumbnails
_FINE = 64  # px of the check's alignment
_KEPT = 128  # px of the equalised image a fingerprint keeps for the check
_SIDE = [(0., 0.)] + [(f * a, f * (1 - a)) for f in (0.05, 0.1) for a in (0., 0.5, 1.)]  # (first, last) share cut
CROPS = [(left, top, right, bottom) for left, right in _SIDE for top, bottom in _SIDE]  # CROPS[0]: the whole image


class NoStructureError(ValueError):
    """An image with nothing to compare: uniform after equalisation."""


@dataclass(frozen=True)
class Fingerprint:
    """What the search keeps of one image, about 19 KB: the whole image's descriptor, the equalised image (from
    which its crops' descriptors are computed when they are compared, not kept), its size in pixels."""

    whole: np.ndarray  # (_COARSE ** 2,) float32 unit vector: the descriptor of CROPS[0]
    equalised: np.ndarray  # (_KEPT, _KEPT) uint8
    pixels: int

    def crops(self) -> np.ndarray:
        """The descriptors of every crop of CROPS, (len(CROPS), _COARSE ** 2) float32 unit vectors."""
        return np.stack([_descriptor(self.equalised, c) for c in CROPS])


def _cv2():
    import cv2  # the data extra's OpenCV, imported when first needed

    return cv2


def _crop(image: np.ndarray, crop: Tuple[float, float, float, float]) -> np.ndarray:
    height, width = image.shape
    left, top, right, bottom = crop
    return image[round(top * height):height - round(bottom * height), round(left * width):width - round(right * width)]


def _detail(image: np.ndarray, size: int, box: int) -> np.ndarray:
    """The image at size x size minus its local mean (box x box)."""
    cv2 = _cv2()
    small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    return small - cv2.blur(small, (box, box), borderType=cv2.BORDER_REPLICATE)


def _unit(values: np.ndarray) -> np.ndarray:
    """values as a zero-mean unit vector (zero when they are constant)."""
    vector = values.ravel() - values.mean()
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-6 else vector


def fingerprint(image: np.ndarray) -> Fingerprint:
    """The fingerprint of a grey image (H, W) in [0, 1]; NoStructureError for a uniform one."""
    cv2 = _cv2()
    equalised = cv2.equalizeHist(np.clip(np.round(image * 255), 0, 255).astype(np.uint8))
    kept = cv2.resize(equalised, (_KEPT, _KEPT), interpolation=cv2.INTER_AREA)
    if int(kept.max()) - int(kept.min()) < 2:
        raise NoStructureError('uniform image: nothing to compare')
    return Fingerprint(whole=_descriptor(kept, CROPS[0]), equalised=kept, pixels=int(image.shape[0] * image.shape[1]))


def _descriptor(equalised: np.ndarray, crop: Tuple[float, float, float, float]) -> np.ndarray:
    """The fine detail of a crop of the equalised image at the candidate stage's size, as a unit vector."""
    return _unit(_detail(_crop(equalised, crop), _COARSE, 5)).astype(np.float32)


def _candidates(prints: Sequence[Fingerprint], block: int = 128) -> Iterator[Tuple[int, int, int, float]]:
    """(i, j, crop, score): the whole of image i correlates with crop `crop` of image j at CANDIDATE_THRESHOLD or more.

    The crops' descriptors of a block of images are computed, compared with every image's whole, and
    dropped: memory grows with one block's crops, not with every image's.
    """
    n = len(prints)
    whole = np.stack([p.whole for p in prints])
    for start in range(0, n, block):
        crops = np.concatenate([p.crops() for p in prints[start:start + block]])  # image j's crops: rows j*C..j*C+C-1
        scores = (whole @ crops.T).reshape(n, -1, len(CROPS))  # one matrix product: (n, block, len(CROPS))
        best, which = scores.max(-1), scores.argmax(-1)
        for i, j in zip(*np.nonzero(best >= CANDIDATE_THRESHOLD)):
            if i != start + j:
                yield int(i), start + int(j), int(which[i, j]), float(best[i, j])


def _checked(a: Fingerprint, b: Fingerprint, crop: int) -> float:
    """Correlation of a's fine detail with that of b's crop aligned onto a (affine ECC)."""
    cv2 = _cv2()
    size = (_FINE, _FINE)
    target = cv2.resize(a.equalised, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    moving = cv2.resize(_crop(b.equalised, CROPS[crop]), size, interpolation=cv2.INTER_AREA).astype(np.float32)
    warp = np.eye(2, 3, dtype=np.float32)
    try:
        _, warp = cv2.findTransformECC(target, moving, warp, cv2.MOTION_AFFINE,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4), None, 3)
    except cv2.error:  # no convergence: compare them as they are
        pass
    aligned = cv2.warpAffine(moving, warp, size, flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)
    inner = slice(4, _FINE - 4)  # the warp's border is made up
    return float(_unit(_detail(target, _FINE, 7)[inner, inner]) @ _unit(_detail(aligned, _FINE, 7)[inner, inner]))


def near_copy_pairs(prints: Sequence[Fingerprint]) -> Dict[Tuple[int, int], float]:
    """Every pair (i < j) of near-copies among the fingerprints, with its check score.

    A pair is checked once, the way round its candidate score is best (the side that was cropped).
    """
    best: Dict[Tuple[int, int], Tuple[float, int, int, int]] = {}
    for i, j, crop, score in _candidates(prints):
        pair = (min(i, j), max(i, j))
        if score > best.get(pair, (-1.,))[0]:
            best[pair] = (score, i, j, crop)
    checked = {pair: _checked(prints[i], prints[j], crop) for pair, (_, i, j, crop) in best.items()}
    return {pair: score for pair, score in sorted(checked.items()) if score >= NEAR_COPY_THRESHOLD}


def near_copy_groups(count: int, pairs: Sequence[Tuple[int, int]]) -> List[List[int]]:
    """The groups (two or more, each sorted) that the pairs join among count items: one film each."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[root(i)] = root(j)
    groups: Dict[int, List[int]] = {}
    for i in range(count):
        groups.setdefault(root(i), []).append(i)
    return sorted(g for g in groups.values() if len(g) > 1)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format='JPEG', quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _cut(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop((round(left * w), round(top * h), round(w - right * w), round(h - bottom * h)))


# how public sets copy a film (grey PIL image in, copy out): what the detector is measured and tested on
COPY_KINDS: Dict[str, Callable[[Image.Image], Image.Image]] = {
    'half size': lambda im: im.resize((im.width // 2, im.height // 2), Image.BILINEAR),
    'JPEG quality 30': lambda im: _jpeg(im, 30),
    'squeezed to 299 x 299': lambda im: im.resize((299, 299), Image.BILINEAR),
    '5% cut from each side': lambda im: _cut(im, .05, .05, .05, .05),
    '8% cut from the left and bottom': lambda im: _cut(im, .08, 0, 0, .08),
    '8% cut from the left only': lambda im: _cut(im, .08, 0, 0, 0),
    'gamma 0.6': lambda im: im.point(lambda v: round(255 * (v / 255) ** 0.6)),
    'gamma 1.5': lambda im: im.point(lambda v: round(255 * (v / 255) ** 1.5)),
    'contrast x1.3': lambda im: ImageEnhance.Contrast(im).enhance(1.3),
}
