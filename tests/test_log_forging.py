"""Issue 9.7: a user id from outside can never write a line of its own into a log."""

from __future__ import annotations

import logging

import pytest
from channels.layers import get_channel_layer

from devtools.processes import wait_until
from livestream.conf import get_settings
from livestream.ids import is_user_id

FORGED = "5\nFAKE worker line"


def forged_lines(caplog) -> list[str]:
    """Log records whose text contains a raw line break followed by our fake line."""
    return [r.getMessage() for r in caplog.records if "\nFAKE" in r.getMessage()]


def test_only_plain_ids_are_user_ids():
    assert is_user_id("42") and is_user_id("user_7-b")
    for bad in ("", "x" * 65, FORGED, "5 6", "a:b", "a|b", None, 5, "é"):
        assert not is_user_id(bad), bad


async def test_the_worker_drops_forged_ids_from_the_channel_layer_with_one_escaped_line(run_worker, caplog):
    caplog.set_level(logging.INFO, logger="livestream")
    await run_worker()
    layer, channel = get_channel_layer(), get_settings().WORKER_CHANNEL
    await layer.send(channel, {"type": "presence.stop", "user_id": FORGED})
    await layer.send(channel, {"type": "presence_diff", "joins": {FORGED: {"metas": []}}, "leaves": {}})
    await layer.send(channel, {"type": "manager.stop", "user_id": "5", "by": "1\nFAKE staff"})
    await layer.send(channel, {"type": "worker\nFAKE line"})
    await wait_until(
        lambda: len([r for r in caplog.records if "dropped" in r.getMessage()]) >= 4, 5, "4 drops"
    )
    assert forged_lines(caplog) == []
    assert any("'5\\nFAKE worker line'" in r.getMessage() for r in caplog.records)  # escaped, still visible


@pytest.mark.django_db
def test_a_forged_id_in_the_admin_url_is_refused_and_never_logged(client, django_user_model, caplog):
    caplog.set_level(logging.INFO)
    staff = django_user_model.objects.create_user("staff@x.io", "staff@x.io", "pw", is_staff=True)
    client.force_login(staff)
    response = client.post("/admin/livestream/debug/5%0AFAKE%20LOGLINE/stop/")
    assert response.status_code == 404
    assert forged_lines(caplog) == []
