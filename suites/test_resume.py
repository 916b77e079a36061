"""Resume equivalence, done right: a run stopped after step 5 and resumed from its checkpoint in
a fresh process records, from step 6 on, exactly what the run that never stopped recorded.

The loop starts at ``repro.restore(...)`` (0, or the step after the checkpoint) and hands the
harness a full-state checkpoint after every step: model, optimizer, LR scheduler, the global
RNGs (dropout draws from torch's) and the data stream's position. ``pytest --repro`` checks the
resume (``resume_at=5``: the stop falls mid-epoch); plain ``pytest`` runs the loop once.
"""

import math

import pytest

from suites.resumable import ResumableBatches, train_step, training_setup


@pytest.mark.repro(steps=12, resume_at=5)
def test_resume_mid_epoch(repro):
    model, optimizer, scheduler, loader = training_setup(repro)
    data = ResumableBatches(loader)
    state = {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "data": data.position,
        "rng": repro.rng_state(),
    }
    start = repro.restore(**state)
    loss = None
    for step, batch in zip(range(start, repro.steps), data, strict=False):
        loss = train_step(model, optimizer, scheduler, batch)
        repro.record(
            step, model=model, optimizer=optimizer, scheduler=scheduler, loss=loss, batch=batch[0]
        )
        repro.checkpoint(step, **state)  # rng=: the global RNGs as they are now
    assert loss is not None and math.isfinite(float(loss.detach()))
