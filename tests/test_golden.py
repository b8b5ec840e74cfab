"""The bundled models decode exactly the pinned golden tokens (see tests/golden.py for why and how)."""
from __future__ import annotations

import json

import pytest

from tests.golden import CASES, PATH, decode_case

GOLDEN = json.loads(PATH.read_text())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bundled_model_decodes_golden_tokens(case):
    assert decode_case(case) == GOLDEN[case[0]]
