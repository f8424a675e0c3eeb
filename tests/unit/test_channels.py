"""Channel names: namespaces, user channels, personal channels."""

from __future__ import annotations

import pytest

from tether.protocol.channels import channel_users, namespace_of, personal_channel


@pytest.mark.parametrize(
    ("channel", "users"),
    [
        ("dm:room#alice,bob", {"alice", "bob"}),
        ("#alice", {"alice"}),
        ("personal:#alice", {"alice"}),
        ("a#b:c#carol", {"carol"}),  # the list follows the last '#'
        ("dm:room#alice,,", {"alice"}),
        ("dm:room#", set()),
    ],
)
def test_users_of_a_user_channel_follow_its_last_hash(channel: str, users: set[str]) -> None:
    assert channel_users(channel) == users


def test_a_channel_without_hash_names_no_user() -> None:
    assert channel_users("chat:lobby") is None


def test_personal_channel_is_hash_user_in_its_namespace() -> None:
    assert personal_channel("alice", "personal") == "personal:#alice"
    assert personal_channel("alice", "") == "#alice"
    assert namespace_of(personal_channel("alice", "")) == "default"
