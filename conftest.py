"""Project-wide pytest set-up.

Hypothesis runs under the `repro-ci` profile (no deadline, derandomized) unless
`REPRO_HYPOTHESIS_PROFILE=repro-nightly` asks for the larger nightly one (docs/gradients.md).
The repro plugin itself (spec items, `repro_verify`, `gradcheck`) loads through its `pytest11`
entry point, as it does for users.
"""
from repro.strategies import load_profile

load_profile()

# The project's own specs are test items too (specs/); the longest retrainings join the tests
# marked `slow`, so that `pytest -m "not slow"` stays a quick loop. The full run keeps them.
SLOW_SPECS = {"tiny-lm", "flax-digits-mlp"}


def pytest_collection_modifyitems(items):
    import pytest

    for item in items:
        if item.name in SLOW_SPECS and item.get_closest_marker("repro") is not None:
            item.add_marker(pytest.mark.slow)
