"""gRPC metadata through the proxy: binary (-bin) values between agents."""

from __future__ import annotations

from meridian.invocation.model import metadata_text, metadata_wire


def test_binary_metadata_travels_as_base64_and_comes_back_as_bytes() -> None:
    raw = bytes(range(256))
    text = metadata_text("x-trace-bin", raw)
    assert isinstance(text, str) and metadata_wire("x-trace-bin", text) == raw
    # Unpadded base64 (gRPC allows it) decodes too; text keys pass unchanged.
    assert metadata_wire("x-bin", "AAE") == b"\x00\x01"
    assert metadata_text("x-test", "plain") == "plain"
    assert metadata_wire("x-test", "plain") == "plain"
    # Not base64: the header is dropped, never sent as garbage.
    assert metadata_wire("x-bin", "not base64!") is None
