"""GPUs through NVML (nvidia-ml-py): driver, devices, MIG, and CUDA_VISIBLE_DEVICES mapping."""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

from repro_check.environment._common import decode, error_of, guard


def import_pynvml() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("pynvml")


@functools.lru_cache(maxsize=1)
def nvml_query() -> dict[str, Any]:
    nv = import_pynvml()
    base_error = getattr(nv, "NVMLError", Exception)
    try:
        nv.nvmlInit()
    except base_error as exc:
        code = getattr(exc, "value", None)
        no_library = {
            getattr(nv, "NVML_ERROR_LIBRARY_NOT_FOUND", object()),
            getattr(nv, "NVML_ERROR_DRIVER_NOT_LOADED", object()),
        }
        if code in no_library:
            return {
                "status": "no-nvml-library",
                "reason": str(exc),
                "hint": "no NVIDIA driver/NVML library on this machine",
            }
        return {"status": "nvml-error", **error_of(exc)}
    except Exception as exc:  # noqa: BLE001 - e.g. OSError from ctypes
        return {"status": "nvml-error", **error_of(exc)}

    def call(name: str, *args: Any, convert: Callable[[Any], Any] | None = None) -> Any:
        try:
            value = getattr(nv, name)(*args)
        except getattr(nv, "NVMLError_NotSupported", ()) as exc:  # type: ignore[misc]
            return {"error": "not supported", "detail": str(exc)}
        except Exception as exc:  # noqa: BLE001
            return error_of(exc)
        try:
            return convert(value) if convert else decode(value)
        except Exception as exc:  # noqa: BLE001
            return error_of(exc)

    def mode(value: Any) -> dict[str, str]:
        current, pending = value
        return {
            "current": "enabled" if current else "disabled",
            "pending": "enabled" if pending else "disabled",
        }

    def cuda_version(value: int) -> str:
        return f"{value // 1000}.{(value % 1000) // 10}"

    try:
        result: dict[str, Any] = {
            "status": "ok",
            "driver_version": call("nvmlSystemGetDriverVersion"),
            "cuda_driver_version": call("nvmlSystemGetCudaDriverVersion", convert=cuda_version),
            "nvml_version": call("nvmlSystemGetNVMLVersion"),
        }
        count = call("nvmlDeviceGetCount")
        result["device_count"] = count
        devices: list[dict[str, Any]] = []
        for index in range(count if isinstance(count, int) else 0):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
            except Exception as exc:  # noqa: BLE001
                devices.append({"index": index, **error_of(exc)})
                continue
            clock_sm = getattr(nv, "NVML_CLOCK_SM", 1)
            clock_mem = getattr(nv, "NVML_CLOCK_MEM", 2)
            devices.append(
                {
                    "index": index,
                    "name": call("nvmlDeviceGetName", handle),
                    "uuid": call("nvmlDeviceGetUUID", handle),
                    "pci_bus_id": call(
                        "nvmlDeviceGetPciInfo", handle, convert=lambda p: decode(p.busId)
                    ),
                    "compute_capability": call(
                        "nvmlDeviceGetCudaComputeCapability",
                        handle,
                        convert=lambda v: f"{v[0]}.{v[1]}",
                    ),
                    "memory_total_mib": call(
                        "nvmlDeviceGetMemoryInfo", handle, convert=lambda m: int(m.total) // 2**20
                    ),
                    "mig_mode": call("nvmlDeviceGetMigMode", handle, convert=mode),
                    "ecc_mode": call("nvmlDeviceGetEccMode", handle, convert=mode),
                    "persistence_mode": call(
                        "nvmlDeviceGetPersistenceMode",
                        handle,
                        convert=lambda v: "enabled" if v else "disabled",
                    ),
                    "clocks": {
                        "sm_mhz": call("nvmlDeviceGetClockInfo", handle, clock_sm),
                        "mem_mhz": call("nvmlDeviceGetClockInfo", handle, clock_mem),
                        "sm_max_mhz": call("nvmlDeviceGetMaxClockInfo", handle, clock_sm),
                        "mem_max_mhz": call("nvmlDeviceGetMaxClockInfo", handle, clock_mem),
                    },
                    "power_limit_w": call(
                        "nvmlDeviceGetPowerManagementLimit", handle, convert=lambda mw: mw / 1000
                    ),
                }
            )
        result["devices"] = devices
        if count == 0:
            result["status"] = "no-devices"
        return result
    finally:
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()


def visible_devices(cvd: str | None, devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Map CUDA's visible indices to NVML devices, following CUDA's CUDA_VISIBLE_DEVICES rules."""
    if cvd is None:
        chosen: list[dict[str, Any] | str] = list(devices)
    else:
        chosen = []
        for token in (t.strip() for t in cvd.split(",")):
            if re.fullmatch(r"\d+", token):
                if int(token) >= len(devices):
                    break  # CUDA stops at the first invalid entry
                chosen.append(devices[int(token)])
            elif token.startswith("GPU-"):
                matches = [d for d in devices if str(d.get("uuid", "")).startswith(token)]
                if len(matches) != 1:
                    break
                chosen.append(matches[0])
            elif token.startswith("MIG-"):
                chosen.append(token)
            else:
                break  # "", "-1", "NoDevFiles": nothing further is visible
    out = []
    for visible_index, dev in enumerate(chosen):
        if isinstance(dev, str):
            out.append({"visible_index": visible_index, "uuid": dev, "nvml_index": None})
        else:
            out.append(
                {
                    "visible_index": visible_index,
                    "uuid": dev.get("uuid"),
                    "nvml_index": dev.get("index"),
                    "name": dev.get("name"),
                }
            )
    return out


def gpus_info() -> dict[str, Any]:
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    order = os.environ.get("CUDA_DEVICE_ORDER")
    try:
        import_pynvml()
    except ImportError:
        info: dict[str, Any] = {
            "status": "nvml-python-missing",
            "hint": "pip install repro-check[gpu]",
        }
    else:
        info = dict(nvml_query())
    info["cuda_visible_devices"] = cvd
    info["cuda_device_order"] = order
    devices = info.get("devices")
    if isinstance(devices, list) and devices:
        info["visible"] = guard(lambda: visible_devices(cvd, devices))
        if order != "PCI_BUS_ID":
            info["visible_order_note"] = (
                "mapped in PCI bus order; CUDA orders fastest first unless "
                "CUDA_DEVICE_ORDER=PCI_BUS_ID"
            )
    return info
