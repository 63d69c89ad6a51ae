"""A data source as a value: "tfds:NAME" or "folder:PATH", parsed once.

Run folders, the job board and session state keep the text; code that needs its kind or its name parses it
here instead of slicing the string. core.data.sources opens one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

TFDS = "tfds"
FOLDER = "folder"


@dataclass(frozen=True)
class Source:
    """kind: what comes before the first colon ("tfds", "folder", or anything else a user typed; "" when the
    text has no kind); value: the rest, a TFDS name or a folder's path. str() gives back the parsed text."""
    kind: str
    value: str

    @classmethod
    def parse(cls, text) -> Source:
        kind, colon, value = str(text).partition(":")
        if not colon or not kind:  # "cats_vs_dogs", ":x": no kind, and the whole text is the value
            return cls("", str(text))
        return cls(kind, value)

    @classmethod
    def tfds(cls, name: str) -> Source:
        return cls(TFDS, name)

    @classmethod
    def folder(cls, path) -> Source:
        return cls(FOLDER, str(path))

    @property
    def is_tfds(self) -> bool:
        return self.kind == TFDS

    @property
    def is_folder(self) -> bool:
        return self.kind == FOLDER

    @property
    def name(self) -> str:
        """The dataset's short name: the TFDS name, or the folder's own name ("folder:/data/pets/" -> "pets")."""
        if self.is_folder and self.value:
            return PurePath(self.value.rstrip("/\\")).name or self.value
        return self.value or str(self)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}" if self.kind else self.value
