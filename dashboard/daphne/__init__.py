"""Everything below ASGI: daphne's, autobahn's and Twisted's internals, SIGTERM, memory."""
