"""Tokenizers: fixed ids, one id per character (or byte), unknowns kept, JSON round trips."""

import json

import pytest
from tokenizers import Tokenizer

from vdcnn_res.data.tokenizer import ALPHABET, KINDS, PAD_ID, UNK_ID, build_tokenizer, encode, load_tokenizer

# Characters that public VDCNN code maps wrongly: typographic quotes, CJK, emoji (one code
# point outside the BMP), a combining accent, NUL, tab, CR.
TRICKY = ["“quoted” ‘x’", "中文新闻", "emoji 😀!", "cafe\u0301", "a\x00b", "tab\there", "crlf\r\n", "<pad><unk>"]


def ids(tok: Tokenizer, text: str, max_length: int = 10_000) -> list[int]:
    return encode(tok, [text], max_length)[0]


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return build_tokenizer("char")


def test_char_vocabulary_is_the_paper_alphabet(char):
    vocab = char.get_vocab()
    assert vocab["<pad>"] == PAD_ID == 0 and vocab["<unk>"] == UNK_ID == 1
    assert len(ALPHABET) == 69 and ALPHABET.count("-") == 1 and "\n" in ALPHABET
    assert set(vocab) == {"<pad>", "<unk>", " ", *ALPHABET}
    assert char.get_vocab_size() == 72
    for c in "'\"^~`\\|":  # ASCII forms, which a PDF copy turns typographic
        assert ids(char, c) == [vocab[c]]


def test_char_lowercases_inside_the_tokenizer(char):
    restored = Tokenizer.from_str(char.to_str())
    assert json.loads(char.to_str())["normalizer"]["type"] == "Lowercase"
    assert ids(restored, "Hello WORLD") == ids(char, "hello world")
    upper = build_tokenizer("char", lowercase=False)
    assert ids(upper, "A") == [UNK_ID]


@pytest.mark.parametrize("text", TRICKY)
def test_char_maps_every_unknown_character_to_one_unk(char, text):
    out = ids(char, text)
    assert len(out) == len(text)  # nothing dropped, nothing merged: positions stay put
    vocab = char.get_vocab()
    for c, i in zip(text.lower(), out):
        assert i == vocab.get(c, UNK_ID)


def test_char_positions_around_unknowns(char):
    v = char.get_vocab()
    assert ids(char, "a中b") == [v["a"], UNK_ID, v["b"]]
    assert ids(char, "“hi”") == [UNK_ID, v["h"], v["i"], UNK_ID]


@pytest.mark.parametrize("kind", KINDS)
def test_special_token_text_is_encoded_as_characters(kind):
    tok = build_tokenizer(kind, ["<pad> <unk> abc"])
    out = ids(tok, "<pad><unk>")
    assert PAD_ID not in out and len(out) == len("<pad><unk>")


def test_char_round_trip(char):
    text = "Hello, World! 3.14 -- (a|b) {x} [y] <z> ~^`'\"\n"
    assert char.decode(ids(char, text)) == text.lower()


def test_learned_vocabulary_by_frequency_ties_by_code_point():
    tok = build_tokenizer("learned", ["ccc bb a", "cb"])
    vocab = tok.get_vocab()
    # c: 4, b: 3, space: 2, a: 1
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])] == ["<pad>", "<unk>", "c", "b", " ", "a"]
    assert ids(tok, "abcz") == [vocab["a"], vocab["b"], vocab["c"], UNK_ID]


def test_learned_max_vocab_min_frequency_and_case():
    texts = ["AAAA aaa bb c"]
    assert build_tokenizer("learned", texts, max_vocab=4).get_vocab_size() == 4
    assert set(build_tokenizer("learned", texts, min_frequency=3).get_vocab()) == {"<pad>", "<unk>", "A", "a", " "}
    folded = build_tokenizer("learned", texts, lowercase=True)
    assert "A" not in folded.get_vocab() and ids(folded, "A") == ids(folded, "a")
    assert ids(build_tokenizer("learned", texts), "A") != ids(build_tokenizer("learned", texts), "a")


def test_learned_chinese():
    train = ["体育新闻：中国队获胜", "财经新闻：股市上涨", "体育：中国"]
    tok = build_tokenizer("learned", train)
    vocab = tok.get_vocab()
    assert vocab["体"] >= 2 and vocab["中"] >= 2
    out = ids(tok, "中国足球")
    assert out[:2] == [vocab["中"], vocab["国"]] and out[2:] == [UNK_ID, UNK_ID]
    assert Tokenizer.from_str(tok.to_str()).encode("体育新闻").ids == ids(tok, "体育新闻")


def test_byte_ids_are_utf8_bytes_plus_two():
    tok = build_tokenizer("byte")
    assert tok.get_vocab_size() == 258
    for text in TRICKY:
        raw = text.encode("utf-8")
        out = ids(tok, text)
        assert out == [b + 2 for b in raw] and UNK_ID not in out
        assert tok.decode(out) == text


@pytest.mark.parametrize("kind", KINDS)
def test_truncation_is_a_prefix_of_the_full_encoding(kind):
    texts = ["The quick brown fox; 中文 😀 " * 20, "short", "", "x" * 5000]
    tok = build_tokenizer(kind, texts)
    for max_length in (1, 7, 64, 1024):
        full = encode(tok, texts, 100_000)
        cut = encode(tok, texts, max_length)
        assert cut == [f[:max_length] for f in full]


def test_encode_huge_text_and_empty_text(char):
    out = encode(char, ["a" * 1_000_000, ""], 1024)
    assert len(out[0]) == 1024 and out[1] == []


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_identical_ids(kind, tmp_path):
    texts = ["Hello World", *TRICKY, "Grüße aus Köln"]
    tok = build_tokenizer(kind, texts, lowercase=True)
    tok.save(str(tmp_path / "tokenizer.json"))
    expected = encode(tok, texts, 1024)
    for loaded in (
        Tokenizer.from_file(str(tmp_path / "tokenizer.json")),
        load_tokenizer(tmp_path / "tokenizer.json"),
        load_tokenizer(str(tmp_path)),
        load_tokenizer(tok.to_str()),
        Tokenizer.from_str(tok.to_str()),
    ):
        assert encode(loaded, texts, 1024) == expected
        assert loaded.to_str() == tok.to_str()


def test_user_errors(tmp_path):
    with pytest.raises(ValueError, match="char, learned, byte"):
        build_tokenizer("word")
    with pytest.raises(ValueError, match="needs the training texts"):
        build_tokenizer("learned")
    with pytest.raises(ValueError, match="only apply to the 'learned'"):
        build_tokenizer("char", max_vocab=100)
    with pytest.raises(ValueError, match="max_vocab"):
        build_tokenizer("learned", ["abc"], max_vocab=2)
    with pytest.raises(ValueError, match="got none"):
        build_tokenizer("learned", [])
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "missing.json")
