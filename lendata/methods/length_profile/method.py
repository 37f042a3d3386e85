"""The `length_profile` method's contract: prompts sharded, every listed model sampled on each shard; the
profiles computed on the driver; a report with the length distribution per prompt and per model."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lendata.methods.base import Build, Method, Progress, ReportSection, Split
from lendata.methods.length_profile import profile as lp
from lendata.methods.shared.inputs import load_instructions
from lendata.methods.shared.model_list import open_models
from schemas.length_profile import ProfilesSchema, SamplesSchema

# option names that hold credentials: withheld from the recorded settings (tokenizer, max_tokens are kept)
_SECRET = re.compile(r"key|secret|password|auth|(^|_)token$", re.IGNORECASE)


def sample_shard(s: lp.Settings, rows: Sequence[dict[str, Any]], offset: int, engines: Any, progress: Progress
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """One shard: every model samples every prompt of the shard. Returns (samples, failures, settings by label)."""
    samples, failed, used = [], [], {}
    for label, name, options, engine in open_models(s.models, engines):
        with progress(len(rows) * s.samples, f"sampling {label}") as bar:
            got, bad = lp.sample(rows, engine, label, s, offset, bar.update)
        samples += got
        failed += bad
        used[label] = {"engine": name, "model": engine.model_id,
                       "engine_options": {k: v for k, v in options.items() if not _SECRET.search(k)}}
    return samples, failed, used


class LengthProfile(Method):
    name = "length_profile"
    settings = lp.Settings
    sharded = True
    card_tasks = ("text-generation",)
    card_tags = ("length-profile", "castillo")
    main_split = "profiles"

    def splits(self, s: lp.Settings) -> dict[str, Split]:
        return {"profiles": Split(lp.PROFILES_SCHEMA, ProfilesSchema),
                "samples": Split(lp.SAMPLES_SCHEMA, SamplesSchema)}

    def run(self, s: lp.Settings, build: Build) -> None:
        rows = load_instructions(s, build)
        done = build.map(sample_shard, rows, "length_profile")
        samples = [r for got, _, _ in done for r in got]
        failed = [q for _, bad, _ in done for q in bad]
        settings = {label: v for _, _, used in done for label, v in used.items()}
        build.quarantine(failed)
        failed_records = [json.loads(q["record"]) for q in failed]
        failed_per = Counter((r["prompt_id"], r["model_label"]) for r in failed_records)
        profiles = lp.profiles(samples, s, settings, dict(failed_per))
        build.meta["length_profile"] = {
            "decoding": s.decoding(), "models": settings,
            "prompts": {p["prompt_id"]: p["prompt"][:120] for p in profiles},
            # each (prompt, model)'s token lengths: what the report draws
            "tokens": {label: {p["prompt_id"]: sorted(r["tokens"] for r in samples if r["model_label"] == label
                                                      and r["prompt_id"] == p["prompt_id"])
                               for p in profiles if p["model_label"] == label} for label in settings},
        }
        sample_table, profile_table = lp.tables(samples, profiles)
        build.add("samples", sample_table)
        build.add("profiles", profile_table)

    def report(self, manifest: dict[str, Any], folder: Path) -> ReportSection | None:
        from lendata.methods.length_profile.report import section

        return section(manifest, folder) if "length_profile" in manifest else None


METHOD = LengthProfile()

