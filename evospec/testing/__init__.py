"""Small models built in code, for tests and smoke runs."""
