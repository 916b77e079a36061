"""Planted: the three classic ways a resumed run stops matching the run that never stopped.
Each test checkpoints every step and resumes after step 5 (``resume_at=5``); each leaves one
piece of state out, and ``pytest --repro`` names it:

- the global RNG state is not in the checkpoint: dropout masks after the resume differ;
- the LR scheduler is not in the checkpoint: it restarts its schedule;
- the data loader restarts from the start of its epoch: the batches after the resume repeat
  the first ones.
"""

import pytest

from suites.resumable import ResumableBatches, train_step, training_setup
from suites.training import batches


@pytest.mark.repro(steps=10, resume_at=5)
def test_rng_state_not_restored(repro):
    model, optimizer, scheduler, loader = training_setup(repro)
    data = ResumableBatches(loader)
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "data": data.position}
    start = repro.restore(**state)
    for step, batch in zip(range(start, repro.steps), data, strict=False):
        loss = train_step(model, optimizer, scheduler, batch)
        repro.record(step, model=model, optimizer=optimizer, loss=loss, batch=batch[0])
        repro.checkpoint(step, **state)  # BUG: no rng=repro.rng_state()


@pytest.mark.repro(steps=10, resume_at=5)
def test_scheduler_not_restored(repro):
    model, optimizer, scheduler, loader = training_setup(repro)
    data = ResumableBatches(loader)
    start = repro.restore(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        data=data.position,
        rng=repro.rng_state(),
    )
    for step, batch in zip(range(start, repro.steps), data, strict=False):
        loss = train_step(model, optimizer, scheduler, batch)
        repro.record(
            step, model=model, optimizer=optimizer, scheduler=scheduler, loss=loss, batch=batch[0]
        )
        # BUG: the scheduler is not saved
        repro.checkpoint(
            step, model=model, optimizer=optimizer, data=data.position, rng=repro.rng_state()
        )


@pytest.mark.repro(steps=10, resume_at=5)
def test_dataloader_restarted_from_epoch_start(repro):
    model, optimizer, scheduler, loader = training_setup(repro)
    state = {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "rng": repro.rng_state(),
    }
    start = repro.restore(**state)
    # BUG: a fresh iterator over the loader: a resumed run starts the epoch again
    for step, batch in zip(range(start, repro.steps), batches(loader), strict=False):
        loss = train_step(model, optimizer, scheduler, batch)
        repro.record(step, model=model, optimizer=optimizer, loss=loss, batch=batch[0])
        repro.checkpoint(step, **state)
