"""``python -m bench``'s command line parses with no part given (the wide runs give none)."""
from __future__ import annotations

import pytest

from bench.__main__ import build_parser


@pytest.mark.parametrize(("argv", "part"), [
    (["--sweep", "20x1000", "--calls", "2"], "all"),
    (["--wide"], "all"),
    ([], "all"),
    (["online", "historical"], ["online", "historical"]),
])
def test_parts_default_to_all_and_keep_their_order(argv, part):
    assert build_parser().parse_args(argv).part == part


def test_an_unknown_part_is_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["nonsense"])
