"""Where the randomness of a run comes from: every random choice is a function of the run's seed.

A run's seed reaches each consumer mixed with what the choice belongs to, so that a resumed run, a
loader looking ahead, or another number of workers makes the same choices:

* model initialisation: ``accelerate.utils.set_seed(seed)`` before the model is built;
* the shuffle order of the training loader: ``seeded_generator(seed)``;
* the balanced sampler's draws: ``seeded_generator(seed, epoch)``;
* each item's random transform: ``mix_seed(seed, epoch, index)``;
* the MAG-SD views of one training step: ``seeded_generator(seed, global_step)``;
* the patient split of a source without one: ``random.Random(seed)`` (``data/splits.py``).
"""
import torch

__all__ = ['mix_seed', 'seeded_generator']

_MULTIPLIER = 1_000_003  # a prime: distinct (seed, part) pairs give distinct seeds for any realistic range
_MODULUS = 2 ** 63  # torch.manual_seed takes 64-bit seeds; a wide seed mixed twice would overflow them


def mix_seed(seed: int, *parts: int) -> int:
    """One seed from a run's seed and the indices a random choice belongs to (epoch, step, item)."""
    mixed = seed
    for part in parts:
        mixed = (mixed * _MULTIPLIER + part) % _MODULUS
    return mixed


def seeded_generator(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator seeded with mix_seed(seed, *parts), apart from the global RNG."""
    return torch.Generator().manual_seed(mix_seed(seed, *parts))
