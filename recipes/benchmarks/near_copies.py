"""Suite `near-copies`: how well prepare_data's near-copy search finds one film saved twice, and how long
it takes. Films drawn (seeded) from --near-copy-images (default: the bundled sample) are copied in
every way of magsd_timm.data.near_copies.COPY_KINDS (resize, JPEG, crops, contrast); the copies are
searched among --near-copy-total images in all (the drawn films, their copies and further films of the
folders). Recall per kind of copy; precision over the pairs found that hold a made copy; the pairs found
among the folders' own files (real copies, or false matches: listed for a look); the time per image
and of the search. Runs only when named.
"""
import argparse
import time

from magsd_timm.errors import display
from magsd_timm.utils.tables import shown_path

from .common import film_files


def run(args: argparse.Namespace) -> str:
    """Recall per kind of made copy, precision, pairs among the folders' own files, and the time."""
    import json
    import random
    import resource

    from PIL import Image

    from magsd_timm.data.near_copies import COPY_KINDS, fingerprint, near_copy_groups, near_copy_pairs
    from magsd_timm.data.reader import image_to_array, read_image

    files = film_files(args.near_copy_images, '--near-copy-images')
    rng = random.Random(args.seeds[0])
    drawn = rng.sample(files, min(args.near_copy_films, len(files)))
    others = [p for p in files if p not in set(drawn)]
    rng.shuffle(others)
    own = drawn + others[:max(0, args.near_copy_total - len(drawn) * (1 + len(COPY_KINDS)))]
    start = time.perf_counter()
    prints = [fingerprint(read_image(p)) for p in own]
    per_file = (time.perf_counter() - start) / len(own)
    made = []  # (index of its film in own, kind)
    for i, path in enumerate(drawn):
        film = Image.fromarray((read_image(path) * 255).round().astype('uint8'))
        for kind, copy in COPY_KINDS.items():
            prints.append(fingerprint(image_to_array(copy(film))))
            made.append((i, kind))
    kept = sum(p.whole.nbytes + p.equalised.nbytes for p in prints)
    start = time.perf_counter()
    pairs = near_copy_pairs(prints)
    search = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    film_of = {len(own) + m: i for m, (i, _) in enumerate(made)}  # a made copy's film; own files are their own
    group = {i: n for n, g in enumerate(near_copy_groups(len(prints), list(pairs))) for i in g}
    lines = [f'{len(prints)} images searched: {len(own)} files of {len(files)} in '
             f"{', '.join(shown_path(f) for f in args.near_copy_images) or 'the bundled sample'}, and "
             f'{len(made)} copies made of {len(drawn)} of them (seed {args.seeds[0]}).', '',
             '| copy made | found with its film (recall) |', '|---|---|']
    for kind in COPY_KINDS:
        found = [group.get(len(own) + m, -1) == group.get(i, -2) for m, (i, k) in enumerate(made) if k == kind]
        lines.append(f'| {kind} | {sum(found)} / {len(found)} = {sum(found) / len(found):.3f} |')
    with_copy = [(i, j) for i, j in pairs if j >= len(own)]  # i < j: a made copy is always j
    own_pairs = sorted((i, j) for i, j in pairs if j < len(own))
    right = sum(film_of.get(i, i) == film_of[j] for i, j in with_copy)
    copies_of = {i: {j for pair in own_pairs if i in pair for j in pair} for i in range(len(drawn))}
    also = sum(film_of.get(i, i) != film_of[j] and i in copies_of[film_of[j]] for i, j in with_copy)
    lines += ['', f'Precision over the {len(with_copy)} pairs found that hold a made copy: {right} join it to its own '
                  f'film or its other copies = {right / max(1, len(with_copy)):.4f}; {also} more join it to a file '
                  f'found to be a copy of its film (a real copy in the collection, listed below), and with them '
                  f'{(right + also) / max(1, len(with_copy)):.4f}.',
              f'Pairs found among the files themselves: {len(own_pairs)} (real copies in the collection, or false '
              'matches: listed in near-copies-found.json to look at).',
              f'Time: {1e3 * per_file:.1f} ms per file (read and fingerprint, one process); the search of all '
              f'{len(prints)} images {search:.1f} s.',
              f'Memory: {kept / len(prints) / 1024:.1f} KB kept per image for the search (its fingerprint); the '
              f'process peaked at {peak / 2 ** 20:.0f} MiB resident.']
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / 'near-copies-found.json').write_text(json.dumps(
        [dict(a=display(own[i]), b=display(own[j]), score=round(pairs[i, j], 4)) for i, j in own_pairs], indent=1))
    return '\n'.join(lines)
