"""Project-wide pytest set-up.

Hypothesis runs under the `repro-ci` profile (no deadline, derandomized) unless
`REPRO_HYPOTHESIS_PROFILE=repro-nightly` asks for the larger nightly one (docs/gradients.md).
The repro plugin itself (spec items, `repro_verify`, `gradcheck`) loads through its `pytest11`
entry point, as it does for users.
"""
from repro.strategies import load_profile

load_profile()
