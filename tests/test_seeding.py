"""repro_check.core.seeding and RunContext: one root seed, independent streams, real DataLoaders."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from repro_check.core.context import RunContext
from repro_check.core.seeding import (
    GLOBAL_SOURCE,
    MAX_SEED,
    SeedPlan,
    derive_seed,
    forked_global_rngs,
    root_seed_for_test,
    seed_everything,
    worker_init_fn,
)
from repro_check.strategies import DEFAULT_SOURCES, seeds

PROPS = settings(max_examples=100, deadline=None)
names = st.text(min_size=1, max_size=20)
SOURCES = (*DEFAULT_SOURCES, GLOBAL_SOURCE, "shuffle")


# ------------------------------------------------------------------------- root seed


def test_root_seed_is_stable_across_processes_and_hash_seeds():
    code = (
        "from repro_check.core.seeding import root_seed_for_test as r;"
        "print(r(0, 'tests/test_a.py::test_x[1]'), r(12345, 'tests/test_a.py::test_x[1]'))"
    )
    outputs = set()
    for hash_seed in ("0", "1", "random"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.add(result.stdout.strip())
    here = (
        f"{root_seed_for_test(0, 'tests/test_a.py::test_x[1]')} "
        f"{root_seed_for_test(12345, 'tests/test_a.py::test_x[1]')}"
    )
    assert outputs == {here}


@PROPS
@given(base=seeds(), test_id=st.text(max_size=60))
def test_root_seed_is_a_63_bit_function_of_base_and_test_id(base, test_id):
    seed = root_seed_for_test(base, test_id)
    assert 0 <= seed <= MAX_SEED
    assert seed == root_seed_for_test(base, test_id)


@PROPS
@given(base=seeds(), a=st.text(max_size=40), b=st.text(max_size=40))
def test_root_seed_depends_on_the_test_id(base, a, b):
    if a != b:
        assert root_seed_for_test(base, a) != root_seed_for_test(base, b)


@PROPS
@given(a=seeds(), b=seeds(), test_id=st.text(max_size=40))
def test_root_seed_depends_on_the_base_seed(a, b, test_id):
    if a != b:
        assert root_seed_for_test(a, test_id) != root_seed_for_test(b, test_id)


def test_parametrized_ids_get_their_own_seeds():
    ids = [f"tests/test_m.py::test_train[{p}]" for p in ("sgd", "adam", "16", "32")]
    assert len({root_seed_for_test(0, i) for i in ids}) == len(ids)


# ------------------------------------------------------------------------- streams


@PROPS
@given(root=seeds(), a=names, b=names)
def test_streams_are_independent_per_name(root, a, b):
    plan = SeedPlan(root)
    assert plan.seed_for(a) == derive_seed(root, a)
    assert 0 <= plan.seed_for(a) <= MAX_SEED
    if a != b:
        assert plan.seed_for(a) != plan.seed_for(b)


def test_stream_seeds_differ_from_the_root_and_from_each_other():
    plan = SeedPlan(42)
    seeds_by_source = {name: plan.seed_for(name) for name in SOURCES}
    assert len(set(seeds_by_source.values())) == len(SOURCES)
    assert 42 not in seeds_by_source.values()
    assert seeds_by_source == {name: SeedPlan(42).seed_for(name) for name in SOURCES}


@PROPS
@given(root=seeds(), source=st.sampled_from(SOURCES), perturbation=st.integers(1, 1000))
def test_perturbing_one_source_changes_only_that_source(root, source, perturbation):
    base, perturbed = SeedPlan(root), SeedPlan(root, {source: perturbation})
    for name in SOURCES:
        if name == source:
            assert perturbed.seed_for(name) != base.seed_for(name)
        else:
            assert perturbed.seed_for(name) == base.seed_for(name)


@PROPS
@given(root=seeds(), p=st.integers(1, 1000), q=st.integers(1, 1000))
def test_perturbation_indices_are_distinct_streams(root, p, q):
    a, b = SeedPlan(root, {"data": p}), SeedPlan(root, {"data": q})
    assert (a.seed_for("data") == b.seed_for("data")) == (p == q)
    assert SeedPlan(root, {"data": 0}).seed_for("data") == SeedPlan(root).seed_for("data")


def test_all_perturbs_every_source_and_explicit_entries_win():
    base = SeedPlan(7)
    everything = SeedPlan(7, {"all": 1})
    for name in SOURCES:
        assert everything.seed_for(name) != base.seed_for(name)
        assert everything.seed_for(name) == SeedPlan(7, {name: 1}).seed_for(name)
    mixed = SeedPlan(7, {"all": 1, "init": 0})
    assert mixed.seed_for("init") == base.seed_for("init")
    assert mixed.seed_for("data") == everything.seed_for("data")


def test_seed_plan_json_roundtrip():
    plan = SeedPlan(2**63 - 1, {"data": 3, "all": 1})
    back = SeedPlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert back == plan
    assert back.to_json() == {"root": 2**63 - 1, "perturbations": {"data": 3, "all": 1}}
    assert [back.seed_for(n) for n in SOURCES] == [plan.seed_for(n) for n in SOURCES]


# ------------------------------------------------------------------------- RunContext


def test_context_seeds_and_sources_used():
    context = RunContext(SeedPlan(99))
    assert context.seed == 99
    assert context.seed_for("init") == SeedPlan(99).seed_for("init")
    context.generator("data")
    context.numpy_rng("augment")
    assert context.sources_used == {"init", "data", "augment"}


def test_generators_are_reproducible_per_name():
    a, b = RunContext(SeedPlan(5)), RunContext(SeedPlan(5))
    assert torch.equal(
        torch.randn(8, generator=a.generator("data")), torch.randn(8, generator=b.generator("data"))
    )
    assert not torch.equal(
        torch.randn(8, generator=a.generator("data")), torch.randn(8, generator=a.generator("init"))
    )
    assert a.generator("data").initial_seed() == a.seed_for("data")
    assert np.array_equal(a.numpy_rng("noise").normal(size=4), b.numpy_rng("noise").normal(size=4))
    assert not np.array_equal(
        a.numpy_rng("noise").normal(size=4),
        RunContext(SeedPlan(6)).numpy_rng("noise").normal(size=4),
    )


def draw_globals() -> tuple[float, float, float]:
    return random.random(), float(np.random.random_sample()), float(torch.rand(()))


def test_seeded_block_is_reproducible_and_restores_the_global_rngs():
    seed_everything(1234)
    expected_after = draw_globals()  # what the global streams give next, untouched
    seed_everything(1234)
    context = RunContext(SeedPlan(11))
    with context.seeded("init"):
        inside = draw_globals()
    assert draw_globals() == expected_after  # restored: as if the block never ran
    with RunContext(SeedPlan(11)).seeded("init"):
        assert draw_globals() == inside  # same plan, same source: same draws
    with RunContext(SeedPlan(11)).seeded("dropout"):
        assert draw_globals() != inside  # another source: another stream
    seed_everything(SeedPlan(11).seed_for("init"))
    assert draw_globals() == inside  # the block is seeded from seed_for("init")
    assert "init" in context.sources_used


def test_seeded_block_restores_the_rngs_after_an_exception():
    seed_everything(5)
    expected_after = draw_globals()
    seed_everything(5)
    with pytest.raises(RuntimeError), forked_global_rngs(77):
        draw_globals()
        raise RuntimeError("inside")
    assert draw_globals() == expected_after


def test_seed_globals_follow_the_global_stream():
    context = RunContext(SeedPlan(3))
    context.seed_globals()
    first = draw_globals()
    RunContext(SeedPlan(3)).seed_globals()
    assert draw_globals() == first
    seed_everything(SeedPlan(3).seed_for(GLOBAL_SOURCE))
    assert draw_globals() == first
    RunContext(SeedPlan(4)).seed_globals()
    assert draw_globals() != first


def test_worker_init_fn_seeds_python_and_numpy_from_the_torch_seed():
    torch.manual_seed(2**40 + 17)
    worker_init_fn(0)
    expected_seed = (2**40 + 17) % 2**32
    assert random.random() == random.Random(expected_seed).random()
    assert np.random.random_sample() == np.random.RandomState(expected_seed).random_sample()


# ------------------------------------------------------------------------- real DataLoader


class Draws(Dataset):
    """Each item reports which worker produced it and what the worker's global RNGs gave."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int):
        info = torch.utils.data.get_worker_info()
        return (
            index,
            info.id if info else -1,
            torch.initial_seed(),
            float(np.random.random_sample()),
            random.random(),
            float(torch.rand(())),
        )


def load(context: RunContext) -> list[tuple]:
    loader = DataLoader(
        Draws(), batch_size=None, shuffle=True, num_workers=2, **context.dataloader_kwargs()
    )
    return list(loader)


def test_dataloader_kwargs_make_shuffling_and_worker_rngs_reproducible():
    kwargs = RunContext(SeedPlan(8)).dataloader_kwargs()
    assert set(kwargs) == {"generator", "worker_init_fn"}
    assert kwargs["worker_init_fn"] is worker_init_fn
    assert kwargs["generator"].initial_seed() == SeedPlan(8).seed_for("data")

    first = load(RunContext(SeedPlan(8)))
    again = load(RunContext(SeedPlan(8)))
    other = load(RunContext(SeedPlan(9)))
    order = [item[0] for item in first]
    assert sorted(order) == list(range(24)) and order != list(range(24))  # shuffled
    assert again == first  # order, worker seeds and every draw: identical
    assert [item[0] for item in other] != order
    assert {item[1] for item in first} == {0, 1}  # both workers really ran

    by_worker: dict[int, list[tuple]] = defaultdict(list)
    for item in first:
        by_worker[item[1]].append(item)
    for items in by_worker.values():
        torch_seed = items[0][2]
        assert {item[2] for item in items} == {torch_seed}
        # worker_init_fn ran: random and numpy follow the worker's torch seed, mod 2**32
        numpy_stream = np.random.RandomState(torch_seed % 2**32)
        python_stream = random.Random(torch_seed % 2**32)
        assert [item[3] for item in items] == [numpy_stream.random_sample() for _ in items]
        assert [item[4] for item in items] == [python_stream.random() for _ in items]
    # and the two workers draw different augmentations
    assert by_worker[0][0][3] != by_worker[1][0][3]
    assert by_worker[0][0][4] != by_worker[1][0][4]
