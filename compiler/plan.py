"""The Plan: a complete, JSON-serialisable, hashed description of what a run executes.

The hash is taken over the plan's normal form, where every file reference is replaced by the
sha256 of its content. So the same spec written as `.pcert` or as YAML, anywhere on disk, gives
the same hash, and editing a model or data file changes it. Provenance (file paths, spec text
hash, output folder) is recorded but kept out of the hash.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

PLAN_VERSION = 1


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    plan_version: int = PLAN_VERSION
    meaning: dict[str, Any]       # hashed: normalised spec, model, data, schedule, sweep, work
    provenance: dict[str, Any]    # not hashed: spec path and text sha256, absolute file paths, output
    hash: str

    @property
    def spec(self) -> dict[str, Any]:
        return self.meaning["spec"]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.model_validate_json(text)

    def write(self, path: Path) -> Path:
        """Write atomically (temporary name, then rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)
        return path


def canonical_json(value: Any) -> str:
    """Normal form used for hashing: sorted keys, no whitespace, floats via repr."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def plan_hash(meaning: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    digest.update(f"pcert-plan-v{PLAN_VERSION}\n".encode())
    digest.update(canonical_json(meaning).encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
