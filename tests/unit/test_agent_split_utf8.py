"""Splitting log text into chunks that fit a byte limit (agent.workload_commands.split_utf8)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.agent.workload_commands import split_utf8
from harmony_fleet.contracts import MAX_LOG_CHUNK_BYTES

from .strategies import PROPERTY

#: Characters of every UTF-8 length: 1 (ASCII), 2 (é), 3 (€, 中), 4 (emoji, 𝄞).
MIXED = "aé€中😀𝄞\n\t"
_texts = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=MIXED, max_size=200),
    st.text(alphabet=st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF,
                                   exclude_categories=("Cs",)), max_size=50),
)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


class TestExamples:
    def test_empty_text_gives_no_pieces(self) -> None:
        assert list(split_utf8("", 10)) == []

    def test_short_text_is_one_piece(self) -> None:
        assert list(split_utf8("hello", 5)) == ["hello"]
        assert list(split_utf8("hello", 100)) == ["hello"]

    def test_ascii_is_split_at_the_limit(self) -> None:
        assert list(split_utf8("abcdefgh", 3)) == ["abc", "def", "gh"]
        assert list(split_utf8("abcdef", 3)) == ["abc", "def"]

    def test_multibyte_characters_stay_whole(self) -> None:
        # "é" is 2 bytes: "aé" = 3, another "é" would make 5 > 4
        assert list(split_utf8("aééé", 4)) == ["aé", "éé"]
        assert list(split_utf8("€€€", 4)) == ["€", "€", "€"]  # 3 + 3 > 4
        assert list(split_utf8("€€€", 6)) == ["€€", "€"]

    def test_emoji_stay_whole(self) -> None:
        assert list(split_utf8("😀😀", 4)) == ["😀", "😀"]
        assert list(split_utf8("a😀b", 4)) == ["a", "😀", "b"]
        assert list(split_utf8("a😀b", 5)) == ["a😀", "b"]
        assert list(split_utf8("😀😀😀", 7)) == ["😀", "😀", "😀"]
        assert list(split_utf8("😀😀😀", 8)) == ["😀😀", "😀"]
        for piece in split_utf8("x😀" * 100, 5):
            piece.encode("utf-8")  # every piece is valid UTF-8 on its own
            assert utf8_len(piece) <= 5

    def test_character_bigger_than_the_limit_gets_its_own_piece(self) -> None:
        # cannot fit and cannot be split: one oversize piece, never an empty one
        assert list(split_utf8("a😀b", 2)) == ["a", "😀", "b"]
        assert list(split_utf8("ab", 0)) == ["a", "b"]

    def test_is_lazy(self) -> None:
        pieces = split_utf8("ab" * 10, 2)
        assert next(iter(pieces)) == "ab"

    def test_log_chunk_limit(self) -> None:
        text = "log line 😀 é\n" * 5000
        pieces = list(split_utf8(text, MAX_LOG_CHUNK_BYTES))
        assert "".join(pieces) == text
        assert all(utf8_len(p) <= MAX_LOG_CHUNK_BYTES for p in pieces)
        assert len(pieces) > 1
        # greedy: every piece but the last is full to within one character
        assert all(utf8_len(p) > MAX_LOG_CHUNK_BYTES - 4 for p in pieces[:-1])

    @pytest.mark.parametrize("limit", [4, 5, 6, 7, 8])
    def test_mixed_exhaustive_small(self, limit: int) -> None:
        text = MIXED * 3
        pieces = list(split_utf8(text, limit))
        assert "".join(pieces) == text
        assert all(0 < utf8_len(p) <= limit for p in pieces)


class TestProperties:
    @PROPERTY
    @given(text=_texts, limit=st.integers(min_value=0, max_value=64))
    def test_joining_gives_the_text_back(self, text: str, limit: int) -> None:
        assert "".join(split_utf8(text, limit)) == text

    @PROPERTY
    @given(text=_texts, limit=st.integers(min_value=0, max_value=64))
    def test_no_empty_pieces(self, text: str, limit: int) -> None:
        pieces = list(split_utf8(text, limit))
        assert all(pieces)
        assert (pieces == []) == (text == "")

    @PROPERTY
    @given(text=_texts, limit=st.integers(min_value=4, max_value=64))
    def test_every_piece_fits(self, text: str, limit: int) -> None:
        for piece in split_utf8(text, limit):
            assert utf8_len(piece) <= limit

    @PROPERTY
    @given(text=_texts, limit=st.integers(min_value=0, max_value=64))
    def test_only_single_characters_may_exceed_the_limit(self, text: str, limit: int) -> None:
        for piece in split_utf8(text, limit):
            assert utf8_len(piece) <= limit or len(piece) == 1

    @PROPERTY
    @given(text=_texts, limit=st.integers(min_value=4, max_value=64))
    def test_greedy_pieces_are_maximal(self, text: str, limit: int) -> None:
        pieces = list(split_utf8(text, limit))
        for piece, following in itertools.pairwise(pieces):
            # the next piece's first character did not fit into this one
            assert utf8_len(piece + following[0]) > limit

    @PROPERTY
    @given(text=_texts, limit=st.integers(min_value=4, max_value=64))
    def test_bytes_concatenate_to_the_encoding(self, text: str, limit: int) -> None:
        encoded = [p.encode("utf-8") for p in split_utf8(text, limit)]
        assert b"".join(encoded) == text.encode("utf-8")
