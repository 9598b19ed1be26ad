"""``.gitlab-ci.yml`` for a :class:`~xenforge.pipelines.jobs.Pipeline`: a ``build`` stage of
jobs linked by ``needs``, a ``release`` stage whose jobs export (and test) each recipe,
with the artifacts and JUnit reports attached. Only pipelines of protected branches
write the remote cache; merge requests and other branches read it."""

from __future__ import annotations

from typing import Any

import yaml

from xenforge.pipelines.jobs import Pipeline

BASE = ".xenforge"


def render(pipe: Pipeline, *, header: str, tags: list[str], image: str | None) -> str:
    variables: dict[str, str] = {"XENFORGE": pipe.command,
                                 # each job's own local cache: the jobs share the remote one
                                 "XENFORGE_CACHE_DIR": "$CI_PROJECT_DIR/.xenforge-cache"}
    if pipe.remote_cache:
        variables["XENFORGE_REMOTE_CACHE"] = pipe.remote_cache
    base: dict[str, Any] = {}
    if image:
        base["image"] = image
    if tags:
        base["tags"] = tags
    before = []
    if not pipe.remote_cache:
        before.append('test -n "$XENFORGE_REMOTE_CACHE" || { echo "set the CI/CD variable '
                      'XENFORGE_REMOTE_CACHE to the shared cache URL" >&2; exit 1; }')
    if pipe.setup:
        before.append(pipe.setup)
    if before:
        base["before_script"] = before
    doc: dict[str, Any] = {
        # only pipelines of protected branches write the cache (give the credentials as
        # protected variables too: the server decides in the end)
        "workflow": {"rules": [
            {"if": '$CI_PIPELINE_SOURCE == "merge_request_event"',
             "variables": {"XENFORGE_REMOTE_CACHE_READ_ONLY": "1"}},
            {"if": '$CI_COMMIT_REF_PROTECTED != "true"',
             "variables": {"XENFORGE_REMOTE_CACHE_READ_ONLY": "1"}},
            {"when": "always"}]},
        "variables": variables,
        "stages": ["build", "release"],
        BASE: base,
    }
    for job in pipe.jobs:
        entry: dict[str, Any] = {"extends": BASE,
                                 "stage": "release" if job.recipe else "build",
                                 "needs": list(job.needs),
                                 "script": [pipe.script(job)]}
        if job.recipe:
            out = f"out/{job.recipe}/"
            artifacts: dict[str, Any] = {"when": "always", "paths": [out]}
            if job.test:
                artifacts["reports"] = {"junit": f"{out}test-results/*.xml"}
            entry["artifacts"] = artifacts
        doc[job.name] = entry
    return header + yaml.safe_dump(doc, sort_keys=False, width=100)
