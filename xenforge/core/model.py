"""The frozen base model shared by source specs and stage options: strict (unknown keys are
errors), immutable and JSON-serialisable, so that its canonical JSON can be hashed into node
ids. Neutral ground: it imports nothing of xenforge."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FrozenModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
