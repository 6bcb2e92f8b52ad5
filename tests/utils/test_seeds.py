"""Where randomness comes from: one mixing rule, every choice a function of the run's seed."""
import torch

from magsd_timm.utils.seeds import mix_seed, seeded_generator


def test_mixing_folds_each_part_into_the_seed_with_one_prime():
    assert mix_seed(7) == 7
    assert mix_seed(7, 3) == 7 * 1_000_003 + 3
    assert mix_seed(7, 3, 5) == (7 * 1_000_003 + 3) * 1_000_003 + 5


def test_distinct_epochs_steps_and_items_get_distinct_seeds():
    seeds = {mix_seed(seed, epoch, item) for seed in range(3) for epoch in range(20) for item in range(500)}
    assert len(seeds) == 3 * 20 * 500


def test_the_widest_run_seed_mixed_twice_still_seeds_torch():
    wide = mix_seed(2 ** 32 - 1, 10 ** 6, 10 ** 7)
    assert 0 <= wide < 2 ** 63
    torch.Generator().manual_seed(wide)  # a seed beyond 64 bits would raise here


def test_generators_repeat_and_leave_the_global_rng_alone():
    torch.manual_seed(0)
    expected_global = torch.rand(1)
    torch.manual_seed(0)
    a = torch.rand(3, generator=seeded_generator(1, 2))
    assert torch.equal(a, torch.rand(3, generator=seeded_generator(1, 2)))
    assert not torch.equal(a, torch.rand(3, generator=seeded_generator(1, 3)))
    assert torch.equal(torch.rand(1), expected_global)
