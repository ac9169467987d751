"""The components this code base declares: name (the class name) -> dotted path.

A table and nothing else (it imports nothing), so that livestream/conf.py can check
COMPONENTS' names at start without importing a component. livestream/components/registry.py
resolves the paths, lazily.
"""

BUILTIN: dict[str, str] = {
    "ConsoleLogger": "livestream.components.console_logger.ConsoleLogger",
    "StreamStateServer": "livestream.components.stream_state.StreamStateServer",
    "AlertManager": "livestream.components.alert_manager.AlertManager",
    "CloudflareManager": "livestream.components.cloudflare_manager.CloudflareManager",
    "PlatformSupervisor": "livestream.components.platform_supervisor.PlatformSupervisor",
}
