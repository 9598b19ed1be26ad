"""A GitHub Actions workflow for a :class:`~xenforge.pipelines.jobs.Pipeline`: the same jobs
and ``needs`` as the GitLab pipeline; the release jobs upload the artifacts (and JUnit
reports). Only pushes to the default branch write the remote cache; pull requests and
other branches read it (and pull requests from forks get no secrets)."""

from __future__ import annotations

from typing import Any

import yaml

from xenforge.pipelines.jobs import Pipeline

CHECKOUT = "actions/checkout@v4"
UPLOAD = "actions/upload-artifact@v4"


def render(pipe: Pipeline, *, header: str, runs_on: list[str]) -> str:
    env: dict[str, str] = {
        "XENFORGE": pipe.command,
        "XENFORGE_CACHE_DIR": ".xenforge-cache",  # each job's own: the remote is shared
        "XENFORGE_REMOTE_CACHE": pipe.remote_cache or "${{ secrets.XENFORGE_REMOTE_CACHE }}",
        "XENFORGE_REMOTE_CACHE_USER": "${{ secrets.XENFORGE_REMOTE_CACHE_USER }}",
        "XENFORGE_REMOTE_CACHE_PASSWORD": "${{ secrets.XENFORGE_REMOTE_CACHE_PASSWORD }}",
        # only pushes to the default branch write the cache
        "XENFORGE_REMOTE_CACHE_READ_ONLY":
            "${{ (github.event_name == 'push' && github.ref == format('refs/heads/{0}', "
            "github.event.repository.default_branch)) && '0' || '1' }}",
    }
    jobs: dict[str, Any] = {}
    slugs: dict[str, str] = {}
    for job in pipe.jobs:  # job ids: unique identifiers
        slug, n = job.slug, 2
        while slug in slugs.values():
            slug, n = f"{job.slug}-{n}", n + 1
        slugs[job.name] = slug
    for job in pipe.jobs:
        steps: list[dict[str, Any]] = [{"uses": CHECKOUT}]
        if pipe.setup:
            steps.append({"name": "set up xenforge", "run": pipe.setup})
        steps.append({"name": "build" if not job.recipe else
                      f"export{' and test' if job.test else ''} {job.recipe}",
                      "run": pipe.script(job)})
        if job.recipe:
            steps.append({"name": "artifacts", "if": "always()", "uses": UPLOAD,
                          "with": {"name": slugs[job.name], "path": f"out/{job.recipe}/",
                                   "if-no-files-found": "error"}})
        entry: dict[str, Any] = {"name": job.name,
                                 "runs-on": runs_on[0] if len(runs_on) == 1 else runs_on}
        if job.needs:
            entry["needs"] = [slugs[n] for n in job.needs]
        entry["steps"] = steps
        jobs[slugs[job.name]] = entry
    doc = {"name": "xenforge", "on": {"push": None, "pull_request": None,
                                      "workflow_dispatch": None},
           "env": env, "jobs": jobs}
    text = yaml.safe_dump(doc, sort_keys=False, width=100)
    return header + text.replace("push: null", "push:").replace(
        "pull_request: null", "pull_request:").replace("workflow_dispatch: null",
                                                       "workflow_dispatch:")
