"""What the tests and the benchmarks share: real processes, clients, a private Redis, the log grammar.

  processes  daphne and runworker processes (Stack, Proc), their log files (LogFile),
             waiting for conditions (wait_until)
  clients    accounts and sessions, sign-up/login over HTTP, real WebSockets
  logs       the worker's log events as regexes built from livestream/logformats.py,
             log timestamps, which managers ran where and when
  redis      a private redis-server (never the machine's shared one)

The tests and the benchmarks import these names from here directly.
"""
