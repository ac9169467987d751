"""The presence store: who has which dashboard connection open (Redis), and its diffs."""
