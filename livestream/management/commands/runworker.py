"""``runworker`` with livestream's hardened Worker (see livestream/worker/runner.py).

livestream is listed before channels in INSTALLED_APPS, so this command
replaces Channels' own, the way daphne replaces runserver.
"""

from channels.management.commands.runworker import Command as ChannelsRunworker

from livestream.worker.runner import Worker


class Command(ChannelsRunworker):
    worker_class = Worker
