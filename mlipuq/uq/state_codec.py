"""Plain-data form of a UQ wrapper's fitted state and recalibrator, so that saved files
load with torch's ``weights_only=True`` (split out of :mod:`mlipuq.uq.base`, whose
``save``/``load`` use it)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from mlipuq.errors import FileFormatError


def _encode(value: Any) -> Any:
    """Turn NumPy arrays into tensors so files load with ``weights_only=True``."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value: Any, path: str = "<memory>") -> Any:
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            if not isinstance(value["__ndarray__"], torch.Tensor):
                raise FileFormatError(f"{path}: an encoded array that is not a tensor")
            return value["__ndarray__"].numpy()
        return {k: _decode(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, path) for v in value]
    if isinstance(value, tuple):
        return tuple(_decode(v, path) for v in value)
    if not (value is None or isinstance(value, (bool, int, float, str, torch.Tensor))):
        raise FileFormatError(f"{path}: fitted state holds a {type(value).__name__}, not plain data")
    return value


def _encode_recalibrator(recalibrator) -> Optional[dict]:
    """Plain-data form of a PredictionRecalibrator (loads with ``weights_only=True``)."""
    if recalibrator is None:
        return None
    parts = (("energy", recalibrator.energy_), ("forces", recalibrator.forces_))
    return {"method": recalibrator.method, "options": _encode(dict(recalibrator.options)),
            "parts": {key: {"class": type(part).__name__, "state": _encode(dict(vars(part)))}
                      for key, part in parts},
            **recalibrator.outer_state()}  # std_range, structure_scaling: absent in older files


def _decode_recalibrator(payload, path: str = "<memory>"):
    if payload is None:
        return None
    from mlipuq.calibration import recalibrate

    try:
        options = _decode(payload["options"], path)
        if not isinstance(options, dict):
            raise ValueError(f"options are {type(options).__name__}, not a mapping")
        # a file written before misspelt options were refused may hold one that neither
        # recalibrator takes (dropped then as now): it still loads
        accepted = recalibrate.PredictionRecalibrator.accepted_options(payload["method"])
        outer = recalibrate.PredictionRecalibrator(
            payload["method"], **{k: v for k, v in options.items() if k in accepted}
        )
        parts = payload["parts"]
        outer.set_outer_state(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise FileFormatError(f"{path}: damaged recalibrator ({exc})") from None
    for key, part in parts.items():
        if key not in ("energy", "forces"):
            raise FileFormatError(f"{path}: unknown recalibrator part {key!r}")
        cls = getattr(recalibrate, str(part.get("class")), None)
        if not (isinstance(cls, type) and issubclass(cls, recalibrate.Recalibrator)):
            raise FileFormatError(f"{path}: unknown recalibrator class {part.get('class')!r}")
        obj = cls.__new__(cls)
        obj.__dict__.update(_decode(part["state"], path))
        setattr(outer, f"{key}_", obj)
    return outer


def _encode_strain_term(term) -> Optional[dict]:
    """Plain-data form of a :class:`~mlipuq.calibration.strain.StrainTerm` (None: none)."""
    return None if term is None else _encode(term.state())


def _decode_strain_term(payload, path: str = "<memory>"):
    """The saved strain term (None in files without one, e.g. older ones)."""
    if payload is None:
        return None
    from mlipuq.calibration.strain import StrainTerm

    state = _decode(payload, path)
    if not isinstance(state, dict):
        raise FileFormatError(f"{path}: damaged strain term (a {type(state).__name__})")
    return StrainTerm.from_state(state, path)


def _encode_calibration_width(width) -> dict:
    """The payload entry of ``calibration_width_`` (:mod:`mlipuq.uq.wide_cells`): none
    when there is no width (no periodic calibration cell, uncalibrated, older files)."""
    return {} if width is None else {"calibration_width": float(width)}


def _decode_calibration_width(value, path: str = "<memory>"):
    """The saved calibration width (Å), None where the file has none; anything but a
    positive finite number raises :class:`~mlipuq.errors.FileFormatError`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not np.isfinite(value) or value <= 0:
        raise FileFormatError(f"{path}: damaged calibration width ({value!r}: expected a "
                              "positive number of Å)")
    return float(value)
