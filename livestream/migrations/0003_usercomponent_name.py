"""UserComponent.path (a dotted path, imported) becomes UserComponent.name (a registered
component name, livestream/components/registry.py). Stored paths of the built-in
components become their names; any other value stays as it was and the worker skips it
with one log line (it is never imported)."""

from django.conf import settings
from django.db import migrations, models

import livestream.models

# The built-ins' dotted paths at the time of this migration (frozen here on purpose).
BUILTIN_PATHS = {
    "livestream.components.console_logger.ConsoleLogger": "ConsoleLogger",
    "livestream.components.stream_state.StreamStateServer": "StreamStateServer",
    "livestream.components.alert_manager.AlertManager": "AlertManager",
    # Before the layout move (issue 17) the components lived one level up.
    "livestream.console_logger.ConsoleLogger": "ConsoleLogger",
    "livestream.stream_state.StreamStateServer": "StreamStateServer",
    "livestream.alert_manager.AlertManager": "AlertManager",
}


def paths_to_names(apps, schema_editor):
    UserComponent = apps.get_model("livestream", "UserComponent")
    for row in UserComponent.objects.filter(name__in=list(BUILTIN_PATHS)):
        name = BUILTIN_PATHS[row.name]
        if UserComponent.objects.filter(user_id=row.user_id, name=name).exists():
            row.delete()  # both forms stored: the name's row wins
            continue
        row.name = name
        row.save(update_fields=["name"])


def names_to_paths(apps, schema_editor):
    UserComponent = apps.get_model("livestream", "UserComponent")
    back = {name: path for path, name in list(BUILTIN_PATHS.items())[:3]}
    for row in UserComponent.objects.filter(name__in=list(back)):
        row.name = back[row.name]
        row.save(update_fields=["name"])


class Migration(migrations.Migration):
    dependencies = [
        ("livestream", "0002_user_component"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="usercomponent", name="one_choice_per_component"),
        migrations.RenameField(model_name="usercomponent", old_name="path", new_name="name"),
        migrations.AlterField(
            model_name="usercomponent",
            name="name",
            field=models.CharField(
                choices=livestream.models._component_choices,
                help_text="A registered component, e.g. StreamStateServer",
                max_length=200,
            ),
        ),
        migrations.AlterModelOptions(name="usercomponent", options={"ordering": ["user_id", "name"]}),
        migrations.AddConstraint(
            model_name="usercomponent",
            constraint=models.UniqueConstraint(fields=("user", "name"), name="one_choice_per_component"),
        ),
        migrations.RunPython(paths_to_names, names_to_paths),
    ]
