"""The one-bit instability probe: nudge a single weight by one ulp before training starts.

Summers & Dinneen (ICML 2021) showed that changing one bit of one weight at initialisation
produces as much run-to-run variance as changing every seed. The nudge is applied by a global
forward pre-hook on the first forward call (the outermost module), so it works for any model
without the test's cooperation; the weight is chosen from ``seed_for("bitflip")`` and the run
index, so every run is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from repro_check.core.seeding import derive_seed


def arm(
    seed: int,
    index: int,
    run_info: dict[str, Any],
    add_cleanup: Callable[[Callable[[], None]], None],
) -> None:
    """Install the nudge for run ``index`` of a test with root ``seed``; what was nudged goes
    into ``run_info["bitflip"]``; ``add_cleanup`` receives the hook's removal."""
    import torch

    handle = None

    def nudge(module: torch.nn.Module, args: Any) -> None:
        handle.remove()
        parameters = [
            (n, p) for n, p in module.named_parameters() if p.is_floating_point() and p.numel() > 0
        ]
        if not parameters:
            run_info["bitflip"] = "no floating-point parameter to nudge"
            return
        rng = np.random.default_rng(derive_seed(seed, "bitflip", index))
        sizes = np.array([p.numel() for _, p in parameters], dtype=np.float64)
        which = int(rng.choice(len(parameters), p=sizes / sizes.sum()))
        name, parameter = parameters[which]
        element = int(rng.integers(parameter.numel()))
        with torch.no_grad():
            flat = parameter.view(-1)
            before = flat[element].clone()
            flat[element] = torch.nextafter(before, torch.tensor(float("inf"), dtype=before.dtype))
            after = float(flat[element])
        run_info["bitflip"] = {
            "parameter": name,
            "element": element,
            "before": float(before),
            "after": after,
        }

    handle = torch.nn.modules.module.register_module_forward_pre_hook(nudge)
    add_cleanup(handle.remove)  # never leak into the next test of the worker
