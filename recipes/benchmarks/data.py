"""Suite `data`: one data-loader worker (one thread) reading radiographs of 1024-2048 px (8-bit JPEG,
16-bit PNG) and preprocessing them to the input size with the published augmentation, against the
images per second one MAG-SD training step consumes.
"""
import argparse
from pathlib import Path
from typing import Dict, List

import torch

from .common import interleaved_medians, meets_or_misses
from .step import magsd_train_step

DATA_TARGET = 4.0  # one loader worker feeds at least this many times what a CPU MAG-SD step consumes


def _source_images(folder: Path) -> Dict[str, List[Path]]:
    """The bundled radiographs enlarged to 1024-2048 px, as 8-bit JPEG and 16-bit PNG files."""
    import numpy as np
    from PIL import Image

    from magsd_timm.data.sample import sample_records

    files: Dict[str, List[Path]] = {'8-bit JPEG': [], '16-bit PNG': []}
    for i, record in enumerate(sample_records()[:6]):
        side = (1024, 1536, 2048)[i % 3]
        image = Image.open(record['path']).convert('L').resize((side, int(side * 0.85)), Image.BILINEAR)
        jpeg, png = folder / f'{i}.jpeg', folder / f'{i}.png'
        image.save(jpeg, quality=95)
        Image.fromarray(np.asarray(image, dtype=np.uint16) * 257).save(png)
        files['8-bit JPEG'].append(jpeg)
        files['16-bit PNG'].append(png)
    return files


def run(args: argparse.Namespace) -> str:
    """Images/s of one loader worker (1 thread: read, resize, CLAHE, published augmentation, normalise)."""
    import tempfile

    import cv2

    from magsd_timm.data.reader import read_image
    from magsd_timm.data.transforms import build_transforms, resolve_cxr_data_config

    transform = build_transforms(
        resolve_cxr_data_config(input_size=(1, args.img_size, args.img_size)), train=True, augment='published')
    with tempfile.TemporaryDirectory() as folder:
        files = _source_images(Path(folder))
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        loaders = {kind: (lambda paths=paths: [transform(read_image(p)) for p in paths]) for kind, paths in files.items()}
        seconds = interleaved_medians(loaders, max(1., args.min_run_time / 4), args.min_rounds)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(-1)
    step = interleaved_medians({'step': magsd_train_step(args, True, False, 'joint')}, 1., args.min_rounds)['step']
    consumed = args.batch_size / step
    lines = ['| source (1024-2048 px) | ms per image | images/s per worker | x what training consumes | target |',
             '|---|---|---|---|---|']
    for kind, value in seconds.items():
        per_image = value / len(files[kind])
        ratio = 1 / per_image / consumed
        lines.append(f'| {kind} | {1e3 * per_image:.1f} | {1 / per_image:.1f} | {ratio:.1f}x | '
                     f'>= {DATA_TARGET:.0f}x ({meets_or_misses(ratio >= DATA_TARGET)}) |')
    lines.append(f'| one MAG-SD training step ({args.threads} threads, channels_last) | {1e3 * step:.0f} per batch | '
                 f'{consumed:.1f} consumed | | |')
    return '\n'.join(lines)
