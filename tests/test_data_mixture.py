from collections import Counter

import pytest

from fclm.data.mixture import MixtureDataset, MixtureSampler, exact_counts
from fclm.data.schema import FCLMDataError

SIZES = {"refcoco": 50, "reasonseg": 7, "vg": 200}
WEIGHTS = {"refcoco": 55885, "reasonseg": 40000, "vg": 77000}


def test_exact_counts_follow_weights():
    c = exact_counts(WEIGHTS, 1000)
    assert sum(c.values()) == 1000
    total = sum(WEIGHTS.values())
    for n, w in WEIGHTS.items():
        assert abs(c[n] - 1000 * w / total) < 1


def test_sampler_counts_determinism_and_epoch_permutations():
    s = MixtureSampler(SIZES, WEIGHTS, 1000, seed=3)
    draws = list(s)
    assert len(draws) == len(s) == 1000
    assert Counter(n for n, _ in draws) == Counter(exact_counts(WEIGHTS, 1000))
    assert draws == list(MixtureSampler(SIZES, WEIGHTS, 1000, seed=3))
    assert draws != list(MixtureSampler(SIZES, WEIGHTS, 1000, seed=4))
    rs = [i for n, i in draws if n == "reasonseg"]
    assert all(0 <= i < 7 for i in rs)
    for k in range(0, len(rs) - 7, 7):  # every pass over the small set is a permutation
        assert sorted(rs[k:k + 7]) == list(range(7))


def test_sampler_shards_across_ranks():
    full = list(MixtureSampler(SIZES, WEIGHTS, 1001, seed=1))
    parts = [list(MixtureSampler(SIZES, WEIGHTS, 1001, seed=1, rank=r, world_size=4)) for r in range(4)]
    assert {len(p) for p in parts} == {250}
    for r in range(4):
        assert parts[r] == full[r:1000:4]


def test_sampler_resume_same_and_other_world_size():
    full = list(MixtureSampler(SIZES, WEIGHTS, 600, seed=5))
    s = MixtureSampler(SIZES, WEIGHTS, 600, seed=5, rank=1, world_size=2)
    it = iter(s)
    first = [next(it) for _ in range(100)]
    state = s.state_dict()
    assert state["consumed"] == 200 and first == full[1:200:2]
    r = MixtureSampler(SIZES, WEIGHTS, 600, seed=5, rank=1, world_size=2)
    r.load_state_dict(state)
    assert len(r) == 200 and list(r) == full[201:600:2]
    # resume on 3 ranks: consumed is rounded down to a whole step of 3 (198), then strided
    for rank in range(3):
        q = MixtureSampler(SIZES, WEIGHTS, 600, seed=5, rank=rank, world_size=3)
        q.load_state_dict(state)
        assert list(q) == full[198 + rank:600:3]
    # with samples_seen (DataLoader prefetch): only trained-on draws count
    s2 = MixtureSampler(SIZES, WEIGHTS, 600, seed=5)
    it2 = iter(s2)
    [next(it2) for _ in range(50)]
    assert s2.state_dict(samples_seen=40)["consumed"] == 40
    with pytest.raises(ValueError, match="another mixture"):
        MixtureSampler(SIZES, WEIGHTS, 600, seed=6).load_state_dict(state)


def test_mixture_dataset_skips_bad_records():
    class Reader(list):
        def __getitem__(self, i):
            v = list.__getitem__(self, i)
            if v is None:
                raise FCLMDataError(f"record {i} is corrupt")
            return v

    ds = MixtureDataset({"a": Reader(["x0", None, None, "x3"]), "b": ["y0", "y1"]},
                        transform=lambda v: v.upper())
    assert ds.sizes() == {"a": 4, "b": 2}
    assert ds[("a", 1)] == "X3" and ds.skipped == 2
    assert ds[("b", 1)] == "Y1"
    sampler = MixtureSampler(ds.sizes(), {"a": 1, "b": 1}, 10, seed=0)
    assert len([ds[k] for k in sampler]) == 10
    with pytest.raises(FCLMDataError, match="consecutive bad records"):
        MixtureDataset({"c": Reader([None, None])}, max_tries=3)[("c", 0)]
