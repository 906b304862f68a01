"""The pure AMI wire codec: framing, parsing and encoding, with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbxcal.errors import UnsafeValue
from pbxcal.pbx.ami.codec import (
    MAX_MESSAGE_BYTES,
    Message,
    MessageParser,
    ProtocolError,
    encode_action,
    parse_message,
)

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
names = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,20}", fullmatch=True)
# Values as Asterisk sends them: no CR/LF, no surrounding blanks (the parser strips).
values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=30
).map(str.strip)
messages = st.lists(st.tuples(names, values), min_size=1, max_size=6)


def wire(fields: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in fields).encode() + b"\r\n"


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[Message]:
    parser = MessageParser()
    out: list[Message] = []
    last = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        out += parser.feed(data[last:cut])
        last = cut
    out += parser.feed(data[last:])
    return out


@given(st.lists(messages, max_size=5), st.lists(st.integers(0, 10_000), max_size=20))
def test_any_split_of_the_stream_gives_the_same_messages(
    blocks: list[list[tuple[str, str]]], cuts: list[int]
) -> None:
    data = BANNER + b"".join(wire(b) for b in blocks)
    whole = MessageParser().feed(data)
    assert [list(m.fields) for m in whole] == blocks
    assert feed_in_pieces(data, cuts) == whole


@given(names, st.text(st.characters(whitelist_categories=("Nd", "Ll")), max_size=10), messages)
def test_encoded_actions_parse_back(action: str, action_id: str,
                                    fields: list[tuple[str, str]]) -> None:
    raw = encode_action(action, action_id, fields)
    assert raw.endswith(b"\r\n\r\n") and raw.count(b"\r\n\r\n") == 1
    parsed = parse_message(raw[:-4])
    assert list(parsed.fields) == [("Action", action), ("ActionID", action_id.strip()), *fields]


@given(values, st.sampled_from(["\r", "\n", "\x00", "\r\n\r\nAction: Originate"]), values)
def test_a_line_break_in_any_value_is_refused(before: str, bad: str, after: str) -> None:
    value = before + bad + after
    for fields in ([("Val", value)], [("Key", "fwd/1"), ("Val", value)]):
        with pytest.raises(UnsafeValue):
            encode_action("DBPut", "1", fields)
    with pytest.raises(UnsafeValue):
        encode_action("DBPut", value, {})


@pytest.mark.parametrize("name", ["", "Val ue", "Val:", "Val\r\nAction", "Ä" * 3, "x" * 65])
def test_header_names_must_be_plain(name: str) -> None:
    with pytest.raises(UnsafeValue):
        encode_action("DBPut", "1", {name: "1"})
    with pytest.raises(UnsafeValue):
        encode_action(name or "-bad name", "1", {})


def test_message_accessors_and_duplicates() -> None:
    msg = parse_message(b"Response: Error\r\nActionID: a.1\r\nMessage: Nope\r\nMessage: two\r\n"
                        b"Contacts: \r\nno colon here")
    assert (msg.response, msg.action_id, msg.message, msg.event) == ("Error", "a.1", "Nope", "")
    assert msg.get("Contacts") == "" and "Contacts" in msg and "Missing" not in msg
    assert ("", "no colon here") in msg.fields
    assert msg.get("Missing", "x") == "x"


def test_banner_is_required_and_read() -> None:
    parser = MessageParser()
    assert parser.feed(b"Asterisk Call") == [] and parser.version is None
    assert parser.feed(b" Manager/11.0.0\r\nResponse: Success\r\n\r\n")[0].response == "Success"
    assert parser.version == "11.0.0"
    with pytest.raises(ProtocolError):
        MessageParser().feed(b"SSH-2.0-OpenSSH_9.2\r\n")
    with pytest.raises(ProtocolError):
        MessageParser().feed(b"HTTP/1.1 400")


def test_an_endless_message_is_an_error_not_a_leak() -> None:
    parser = MessageParser()
    parser.feed(BANNER)
    with pytest.raises(ProtocolError):
        for _ in range(MAX_MESSAGE_BYTES // 65536 + 2):
            parser.feed(b"Val: " + b"x" * 65536 + b"\r\n")
