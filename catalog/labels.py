"""A stable label encoder: classes keep their index forever, new classes are appended."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from core.files import write_atomic

FORMAT_VERSION = 1


class LabelEncoder:
    """Maps category names to class indices and back.

    Unlike sklearn's LabelEncoder the mapping never re-sorts: a class, once added, keeps its index, so a
    model trained on an older catalogue still decodes correctly after new categories appear.
    """

    def __init__(self, classes: Iterable[str] = ()):
        self._classes: list[str] = []
        self._index: dict[str, int] = {}
        self.extend(classes)

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelEncoder) and other._classes == self._classes

    def __repr__(self) -> str:
        return f"LabelEncoder({self._classes!r})"

    def extend(self, new_classes: Iterable[str]) -> LabelEncoder:
        """Append classes not yet known, in the order given (callers pass them sorted)."""
        for name in new_classes:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"class names must be non-empty strings, got {name!r}")
            if name not in self._index:
                self._index[name] = len(self._classes)
                self._classes.append(name)
        return self

    def encode(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(
                f"unknown class {name!r}; known classes: {self._classes}. "
                "Add it with LabelEncoder.extend([...]) (ingest does this for new categories)."
            ) from None

    def encode_many(self, names: Iterable[str]) -> np.ndarray:
        return np.asarray([self.encode(n) for n in names], dtype=np.int64)

    def decode(self, index: int) -> str:
        if isinstance(index, bool) or not 0 <= int(index) < len(self._classes):
            raise IndexError(f"class index {index!r} out of range 0..{len(self._classes) - 1}")
        return self._classes[int(index)]

    def decode_many(self, indices: Iterable[int]) -> list[str]:
        return [self.decode(i) for i in indices]

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "classes": list(self._classes)}

    @classmethod
    def from_dict(cls, data: dict) -> LabelEncoder:
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
            raise ValueError(f"label encoder JSON must be an object with a 'classes' list, got {data!r:.200}")
        classes = data["classes"]
        if len(set(classes)) != len(classes):
            raise ValueError(f"label encoder JSON has duplicate classes: {classes}")
        return cls(classes)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + os.replace)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> LabelEncoder:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no label encoder at {path}; run `marketsearch ingest` first to create it")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
