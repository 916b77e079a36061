"""RunContext: what a training test sees of repro-check (the ``repro`` fixture).

It carries the seeds of one replica and records its state step by step. It knows nothing of
pytest, so the same object serves the plugin, the CLI and a notebook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_check.core.leaves import check_step_order
from repro_check.core.record import (
    MetricRecorder,
    Recorder,
    RNGState,
    RunRecord,
    check_recordable,
)
from repro_check.core.seeding import (
    GLOBAL_SOURCE,
    SeedPlan,
    forked_global_rngs,
    seed_everything,
    seeded_generator,
    worker_init_fn,
)

if TYPE_CHECKING:
    import torch

DEFAULT_STEPS = 10


def _is_module(value: Any) -> bool:
    import torch

    return isinstance(value, torch.nn.Module)


MAX_PREDICTIONS = 4096


class RunContext:
    """One replica of one training test: its seeds, its step budget and its recorder.

    ``recorder`` is None when nothing is compared (a plain ``pytest`` run): ``record`` then only
    checks the types of what it is given, so a test that runs under ``--repro`` also runs, cheaply,
    without it.
    """

    def __init__(
        self,
        plan: SeedPlan,
        *,
        steps: int = DEFAULT_STEPS,
        replica: int = 0,
        recorder: Recorder | MetricRecorder | None = None,
        test_id: str = "",
    ) -> None:
        self.plan = plan
        self.steps = steps
        self.replica = replica
        self.test_id = test_id
        self.recorder = recorder
        #: Names passed to seed_for() -- a sensitivity sweep over a source never asked for
        #: measures nothing, and says so.
        self.sources_used: set[str] = set()
        #: The last predictions passed to record_predictions (sweeps compare them across runs).
        self.predictions: list[float] | None = None
        #: Facts about this run worth reporting (e.g. which weight a bit-flip run nudged).
        self.run_info: dict[str, Any] = {}
        self._cleanups: list[Any] = []
        self._last_step: int | None = None  # steps must increase (core.leaves)
        self._trace: tuple[int | None, int, str] | None = None
        self._tracer: Any = None
        #: This run's part in a resume check (core.resume_state.ResumeController); None: the
        #: test's checkpoint() and restore() calls only check their arguments.
        self.resume: Any = None

    @property
    def seed(self) -> int:
        """The root seed of this test: the single source of truth for every stream."""
        return self.plan.root

    def seed_for(self, name: str) -> int:
        """An independent seed for one source of randomness (``init``, ``data``, ...)."""
        self.sources_used.add(name)
        return self._note_seed(name)

    def _note_seed(self, name: str) -> int:
        """The seed of ``name``, kept in ``run_info["seeds"]``: a sweep's CSV shows each run's."""
        seed = self.plan.seed_for(name)
        self.run_info.setdefault("seeds", {})[name] = seed
        return seed

    def seed_globals(self) -> None:
        """Seed ``random``, numpy's global RNG and torch from the ``global`` stream."""
        seed_everything(self._note_seed(GLOBAL_SOURCE))

    def generator(self, name: str, device: str = "cpu") -> torch.Generator:
        """A ``torch.Generator`` seeded from ``seed_for(name)``."""
        return seeded_generator(self.seed_for(name), device)

    def numpy_rng(self, name: str) -> np.random.Generator:
        """A numpy ``Generator`` seeded from ``seed_for(name)``."""
        return np.random.default_rng(self.seed_for(name))

    @contextlib.contextmanager
    def seeded(self, name: str) -> Iterator[None]:
        """Run a block (``with repro.seeded("init"): model = Net()``) with the global RNGs
        seeded from ``seed_for(name)``; the global streams are restored afterwards."""
        with forked_global_rngs(self.seed_for(name)):
            yield

    def dataloader_kwargs(self, name: str = "data") -> dict[str, Any]:
        """``generator`` and ``worker_init_fn`` for ``torch.utils.data.DataLoader``: shuffling
        and every worker's ``random``/numpy/torch streams follow ``seed_for(name)``."""
        return {"generator": self.generator(name), "worker_init_fn": worker_init_fn}

    def rng_state(self) -> RNGState:
        """A snapshot of the global RNG states: ``repro.record(step, rng=repro.rng_state())``."""
        return RNGState()

    def record(self, step: int, **state: Any) -> None:
        """Record the state after one training step: modules, optimizers, schedulers, tensors,
        numbers (as ``metric.<name>``) and RNG states. Only fingerprints are kept."""
        if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
            check_step_order(self._last_step, int(step))
            self._last_step = int(step)
        if self.recorder is None:
            check_recordable(step, state)
            return
        if self._trace is not None and self._tracer is not None and step == self._trace[1]:
            self._stop_trace()
        self.recorder.record(step, state)
        if self.resume is not None:
            self.resume.on_record(step)
        if self._trace is not None and step == self._trace[0]:
            modules = [v for v in state.values() if _is_module(v)]
            self._start_trace(modules[0] if modules else None)

    def checkpoint(self, step: int, **state: Any) -> None:
        """Hand the harness a full-state checkpoint after ``step``: what a resumed run needs
        (model, optimizer, scheduler, ``rng=repro.rng_state()``, generators, the sampler position
        in a dict). Under ``resume_at=k`` the harness saves it at step k (safetensors + manifest)
        and resumes from it in a fresh process; otherwise nothing is saved."""
        if self.resume is None:
            check_recordable(step, {})  # the step's type; the state is only read when saved
            return
        self.resume.checkpoint(step, state)

    def restore(self, **live: Any) -> int:
        """The first step to run: 0, or ``k + 1`` in the run that resumes from the checkpoint of
        step k -- then every object passed here that the checkpoint carries is restored in place
        (dicts too), and the global RNGs when it carries them. ``for step in
        range(repro.restore(model=m, optimizer=o, ...), repro.steps)``."""
        return 0 if self.resume is None else self.resume.restore(live)

    def record_data(self, name: str, data: Any) -> str:
        """Declare the data this run reads -- a tensor, array, bytes, or a file or folder path --
        by its content hash (a folder hashed like DVC: sorted relative paths + file hashes); the
        run catalog keeps it as the run's data version. Returns the digest (``""`` without
        ``--repro``, when nothing is kept and nothing is hashed)."""
        if self.recorder is None:
            return ""
        from repro_check.core.datahash import data_version

        version = data_version(data)
        self.run_info.setdefault("data_versions", {})[str(name)] = version
        return str(version["digest"])

    def trace_window(self, start_after: int | None, stop_at: int, path: str) -> None:
        """Trace every aten op between ``record(start_after)`` (None: from now) and
        ``record(stop_at)`` into ``path`` -- the window where two replicas part."""
        self._trace = (start_after, stop_at, path)
        if start_after is None:
            self._start_trace(None)

    def _start_trace(self, root_module: Any) -> None:
        from repro_check.trace.tracer import OpTracer

        self._tracer = OpTracer(root_module)
        self._tracer.__enter__()
        self.add_cleanup(self._stop_trace)

    def _stop_trace(self) -> None:
        if self._tracer is None or self._trace is None:
            return
        from repro_check.trace.io import write_trace

        tracer, self._tracer = self._tracer, None
        tracer.__exit__(None, None, None)
        write_trace(self._trace[2], tracer.events, tracer.truncated)
        self.run_info["trace_path"] = self._trace[2]
        self.run_info["trace_events"] = len(tracer.events)

    def record_predictions(self, predictions: Any) -> None:
        """Keep the model's predictions on a fixed evaluation set (the last call wins): a
        sensitivity sweep reports how often runs disagree and how their outputs correlate.
        Logits of shape (N, C) are reduced to class labels."""
        import torch

        tensor = torch.as_tensor(predictions).detach().cpu()
        if tensor.dim() == 2 and tensor.is_floating_point():
            tensor = tensor.argmax(dim=1)
        flat = tensor.reshape(-1).to(torch.float64)
        self.predictions = flat[:MAX_PREDICTIONS].tolist()

    def record_outcome(
        self,
        name: str,
        value: Any,
        *,
        higher_is_better: bool | None = None,
        n_examples: int | None = None,
    ) -> None:
        """Declare a result of this run (``accuracy``, ``bleu``): only declared outcomes enter
        a sensitivity report's tables; ``record()`` scalars such as the training loss stay
        diagnostics. ``n_examples``: the evaluation set size of a proportion in [0, 1], for
        the binomial noise floor and Wilson intervals. The last call per name wins."""
        from repro_check.core.outcomes import outcome_entry

        entry = outcome_entry(name, value, higher_is_better, n_examples)
        self.run_info.setdefault("outcomes", {})[name] = entry

    def arm_bitflip(self, index: int) -> None:
        """Nudge one weight by one ulp just before the first forward pass: the instability
        probe of Summers & Dinneen (ICML 2021). ``index`` picks which weight, reproducibly."""
        from repro_check.core.bitflip import arm

        arm(self.seed, index, self.run_info, self.add_cleanup)

    def add_cleanup(self, callback: Any) -> None:
        """Call ``callback()`` when the run closes (e.g. remove a hook it installed)."""
        self._cleanups.append(callback)

    def close(self) -> RunRecord | dict[str, float] | None:
        while self._cleanups:
            self._cleanups.pop()()
        return self.recorder.close() if self.recorder is not None else None
