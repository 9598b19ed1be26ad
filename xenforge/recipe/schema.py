"""The recipe JSON Schema for editors, true to how recipes are loaded.

pydantic's schema describes a complete, merged recipe. A file on disk is less: it may be one
layer of an ``extends`` chain (so a section may lack fields its base provides) and any
``key:`` may be empty or null ("not set", or "drop the inherited value"). The schema is
adjusted so every file the loader accepts is valid to an editor, while unknown keys and
wrong types are still flagged. Path existence and cross-field rules need ``xenforge
validate``.
"""

from __future__ import annotations

from typing import Any

from xenforge.recipe.load import REPLACED_WHOLE
from xenforge.recipe.model import Recipe

NULL = {"type": "null"}


def recipe_schema() -> dict[str, Any]:
    schema = Recipe.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema.get("$defs", {})
    partial_defs: set[str] = set()
    _walk(schema, True, defs, partial_defs, set())
    for name in partial_defs:
        defs[name].pop("required", None)
    # a file states its format version, unless it extends one that does
    schema.pop("required", None)
    schema["anyOf"] = [{"required": ["schema"]}, {"required": ["extends"]}]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "xenforge recipe"
    return schema


def _nullable(sub: dict[str, Any]) -> dict[str, Any]:
    if sub.get("type") == "null" or NULL in sub.get("anyOf", []):
        return sub
    meta: dict[str, Any] = {k: sub.pop(k) for k in ("title", "description", "default")
                            if k in sub}
    return {"anyOf": [sub, NULL], **meta}


def _walk(node: Any, partial: bool, defs: dict[str, Any], partial_defs: set[str],
          seen: set[tuple[str, bool]]) -> None:
    """Mark the object schemas that may be partial (reached through merged mappings, not
    through lists or whole-replaced keys) and let every mapping value be null."""
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        if partial:
            partial_defs.add(name)
        if (name, partial) not in seen:
            seen.add((name, partial))
            _walk(defs[name], partial, defs, partial_defs, seen)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in node.get(key, []):
            _walk(sub, partial, defs, partial_defs, seen)
    props = node.get("properties", {})
    for key in list(props):
        _walk(props[key], partial and key not in REPLACED_WHOLE, defs, partial_defs, seen)
        props[key] = _nullable(props[key])
    pattern_props = node.get("patternProperties", {})
    for key in list(pattern_props):
        _walk(pattern_props[key], partial, defs, partial_defs, seen)
        pattern_props[key] = _nullable(pattern_props[key])
    if pattern_props:
        node.setdefault("additionalProperties", False)  # keys must be valid names
    if "items" in node:
        _walk(node["items"], False, defs, partial_defs, seen)  # lists are replaced whole
