"""The Python client's channel follows its certificate files: a renewal moves
later calls to a new channel, a renewal caught half-way does not, and old
channels are closed only beyond the ones kept for calls in flight."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from meridian import client_channel
from meridian.client_channel import FollowedChannel
from meridian.security.ca import CertificateAuthority
from meridian.security.model import Identity, Kind
from meridian.security.tls import TlsFiles

SERVICE = Identity("test.meridian", Kind.SERVICE, "orders")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    authority = CertificateAuthority(tmp_path / "ca")
    authority.init("test.meridian")
    authority.issue(SERVICE)
    return authority


async def test_a_renewal_moves_later_calls_to_a_new_channel(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_channel, "CHECK_EVERY_S", 0.0)
    files = TlsFiles.in_folder(ca.dir / "identities" / SERVICE.slug)
    channels = FollowedChannel("127.0.0.1:1", [], files)
    first = channels.current()
    assert channels.current() is first and channels.stubs().channel is first
    # Half-way through a renewal: a new key beside the old certificate.
    other = ca.dir / "half"
    shutil.copytree(files.cert.parent, other)
    ca.issue(SERVICE)
    shutil.copy(other / "cert.pem", files.cert)  # the old certificate with the new key
    assert channels.current() is first and channels.reloads == 0
    ca.issue(SERVICE)  # the renewal completes
    second = channels.current()
    assert second is not first and channels.reloads == 1
    assert channels.stubs().channel is second
    await channels.close()


async def test_beyond_the_kept_channels_the_oldest_is_closed(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_channel, "CHECK_EVERY_S", 0.0)
    monkeypatch.setattr(client_channel, "CLOSE_GRACE_S", 0.0)
    files = TlsFiles.in_folder(ca.dir / "identities" / SERVICE.slug)
    channels = FollowedChannel("127.0.0.1:1", [], files)
    seen = [channels.current()]
    for _ in range(client_channel.KEEP_RETIRED + 1):
        ca.issue(SERVICE)
        seen.append(channels.current())
    assert len(set(map(id, seen))) == client_channel.KEEP_RETIRED + 2
    assert len(channels._retired) == client_channel.KEEP_RETIRED
    assert seen[0] not in channels._retired  # closed, after its grace
    await channels.close()


async def test_without_tls_there_is_one_channel() -> None:
    channels = FollowedChannel("127.0.0.1:1", [], None)
    assert channels.current() is channels.current()
    await channels.close()
