"""The commands built on the pipeline: `check` (what every front end runs per spec), audit,
bisect (and `--env`), calibrate, init, pin, resume checks, segment replay. Each calls
`repro.pipeline`; the pipeline imports none of them."""
