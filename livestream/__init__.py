"""The livestream app: presence-driven UserStreamManagers, run by the presence-manager workers (README "The flow")."""
