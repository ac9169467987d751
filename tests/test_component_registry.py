"""Components come from a registry the code declares (issue 20.3): names, not import paths."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from devtools.processes import BASE_DIR, PYTHON, base_env
from livestream.components import choices, registry
from livestream.components.alert_manager import AlertManager
from livestream.components.cloudflare_manager import CloudflareManager
from livestream.components.console_logger import ConsoleLogger
from livestream.components.stream_state import StreamStateServer
from livestream.conf import LivestreamSettings, get_settings, validate
from tests.components import Echo


def test_the_builtins_are_registered_by_class_name():
    assert registry.get("ConsoleLogger") is ConsoleLogger
    assert registry.get("StreamStateServer") is StreamStateServer
    assert registry.get("AlertManager") is AlertManager
    assert registry.get("CloudflareManager") is CloudflareManager
    # Issue 18 added the CloudflareManager to the defaults.
    assert get_settings().COMPONENTS == (
        "ConsoleLogger",
        "StreamStateServer",
        "AlertManager",
        "CloudflareManager",
    )
    with pytest.raises(registry.UnknownComponent, match=r"'livestream\.components\.console_logger"):
        registry.get("livestream.components.console_logger.ConsoleLogger")


def test_components_names_unknown_to_the_registry_stop_the_start():
    validate(LivestreamSettings())
    for bad in (("ConsoleLogger", "Nope"), ("tests.components.Echo",), ("json.dumps",)):
        with pytest.raises(ImproperlyConfigured, match="COMPONENTS names unknown components"):
            validate(LivestreamSettings(COMPONENTS=bad))


def test_extra_components_come_from_settings_code_only(configure_livestream):
    configure_livestream(EXTRA_COMPONENTS="Echo=tests.components.Echo")  # as the environment would
    with pytest.raises(ImproperlyConfigured, match=r"EXTRA_COMPONENTS.*written in settings code"):
        get_settings()


@pytest.mark.parametrize(
    "env",
    [
        {"LIVESTREAM_COMPONENTS": "ConsoleLogger,Echo"},
        {"LIVESTREAM_COMPONENTS": "tests.components.Echo"},
        {"LIVESTREAM_EXTRA_COMPONENTS": "tests.components.Echo"},
    ],
)
def test_production_settings_refuse_the_test_components(env):
    done = subprocess.run(
        [PYTHON, "manage.py", "check"], cwd=BASE_DIR, env=base_env(**env), capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "COMPONENTS" in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_a_stored_unknown_name_is_skipped_with_one_line_and_never_imported(caplog, configure_livestream):
    sys.modules.pop("this", None)
    caplog.set_level(logging.WARNING, "livestream")
    assert choices.classes(["this", "Echo", "this", "json.dumps"]) == [Echo]
    assert choices.classes(["this"]) == []
    assert "this" not in sys.modules  # its import-time code never ran
    skipped = [r.getMessage() for r in caplog.records if "unknown component 'this'" in r.getMessage()]
    assert len(skipped) == 1, skipped
    configure_livestream(EXTRA_COMPONENTS={})  # production: the test components are unknown
    assert choices.classes(["Echo", "ConsoleLogger"]) == [ConsoleLogger]


@pytest.mark.django_db
def test_the_admin_offers_the_registered_names_and_imports_nothing(admin_client, django_user_model):
    from livestream.models import UserComponent

    sys.modules.pop("this", None)
    user = django_user_model.objects.create(username="r", email="r@x.y")
    url = "/admin/livestream/usercomponent/add/"
    page = admin_client.get(url).content.decode()
    for name in registry.names():
        assert f'<option value="{name}">{name}</option>' in page
    for typed in ("this", "tests.components.Echo", "livestream.models.Debug", "a" * 300):
        response = admin_client.post(url, {"user": user.pk, "name": typed, "enabled": "on"})
        assert response.status_code == 200 and b"Select a valid choice" in response.content
    assert "this" not in sys.modules and not UserComponent.objects.exists()


@pytest.mark.django_db
def test_the_migration_turns_builtin_paths_into_names():
    from django.apps import apps
    from django.contrib.auth import get_user_model

    from livestream.models import UserComponent

    migration = importlib.import_module("livestream.migrations.0003_usercomponent_name")
    one, two = (get_user_model().objects.create(username=u, email=f"{u}@x.y") for u in ("m1", "m2"))
    stored = [
        (one, "livestream.components.stream_state.StreamStateServer", False),
        (one, "livestream.console_logger.ConsoleLogger", True),
        (one, "tests.components.Echo", True),  # unknown here: kept as it is, skipped by the worker
        (two, "livestream.components.alert_manager.AlertManager", False),
        (two, "AlertManager", True),  # both forms: the name's row wins
    ]
    for user, name, enabled in stored:
        UserComponent.objects.create(user=user, name=name, enabled=enabled)
    migration.paths_to_names(apps, None)
    rows = sorted(UserComponent.objects.values_list("user__username", "name", "enabled"))
    assert rows == [
        ("m1", "ConsoleLogger", True),
        ("m1", "StreamStateServer", False),
        ("m1", "tests.components.Echo", True),
        ("m2", "AlertManager", True),
    ]
