"""What runs inside the sandbox: the child process and everything `train(ctx)` touches.

Started as `python -m repro.child.runner JOB OUT` by both backends. It imports only the
standard library, numpy and jax (and, lazily, a script's output readers), plus the small shared
leaves (`repro.job`, `repro.ioutil`, `repro.paths`, `repro.proctree`, `repro.env.isa`,
`repro.env.fingerprint`): no pydantic, no PyYAML, no docker in an image.
"""
