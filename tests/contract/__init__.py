"""Local HTTP servers implementing the documented requests and responses of third-party
APIs the code calls (a contract test points the code's base URL at one of them)."""
