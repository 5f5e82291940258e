"""The example of docs/testing.md, run as written, so the documentation cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DOC = Path(__file__).parents[3] / "docs" / "testing.md"
EXAMPLE = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
assert EXAMPLE is not None
exec(compile(EXAMPLE.group(1), str(DOC), "exec"))  # defines test_p2p_transfer
