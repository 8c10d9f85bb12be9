"""ringwatch.stream."""
