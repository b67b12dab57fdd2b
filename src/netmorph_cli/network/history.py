"""Typed records of a checkpoint's history: what each morph, calibration and training did.

A network's history (``Network.history``) is stored as a JSON list of objects; these records
are its one schema. Writers build a record and store ``to_json()``; readers go through
``parse_history`` and read attributes. Every record keeps the keys of its JSON object in their
order, the ones it does not know included (``extra``), so ``to_json(from_json(x)) == x`` key
for key and in order: an old entry (one without fields added since) or one written by a
newer netmorph loads, and saves again byte for byte. An entry whose ``op`` is not a known one
is an ``UnknownRecord``, kept verbatim.

Loading checks the types of the known fields (whatever the entry's ``op``) and refuses a bad
one with ``NetworkError`` naming the entry and the field.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

from ..errors import NetworkError
from .attrs import short

# -- the type checks of a loaded entry ------------------------------------------------------


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _pairs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 and _strings(p)
                                       for p in v)


def _epochs(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(m, dict) and all(type(m.get(k)) in (int, float)
                                    for k in ("test_error", "train_error")) for m in v)


def _num(v: Any) -> bool:
    return type(v) in (int, float)


def _calibration(v: Any) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("dataset"), str)
            and type(v.get("images")) is int and _strings(v.get("layers")))


_CALIBRATION = ("an object with 'dataset' (a string), 'images' (an integer) and 'layers' (a "
                "list of strings)")

# history-entry field → (check, what it must be); other fields are kept unchecked
ENTRY_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **dict.fromkeys(("op", "preset", "module", "act", "output"),
                    (lambda v: isinstance(v, str), "a string")),
    **dict.fromkeys(("at", "after", "dataset"), (lambda v: v is None or isinstance(v, str),
                                        "a string or null")),
    **dict.fromkeys(("sweeps", "replaced", "epochs_run", "world_size"),
                    (lambda v: type(v) is int, "an integer")),
    "seed": (lambda v: v is None or type(v) is int, "an integer or null"),
    **dict.fromkeys(("residual", "condition", "test_error", "seconds"),
                    (lambda v: v is None or _num(v), "a number or null")),
    **dict.fromkeys(("exact_bn", "bn"), (lambda v: type(v) is bool, "true or false")),
    **dict.fromkeys(("blocks", "new_bn", "added"), (_strings, "a list of strings")),
    "compare": (_pairs, "a list of [parent node, child node] pairs"),
    "metrics": (_epochs, "a list of epoch records with numeric 'test_error' and "
                         "'train_error'"),
    **dict.fromkeys(("config", "spec", "methods"), (lambda v: isinstance(v, dict),
                                                   "an object")),
    "calibration": (_calibration, _CALIBRATION),
    "widths": (lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and type(w) is int and w >= 1 for k, w in v.items()),
        "an object of inner blob → positive integer width"),
    "widths_how": (lambda v: isinstance(v, str), "a string"),
}


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def check_entry(entry: Any, where: str = "history entry") -> None:
    """``NetworkError`` unless ``entry`` is an object whose known fields have their types."""
    if not isinstance(entry, dict):
        raise NetworkError(f"{where} must be an object, got {_kind(entry)}")
    for key, (ok, what) in ENTRY_FIELDS.items():
        if key in entry and not ok(entry[key]):
            raise NetworkError(f"{where}: {key!r} must be {what}, not {short(entry[key])}")


# -- records ----------------------------------------------------------------------------------

R = TypeVar("R", bound="_Keyed")


def _to_json(v: Any) -> Any:
    """A field's JSON value: records by their ``to_json``, tuples as lists, fresh copies."""
    if isinstance(v, _Keyed):
        return v.to_json()
    if isinstance(v, (tuple, list)):
        return [_to_json(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_json(x) for k, x in v.items()}
    return v


@dataclass(frozen=True, kw_only=True)
class _Keyed:
    """A JSON object as typed fields: ``keys`` (the object's keys in order) says which fields
    it has, ``extra`` holds the keys no field names, verbatim."""

    keys: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    _TUPLES: ClassVar[frozenset[str]] = frozenset()  # lists of strings, kept as tuples

    @classmethod
    def _names(cls) -> set[str]:
        return {f.name for f in fields(cls)} - {"keys", "extra"}

    @classmethod
    def of(cls: type[R], **values: Any) -> R:
        """A new record with these fields, its JSON keys in this order."""
        return cls(**values, keys=tuple(values))

    def with_(self: R, **values: Any) -> R:
        """This record with these fields set; a field it did not have comes last."""
        keys = self.keys + tuple(k for k in values if k not in self.keys)
        return replace(self, **values, keys=keys)

    def to_json(self) -> dict[str, Any]:
        return {k: copy.deepcopy(self.extra[k]) if k in self.extra else _to_json(getattr(self, k))
                for k in self.keys}

    @classmethod
    def _parse(cls: type[R], entry: dict[str, Any]) -> R:
        """The record of a checked entry."""
        names = cls._names()
        values = {k: cls._field(k, v) for k, v in entry.items() if k in names}
        extra = {k: copy.deepcopy(v) for k, v in entry.items() if k not in names}
        return cls(**values, keys=tuple(entry), extra=extra)

    @classmethod
    def _field(cls, key: str, v: Any) -> Any:
        return tuple(v) if key in cls._TUPLES else copy.deepcopy(v)


METHOD = "train-mode batch statistics (eq. 9 with the data's mean and variance)"


@dataclass(frozen=True, kw_only=True)
class Calibration(_Keyed):
    """What a calibration did, as recorded in the morph's history entry (``calibrate.py``).
    Loading checks ``dataset``, ``images`` and ``layers``; the others are kept as found."""

    method: str | None = None
    dataset: str = ""
    batches: int | None = None
    batch_size: int | None = None
    images: int = 0
    seed: int | None = None
    layers: tuple[str, ...] = ()

    _TUPLES: ClassVar[frozenset[str]] = frozenset({"layers"})

    @classmethod
    def measured(cls, dataset: str, batches: int, batch_size: int, seed: int,
                 layers: tuple[str, ...]) -> Calibration:
        """The record ``calibrate`` writes: ``batches`` batches of ``batch_size`` images."""
        return cls.of(method=METHOD, dataset=dataset, batches=batches, batch_size=batch_size,
                      images=batches * batch_size, seed=seed, layers=tuple(layers))

    @classmethod
    def from_json(cls, value: Any) -> Calibration:
        if not _calibration(value):
            raise NetworkError(f"a calibration must be {_CALIBRATION}, not {short(value)}")
        return cls._parse(value)


MORPH_OPS = ("preset", "module", "prelu_all")


@dataclass(frozen=True, kw_only=True)
class MorphRecord(_Keyed):
    """A morph (``morph.py``): ``op`` "preset" (``preset``, ``blocks``), "module"
    (``module``, ``spec``, ``at`` the layer replaced or ``after`` the node whose output's
    identity became the module, ``sweeps``, ``methods``, ``output``, ``bn``, ``act``, the
    inner ``widths`` solved at and ``widths_how`` they were chosen) or
    "prelu_all" (``replaced``); each with the node pairs to ``compare``, most with the
    ``seed``, worst solver ``residual`` and ``condition``, ``exact_bn``, the BN layers it
    added (``new_bn``) and, once set from data, their ``calibration``."""

    op: str
    preset: str | None = None
    module: str | None = None
    spec: dict[str, Any] | None = None
    at: str | None = None
    after: str | None = None
    seed: int | None = None
    residual: float | None = None
    condition: float | None = None
    sweeps: int | None = None
    methods: dict[str, Any] | None = None
    output: str | None = None
    replaced: int | None = None
    blocks: tuple[str, ...] | None = None
    compare: tuple[tuple[str, str], ...] = ()
    exact_bn: bool | None = None
    bn: bool | None = None
    act: str | None = None
    new_bn: tuple[str, ...] = ()
    # the tensors this morph created (names the parent lacks, or same-shape tensors whose
    # values it changed): what ``growth.new_parameters`` trains as new; None in entries
    # written before netmorph recorded it
    added: tuple[str, ...] | None = None
    calibration: Calibration | None = None
    # a module's inner widths at this layer and how they were chosen (fixed, "Nx" of the
    # layer's output channels, or "auto" from the feasibility bound + margin); None in
    # entries written before netmorph recorded them
    widths: dict[str, int] | None = None
    widths_how: str | None = None

    _TUPLES: ClassVar[frozenset[str]] = frozenset({"blocks", "new_bn", "added"})

    @property
    def name(self) -> str:
        """What was morphed in: the preset, the module, else the op."""
        return self.preset or self.module or self.op

    @property
    def where(self) -> str:
        """Where it went: the layer replaced, ``after NODE``, ``N blocks`` or ``all``."""
        if self.after is not None:
            return f"after {self.after}"
        return self.at or (f"{len(self.blocks)} blocks" if self.blocks is not None else "all")

    @classmethod
    def _field(cls, key: str, v: Any) -> Any:
        if key == "compare":
            return tuple((a, b) for a, b in v)
        if key == "calibration":
            return Calibration._parse(v)
        return super()._field(key, v)

    @classmethod
    def from_json(cls, entry: Any) -> MorphRecord:
        check_entry(entry)
        if entry.get("op") not in MORPH_OPS:
            raise NetworkError(f"history entry: not a morph ('op' {short(entry.get('op'))})")
        return cls._parse(entry)


@dataclass(frozen=True, kw_only=True)
class TrainRecord(_Keyed):
    """A training (``train.py``): the ``dataset``, its ``config``, ``epochs_run`` on
    ``world_size`` processes, the last ``test_error``, ``seconds`` in all and one record per
    epoch (``metrics``: objects with numeric ``test_error`` and ``train_error``, kept as
    found)."""

    op: str = "train"
    dataset: str | None = None
    config: dict[str, Any] | None = None
    epochs_run: int | None = None
    world_size: int | None = None
    test_error: float | None = None
    seconds: float | None = None
    metrics: tuple[dict[str, Any], ...] = ()

    @classmethod
    def _field(cls, key: str, v: Any) -> Any:
        return tuple(copy.deepcopy(v)) if key == "metrics" else super()._field(key, v)

    @classmethod
    def from_json(cls, entry: Any) -> TrainRecord:
        check_entry(entry)
        if entry.get("op") != "train":
            raise NetworkError(f"history entry: not a training ('op' {short(entry.get('op'))})")
        return cls._parse(entry)


@dataclass(frozen=True)
class UnknownRecord:
    """An entry of an op this netmorph does not know (or none), kept verbatim."""

    data: Mapping[str, Any]

    @property
    def op(self) -> str | None:
        op = self.data.get("op")
        return op if isinstance(op, str) else None

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.data))

    @classmethod
    def from_json(cls, entry: Any) -> UnknownRecord:
        check_entry(entry)
        return cls(copy.deepcopy(entry))


Record = MorphRecord | TrainRecord | UnknownRecord


def parse_entry(entry: Any, where: str = "history entry") -> Record:
    """The record of one history entry (``NetworkError`` on a bad known field)."""
    check_entry(entry, where)
    op = entry.get("op")
    if op in MORPH_OPS:
        return MorphRecord._parse(entry)
    if op == "train":
        return TrainRecord._parse(entry)
    return UnknownRecord(copy.deepcopy(entry))


def parse_history(history: Any) -> list[Record]:
    """The records of a history: a list of objects whose known fields have the types their
    records need (``NetworkError`` naming the entry and the field)."""
    if not isinstance(history, list):
        raise NetworkError(f"the history must be a list of entries, got {_kind(history)}")
    return [parse_entry(entry, f"history entry #{i}") for i, entry in enumerate(history, 1)]


def records_json(records: list[Record]) -> list[dict[str, Any]]:
    """The JSON history of ``records`` (what a checkpoint stores)."""
    return [r.to_json() for r in records]
