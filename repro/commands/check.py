"""What every front end runs for one spec: record it, verify it, or verify it segment by
segment (`Options.segments`). Here, not in the pipeline, so that the pipeline imports no
command and no executor."""
from __future__ import annotations

from repro import pipeline
from repro.commands.segments import replay_segments
from repro.verdict import Verdict


def check(spec_ref: pipeline.SpecRef, options: pipeline.Options | None = None, *,
          record_it: bool = False) -> Verdict:
    """Record (`record_it`), verify, or verify by segments when `options.segments` asks."""
    if record_it:
        return pipeline.record(spec_ref, options)
    if options and options.segments:
        return replay_segments(spec_ref, options)
    return pipeline.verify(spec_ref, options)
