"""-k as pytest reads it: a parsed expression, never eval, only ValueError for a bad one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storeharness.harness._keyword import compile_keyword
from storeharness.harness.run import keyword_match

ID = "sigint_during_wait[tcp-process-8]"


@pytest.mark.parametrize(
    ("expr", "selected"),
    [
        ("", True),
        ("sigint", True),
        ("SIGINT and TCP-process", True),
        ("sigint and not tcp", False),
        ("(missing or sigint) and process-8", True),
        ("not (missing or hash)", True),
        ("not not sigint", True),
        ("wait[tcp", True),
    ],
)
def test_words_combine_as_in_pytest(expr: str, selected: bool) -> None:
    assert keyword_match(expr, ID) is selected


@pytest.mark.parametrize(
    ("expr", "where"),
    [
        ("a (b)", "at column 3, expected 'and', 'or' or the end of the expression; got '('"),
        ("and (", "at column 1, expected a word, 'not' or '('; got 'and'"),
        ("(sigint", "at column 8, expected ')'; got the end of the expression"),
        ("sigint or", "at column 10, expected a word"),
        ("a b", "got 'b'"),
        ("(" * 500 + "a" + ")" * 500, "at most 100 nested"),
    ],
)
def test_a_malformed_expression_says_where_and_what_was_expected(expr: str, where: str) -> None:
    with pytest.raises(ValueError, match="is not a valid expression") as info:
        keyword_match(expr, ID)
    assert where in str(info.value)


PIECES = st.sampled_from(["a", "b", " ", "(", ")", "and", "or", "not", "[", "\t", "é"])


@given(st.lists(PIECES, max_size=30).map(" ".join) | st.text(max_size=30))
def test_any_expression_parses_or_raises_value_error_and_matching_never_raises(
    expr: str,
) -> None:
    try:
        matches = compile_keyword(expr)
    except ValueError:
        return
    assert matches(ID) in (True, False)
