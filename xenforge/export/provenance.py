"""An in-toto Statement with a SLSA v1 provenance predicate for an export
(``provenance.intoto.json``): each artifact's sha256 as a subject, and for the build the
recipe, its pinned sources and patches, and every node that made something - its id,
stage and stage version, options digest, the ids of its inputs, the hashes of its files
and the buildroot it ran in."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from xenforge import __version__
from xenforge.build.executor import NodeResult
from xenforge.core.hashing import sha256_file, sha256_json
from xenforge.plan.graph import Graph

PROVENANCE = "provenance.intoto.json"
BUILD_TYPE = "https://xenforge.invalid/provenance/build/v1"


def write_provenance(dest: Path, graph: Graph, results: dict[str, NodeResult],
                     artifacts: list[Any], *, recipe: str, recipe_file: Path | None,
                     epoch: int, started: float, finished: float) -> Path:
    made_by = {a.path.as_posix(): a.node for a in artifacts}
    nodes = []
    for node in graph.nodes.values():
        res = results.get(node.name)
        inputs = {label: graph.nodes[ref].id if isinstance(ref, str)
                  else [graph.nodes[r].id for r in ref] for label, ref in node.inputs.items()}
        buildroot = node.inputs.get("buildroot")
        nodes.append({
            "name": node.name, "id": node.id, "stage": node.stage, "version": node.version,
            "status": res.status if res else "not needed",
            "options_sha256": sha256_json(node.options), "inputs": inputs,
            "files": node.file_hashes,
            "buildroot": graph.nodes[buildroot].id if isinstance(buildroot, str)
            and buildroot in graph.nodes else None,
            "environment": node.env.to_json() if node.env else None,
        })
    dependencies = []
    for node in graph.nodes.values():
        res = results.get(node.name)
        if node.stage != "source" or res is None or res.out is None:
            continue
        info = json.loads((res.out / "source.json").read_text())
        for f in info.get("files", []):
            dependencies.append({"name": f.get("name"), "uri": info.get("url") or
                                 f"xenforge:{node.name}", "digest": {"sha256": f.get("sha256")}})
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": a.path.as_posix(), "digest": {"sha256": a.sha256}}
                    for a in artifacts],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "recipe": recipe,
                    "recipe_sha256": sha256_file(recipe_file) if recipe_file else None},
                "internalParameters": {"SOURCE_DATE_EPOCH": epoch},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": f"https://xenforge.invalid/builder/xenforge@{__version__}"},
                "metadata": {
                    "startedOn": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                    "finishedOn": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)),
                },
                "byproducts": [{"name": "nodes", "content": None,
                                "annotations": {"nodes": nodes, "artifacts": made_by}}],
            },
        },
    }
    path = dest / PROVENANCE
    path.write_text(json.dumps(statement, indent=1, sort_keys=True) + "\n")
    return path
