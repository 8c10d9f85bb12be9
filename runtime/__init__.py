"""ringwatch.runtime."""
