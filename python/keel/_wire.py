"""keel's step records: what `Run.log` turns a dict into, and how it travels as JSON.

A record is `{"step", "time", "tokens", "scalars", "layers"}` (docs/api.md, "Step records").
Non-finite values are data: they travel as the strings "NaN", "Infinity" and "-Infinity".
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

MAX_NAME = 128
MAX_SERIES = 1000
MAX_STEP = 1_000_000_000_000
# Keys of a logged dict that are fields of the record rather than scalars.
IMPLICIT = ("time", "tokens")
# `layers/3/hidden_var`, `layer_3/hidden_var`, `…/block.3/…`: a per-layer value, folded into
# that statistic's vector.
LAYER_KEY = re.compile(r"^layers/(\d+)/(.+)$")

_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def metric(x: float) -> float | str:
    """A float as keel's JSON carries it."""
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def from_metric(v: Any) -> float:
    """The inverse of `metric`, for answers read back from the server."""
    if isinstance(v, str):
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[v]
    return float(v)


def name_ok(name: str) -> bool:
    return (
        0 < len(name) <= MAX_NAME
        and name.strip() == name
        and not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name)
    )


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts become `/`-joined names: `{"train": {"loss": 1}}` is `train/loss`."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise TypeError(f"keys of a logged dict must be strings, got {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = value
    return out


class Row:
    """One step's values, merged over the `log` calls of that step.

    Values may be Python numbers, numpy scalars or tensors. Tensors stay where they are
    until `resolve`, which the sender thread calls: the training thread never waits for a
    device.
    """

    __slots__ = ("step", "branch", "time", "tokens", "scalars", "layers", "layer_items", "packed")

    def __init__(self, step: int, branch: int, time: float):
        self.step = step
        self.branch = branch
        self.time = time
        self.tokens: Any = None
        self.scalars: dict[str, Any] = {}
        # stat -> whole vector (a list or a 1-D tensor)
        self.layers: dict[str, Any] = {}
        # stat -> {layer index: value}, from `layers/<i>/<stat>` keys
        self.layer_items: dict[str, dict[int, Any]] = {}
        # (one flat float64 tensor per device, where each value of it goes), made by `pack`
        self.packed: list[tuple[Any, list[tuple[str, Any, int]]]] = []

    def add(self, data: dict, layer_key: re.Pattern | None = None) -> None:
        for name, value in flatten(data).items():
            if name == "tokens":
                self.tokens = value
                continue
            if name == "time":
                self.time = float(value)
                continue
            m = LAYER_KEY.match(name) or (layer_key.match(name) if layer_key else None)
            if m:
                index, stat = _layer_match(m)
                self.layer_items.setdefault(stat, {})[index] = value
            elif _is_vector(value):
                self.layers[name] = value
            else:
                self.scalars[name] = value

    def vector_lengths(self) -> set[int]:
        lengths = {len(_as_list(v)) if not _is_tensor(v) else v.numel() for v in self.layers.values()}
        lengths.update(max(items) + 1 for items in self.layer_items.values())
        return lengths

    def pack(self) -> None:
        """Gathers every tensor of the row into one flat tensor per device, on that device.

        Called on the training thread when the row closes: it only queues a few kernels.
        `resolve` then reads each packed tensor with one transfer, instead of one per value.
        """
        groups: dict[Any, tuple[list, list]] = {}

        def take(where: str, key: Any, value: Any) -> None:
            flat = value.detach().reshape(-1)
            tensors, slots = groups.setdefault(flat.device, ([], []))
            tensors.append(flat)
            slots.append((where, key, flat.numel()))

        for name, v in self.scalars.items():
            if _is_tensor(v) and v.numel() == 1:
                take("s", name, v)
        for name, v in self.layers.items():
            if _is_tensor(v):
                take("l", name, v)
        for stat, items in self.layer_items.items():
            for i, v in items.items():
                if _is_tensor(v) and v.numel() == 1:
                    take("i", (stat, i), v)
        if self.tokens is not None and _is_tensor(self.tokens):
            take("t", None, self.tokens)
        if not groups:
            return
        import torch

        for tensors, slots in groups.values():
            # One cat per dtype (usually one), then one cast: few kernels per step.
            by_dtype: dict[Any, list[int]] = {}
            for j, t in enumerate(tensors):
                by_dtype.setdefault(t.dtype, []).append(j)
            order = [j for js in by_dtype.values() for j in js]
            parts = [torch.cat([tensors[j] for j in js]).to(torch.float64) for js in by_dtype.values()]
            flat = parts[0] if len(parts) == 1 else torch.cat(parts)
            self.packed.append((flat, [slots[j] for j in order]))

    def _unpack(self) -> None:
        for flat, slots in self.packed:
            values = flat.cpu().tolist()
            at = 0
            for where, key, n in slots:
                part = values[at : at + n]
                at += n
                if where == "s":
                    self.scalars[key] = part[0]
                elif where == "l":
                    self.layers[key] = part
                elif where == "i":
                    self.layer_items[key[0]][key[1]] = part[0]
                else:
                    self.tokens = part[0]
        self.packed = []

    def resolve(self, layers: int, ranks: int | None = None) -> dict:
        """The JSON record; values that cannot be sent are left out with one warning each.

        A layer statistic has `layers` values; a `rank_*` one, `ranks` when the run has them.
        """
        self._unpack()
        record: dict[str, Any] = {"step": self.step, "time": self.time}
        if self.tokens is not None:
            tokens = _number(self.tokens)
            if tokens is not None and math.isfinite(tokens) and tokens >= 0:
                record["tokens"] = int(tokens)
        scalars: dict[str, Any] = {}
        for name, value in self.scalars.items():
            if not name_ok(name):
                warn_once(f"name:{name}", f"keel: {name!r} is not a series name (1 to 128 characters, no control characters or surrounding spaces); not logged")
                continue
            x = _number(value)
            if x is None:
                warn_once(f"type:{name}", f"keel: {name!r} is a {type(value).__name__}, not a number; not logged")
                continue
            scalars[name] = metric(x)
        vectors: dict[str, list] = {}
        for stat, value in self.layers.items():
            vectors[stat] = [_number(v) for v in _as_list(value)]
        for stat, items in self.layer_items.items():
            if set(items) != set(range(layers)):
                warn_once(f"layers:{stat}", f"keel: `layers/<i>/{stat}` was logged for layers {sorted(items)} of the run's {layers}; a layer statistic needs every layer, so it is not logged")
                continue
            vectors[stat] = [_number(items[i]) for i in range(layers)]
        out_layers: dict[str, list] = {}
        for stat, values in vectors.items():
            if not name_ok(stat):
                warn_once(f"name:{stat}", f"keel: {stat!r} is not a series name; not logged")
            elif any(v is None for v in values):
                warn_once(f"type:{stat}", f"keel: `{stat}` holds values that are not numbers; not logged")
            elif ranks is not None and stat.startswith("rank_"):
                if len(values) == ranks:
                    out_layers[stat] = [metric(v) for v in values]
                else:
                    warn_once(f"len:{stat}", f"keel: `{stat}` has {len(values)} values and the run has {ranks} ranks; not logged")
            elif len(values) != layers:
                what = " (the run was created before Control knew its ranks)" if stat.startswith("rank_") else ""
                warn_once(f"len:{stat}", f"keel: `{stat}` has {len(values)} values and the run has {layers} layers{what}; not logged")
            else:
                out_layers[stat] = [metric(v) for v in values]
        if len(scalars) + len(out_layers) > MAX_SERIES:
            warn_once("series", f"keel: a step holds at most {MAX_SERIES} series; the rest are not logged")
            keep = MAX_SERIES - len(out_layers)
            scalars = dict(list(scalars.items())[: max(keep, 0)])
        record["scalars"] = scalars
        record["layers"] = out_layers
        return record


def _layer_match(m: re.Match) -> tuple[int, str]:
    groups = m.groupdict()
    if "layer" in groups and "stat" in groups:
        return int(groups["layer"]), groups["stat"]
    return int(m.group(1)), m.group(2)


def _is_tensor(v: Any) -> bool:
    return hasattr(v, "detach") and hasattr(v, "numel")


def _is_vector(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return True
    if _is_tensor(v) or hasattr(v, "ndim"):
        return getattr(v, "ndim", 0) == 1
    return False


def _as_list(v: Any) -> list:
    if _is_tensor(v):
        return v.detach().float().cpu().tolist()
    if hasattr(v, "tolist"):
        return list(v.tolist())
    return list(v)


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)):
        return float(v)
    if _is_tensor(v):
        if v.numel() != 1:
            return None
        return float(v.detach().float().cpu().item())
    if hasattr(v, "item"):  # numpy scalars
        try:
            return float(v.item())
        except (TypeError, ValueError):
            return None
    return None
