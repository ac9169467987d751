"""Worker -> tabs: the pub/sub channels and each user's manager status."""
