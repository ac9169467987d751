"""Connected streaming platforms (issue 21): Twitch, YouTube and custom RTMP targets.

  models.py          PlatformConnection: one connected account (tokens and keys encrypted at rest)
  signals.py         a connection saved or deleted -> the user's running PlatformSupervisor follows
  twitch/irc.py      Twitch chat over IRC (asyncio streams, IRCv3 tags)
  clients.py         one running platform (chat + state) per connection, used by the supervisor
  management/commands/connect_platform.py   sets a connection up from the command line

The supervisor itself is livestream/components/platform_supervisor.py. See docs/platforms.md.
"""
